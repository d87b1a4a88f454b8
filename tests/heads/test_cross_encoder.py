"""Cross-encoder heads (heads/cross_encoder.py): binary cross-entropy on (query, document)
relevance, AUC and accuracy, `model.rank`, and an export sentence-transformers' CrossEncoder loads
and scores alike."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import headkit
from headkit import DataError, build_head, head_config
from headkit.heads.cross_encoder import RelevanceScores

from conftest import FILLER, NEGATIVE, POSITIVE


def relevance_rows(n: int = 96, seed: int = 0) -> list[dict]:
    """A query and a document; the document is relevant when it holds a positive word."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        relevant = i % 2 == 0
        word = rng.choice(POSITIVE if relevant else NEGATIVE)
        rows.append(
            {
                "text": " ".join(rng.choice(FILLER, 2)),
                "document": " ".join([*rng.choice(FILLER, 2), str(word)]),
                "relevant": int(relevant),
            }
        )
    return rows


def test_the_loss_is_binary_cross_entropy_on_the_relevance_and_metrics_read_each_pair():
    head = build_head(head_config("cross-encoder", input_size=4, pooling="cls"))
    scores = torch.tensor([0.5, -1.0, 2.0, -0.3])
    labels = torch.tensor([[1.0], [float("nan")], [0.0], [0.25]])  # graded relevance in [0, 1]
    loss, n = head.loss(scores, labels)
    keep = [0, 2, 3]
    expected = F.binary_cross_entropy_with_logits(scores[keep], torch.tensor([1.0, 0.0, 0.25]))
    assert n == 3 and torch.allclose(loss, expected)
    references = head.codec.references(labels)
    assert references == [1.0, None, 0.0, 0.25]
    # pairs 0, 2, 3: relevant yes, no, no (0.25 < 0.5); decided (logit > 0) yes, yes, no; the relevant
    # one's 0.5 beats -0.3, not 2.0: AUC 1/2
    got = RelevanceScores().score(head.decode(scores), references)
    assert got == pytest.approx({"accuracy": 2 / 3, "auc": 0.5})
    assert RelevanceScores().chance(references) == {"auc": 0.5, "accuracy": pytest.approx(2 / 3)}


@pytest.fixture(scope="module")
def trained(tiny_text_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("cross") / "run"
    heads = {"rerank": {"type": "cross-encoder", "label": "relevant", "text_pair": "document", "pooling": "pooler"}}
    result = headkit.train(
        tiny_text_model, heads, train_dataset=relevance_rows(), epochs=8, batch_size=16, lr=1e-2, backbone_lr=1e-3,
        progress=False, strategy="full", val_fraction=0.25, output_dir=run,
    )  # fmt: skip
    return result, run


def test_a_cross_encoder_learns_relevance_and_ranks_documents(trained):
    result, run = trained
    assert result.metrics["heads"]["rerank"]["auc"] > 0.9
    model = headkit.load(run / "model")
    ranked = model.rank("the film", ["a plot dull", "a story superb", "the movie poor"])
    assert ranked[0]["text"] == "a story superb"
    scores = model.predict([("the film", "a story superb")])[0]["rerank"]["score"]
    assert scores == pytest.approx(ranked[0]["score"], abs=1e-5)
    # a pair's own probability of relevance, as CrossEncoder.predict gives it: not a share among the candidates
    assert ranked[0]["probability"] == pytest.approx(float(torch.sigmoid(torch.tensor(ranked[0]["score"]))))


def test_the_export_is_the_folder_sentence_transformers_cross_encoder_loads(trained, tmp_path):
    from sentence_transformers import CrossEncoder

    from headkit.ship.export import export_transformers

    _, run = trained
    export_transformers(run, tmp_path / "reranker")
    pairs = [("the film", "a story superb"), ("the film", "the movie poor"), ("a plot", "acting and awful")]
    theirs = CrossEncoder(str(tmp_path / "reranker"), device="cpu").predict(pairs)  # sigmoid of the logit
    ours = [p["rerank"]["score"] for p in headkit.load(run / "model").predict(pairs)]
    assert np.allclose(theirs, torch.sigmoid(torch.tensor(ours)).numpy(), atol=1e-5)


def test_a_cross_encoder_without_documents_is_refused(tiny_text_model, trained):
    from headkit.cli.main import main

    heads = {"rerank": {"type": "cross-encoder", "label": "relevant"}}
    with pytest.raises(DataError, match=r"heads \['rerank'\] score pairs of texts .* text_pair"):
        headkit.train(tiny_text_model, heads, train_dataset=relevance_rows(8), epochs=1, progress=False)
    assert main(["predict", str(trained[1]), "--text", "the film"]) == 2  # a query alone is nothing to score


@pytest.mark.parametrize("value", ["relevant", 2, -0.5])
def test_a_relevance_outside_0_to_1_is_refused_naming_the_row(value, tiny_text_model):
    rows = relevance_rows(8)
    rows[4]["relevant"] = value
    heads = {"rerank": {"type": "cross-encoder", "label": "relevant", "text_pair": "document"}}
    with pytest.raises(DataError, match=r"row 5 of .*relevance column 'relevant' holds") as refused:
        headkit.train(tiny_text_model, heads, train_dataset=rows, epochs=1, progress=False)
    assert "\n" not in str(refused.value)
