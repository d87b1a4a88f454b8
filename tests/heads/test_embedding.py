"""Embedding heads (heads/embedding.py): in-batch-negative training on text pairs, retrieval
metrics, `model.encode`, and a sentence-transformers folder that gives the same vectors."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import headkit
from headkit import build_head, head_config
from headkit.errors import DataError, ExportError, HeadConfigError, HeadkitError
from headkit.heads.embedding import RetrievalScores
from headkit.ship.export import export_onnx, export_sentence_transformers

from conftest import FILLER, NEGATIVE, POSITIVE, WORDS

KEYS = [w for w in WORDS if w not in FILLER]  # 16 words; each pair shares one


def pair_rows(n: int = 64, seed: int = 0) -> list[dict]:
    """An anchor and its positive share their one key word (and nothing else but filler)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        key = KEYS[i % len(KEYS)]
        rows.append(
            {
                "text": " ".join([*rng.choice(FILLER, 3), key]),
                "positive": " ".join([key, *rng.choice(FILLER, 2)]),
            }
        )
    return rows


def test_the_loss_is_multiple_negatives_ranking_over_the_batch_and_skips_missing_pairs():
    torch.manual_seed(0)
    head = build_head(head_config("embedding", input_size=8, pooling="mean", scale=20.0))
    output = torch.randn(8, 8)  # 4 pairs: anchors 0-3, positives 4-7
    labels = torch.tensor([[1.0], [float("nan")], [2.0], [3.0]])  # each pair's partner id, or missing
    loss, n = head.loss(output, labels, None)
    keep = torch.tensor([0, 2, 3])
    a, p = F.normalize(output[:4][keep], dim=-1), F.normalize(output[4:][keep], dim=-1)
    expected = F.cross_entropy(20.0 * a @ p.T, torch.arange(3))  # sentence-transformers' MNRL, by hand
    assert n == 3 and torch.allclose(loss, expected)
    zero, none = head.loss(output, torch.full((4, 1), float("nan")), None)
    assert none == 0 and zero.item() == 0.0
    with pytest.raises(HeadConfigError, match="2 x 4 rows"):
        head.loss(output[:6], labels, None)


def test_the_projection_starts_as_the_identity_and_vectors_are_unit_length():
    head = build_head(head_config("embedding", input_size=8, pooling="mean"))
    pooled = torch.randn(3, 8)
    assert torch.allclose(head.forward_pooled(pooled), F.normalize(pooled, dim=-1), atol=1e-6)
    narrow = build_head(head_config("embedding", input_size=8, pooling="mean", dimensions=4, normalize=False))
    assert narrow.forward_pooled(pooled).shape == (3, 4)
    with pytest.raises(HeadConfigError, match="positive width"):
        head_config("embedding", dimensions=0)


def test_retrieval_metrics_rank_each_anchor_among_every_positive():
    scores = RetrievalScores()
    #   anchors a0 a1 a2, positives p0 p1 p2 (cosine): a0 finds p0 first (0.99 > 0.53 > -1), a1 finds
    #   p1 first (0.85 > 0.10 > 0), a2 finds p2 third (p1 0.996 > p0 0.68 > p2 -0.6)
    anchors = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    positives = [[1.0, 0.1], [0.5, 0.8], [-1.0, 0.0]]
    predictions = anchors + positives
    references = [("anchor", 3, k) for k in (1, 2, 3)] + [("positive", -3, k) for k in (1, 2, 3)]  # 3 partner texts
    got = scores.score(predictions, references)
    assert got == pytest.approx({"recall@1": 2 / 3, "mrr@10": (1 + 1 + 1 / 3) / 3})
    assert scores.chance(references) == pytest.approx({"recall@1": 1 / 3, "mrr@10": (1 + 1 / 2 + 1 / 3) / 3})
    assert scores.same_decision([1.0, 0.0], [0.999, 0.01]) and not scores.same_decision([1.0, 0.0], [0.7, 0.7])


@pytest.fixture(scope="module")
def trained(tiny_text_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("embedding") / "run"
    heads = {"embed": {"label": "positive", "type": "embedding", "pooling": "mean", "options": {"dimensions": 16}}}
    before = headkit.train(
        tiny_text_model, heads, train_dataset=pair_rows(), epochs=1, lr=1e-9, backbone_lr=1e-9, progress=False,
        strategy="full", val_fraction=0.25,
    )  # fmt: skip
    result = headkit.train(
        tiny_text_model, heads, train_dataset=pair_rows(), epochs=6, batch_size=16, lr=1e-2, backbone_lr=1e-3,
        progress=False, strategy="full", val_fraction=0.25, output_dir=run,
    )  # fmt: skip
    return before, result, run


def test_training_on_pairs_brings_each_text_next_to_its_partner(trained):
    before, result, _ = trained
    untrained, learned = before.metrics["heads"]["embed"], result.metrics["heads"]["embed"]
    assert learned["mrr@10"] > untrained["mrr@10"] + 0.1 and learned["recall@1"] > untrained["recall@1"]


def test_encode_gives_the_heads_unit_vectors_and_predict_gives_them_too(trained):
    _, _, run = trained
    model = headkit.load(run / "model")
    texts = ["the film good", "bob met alice"]
    vectors = model.encode(texts)
    assert vectors.shape == (2, 16) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(model.encode("the film good"), vectors[0], atol=1e-6)
    assert np.allclose(model.predict(texts)[1]["embed"], vectors[1], atol=1e-6)
    with pytest.raises(HeadkitError, match="no embedding head named 'nope'"):
        model.encode(texts, head="nope")


def test_a_sentence_transformers_folder_gives_the_same_vectors(trained, tmp_path):
    from sentence_transformers import SentenceTransformer

    from headkit.cli.main import main

    _, _, run = trained
    result = export_sentence_transformers(run, tmp_path / "st")
    assert "checked" in result.message and "not checked" not in result.message
    assert main(["export", str(run), "--to", "sentence-transformers", "--output", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "2_Dense" / "model.safetensors").is_file()
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    texts = ["the film good", "a dull boring plot and the acting", "paris"]
    theirs = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(texts)
    assert np.allclose(theirs, headkit.load(run / "model").encode(texts), atol=1e-5)


def test_the_onnx_graph_gives_the_same_vectors(trained, tmp_path):
    from headkit.ship.predict import load_for_inference, predict_texts

    _, _, run = trained
    export_onnx(run, tmp_path / "onnx", optimize=False)
    onnx, tokenizer = load_for_inference(tmp_path / "onnx", engine="onnx")
    texts = ["the film good", "a dull boring plot and the acting"]
    theirs = [p["embed"]["embedding"] for p in predict_texts(onnx, tokenizer, texts)]
    assert np.allclose(theirs, headkit.load(run / "model").encode(texts), atol=1e-4)


def test_bad_pairs_and_heads_that_cannot_share_them_get_one_clear_line(tiny_text_model):
    rows = pair_rows(16)
    rows[5]["positive"] = " "
    embedding = {"embed": {"label": "positive", "type": "embedding"}}
    with pytest.raises(DataError, match=r"row 6: 'positive' is empty") as refused:
        headkit.train(tiny_text_model, embedding, train_dataset=rows, epochs=1, progress=False)
    assert "\n" not in str(refused.value)
    with pytest.raises(DataError, match="column 'partner' not found"):
        headkit.train(
            tiny_text_model, {"embed": {"label": "partner", "type": "embedding"}}, train_dataset=pair_rows(16)
        )
    tags = [{**r, "tokens": r["text"].split(), "tags": ["O"] * len(r["text"].split())} for r in pair_rows(16)]
    beside = {**embedding, "ner": {"label": "tags", "type": "token-classification"}}  # reads words, not one text
    with pytest.raises(DataError, match=r"heads \['ner'\] cannot read the pairs of texts of heads \['embed'\]"):
        headkit.train(tiny_text_model, beside, train_dataset=tags, epochs=1, progress=False)


def test_a_topic_head_beside_an_embedding_head_reads_each_pairs_first_text(tiny_text_model, tmp_path):
    """One backbone, two heads on the same rows: the embedding head trains on (text, partner)
    pairs, the topic head on the text alone; scored from cached features and through the backbone alike."""
    rows = [{**r, "topic": "sentiment" if set(r["text"].split()) & set(POSITIVE + NEGATIVE) else "other"}
            for r in pair_rows(96)]  # fmt: skip
    heads = {"embed": {"label": "positive", "type": "embedding"}, "topic": {"label": "topic"}}
    held_out = rows[64:]
    common = dict(train_dataset=rows[:64], eval_dataset=held_out, batch_size=16, lr=1e-2, progress=False)
    full = headkit.train(
        tiny_text_model, heads, strategy="full", epochs=30, backbone_lr=1e-3, patience=0,
        metric_for_best_model="topic/accuracy", **common,
    )  # fmt: skip
    assert set(full.metrics["heads"]) == {"embed", "topic"} and full.metrics["heads"]["topic"]["accuracy"] > 0.8
    both = full.model.predict(held_out[0]["text"])
    assert set(both) >= {"embed", "topic"} and both["topic"]["label"] in ("sentiment", "other")
    texts_alone = [{"text": r["text"], "topic": r["topic"]} for r in held_out]  # no partners: the topic head alone
    assert full.model.evaluate(texts_alone, heads=["topic"])["topic"] == full.metrics["heads"]["topic"]
    frozen = headkit.train(tiny_text_model, heads, strategy="frozen", epochs=2, output_dir=tmp_path / "run", **common)
    again = frozen.model.evaluate(held_out)  # through the backbone: the topic head reads each first text
    assert again.losses["topic"] == pytest.approx(frozen.metrics["val_losses"]["topic"], rel=1e-4)
    assert again["embed"]["mrr@10"] == pytest.approx(frozen.metrics["heads"]["embed"]["mrr@10"], abs=1e-6)
    # an ONNX engine reads no labels: the evaluation gives the topic head each pair's first row all the same
    from headkit.ship.export import export_onnx
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset

    export_onnx(tmp_path / "run", tmp_path / "onnx", optimize=False)
    onnx, tokenizer = load_for_inference(tmp_path / "onnx", engine="onnx")
    scored, _ = evaluate_dataset(onnx, tokenizer, held_out)
    assert scored.scores["topic"]["accuracy"] == again["topic"]["accuracy"]


def test_exports_that_sentence_transformers_cannot_hold_are_refused(tiny_text_model, tmp_path):
    heads = {"embed": head_config("embedding", pooling="pooler")}
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=heads)
    saved = headkit.save(model, tmp_path / "saved", processor=headkit.load_processor(tiny_text_model))
    with pytest.raises(ExportError, match="Pooling has no mode for"):
        export_sentence_transformers(saved, tmp_path / "st")
    assert not (tmp_path / "st").exists()
    plain = headkit.MultiHeadModel.from_pretrained(
        tiny_text_model, heads={"c": head_config("classification", labels=["a", "b"])}
    )
    saved = headkit.save(plain, tmp_path / "plain", processor=headkit.load_processor(tiny_text_model))
    with pytest.raises(ExportError, match="holds one embedding head; this model has none"):
        export_sentence_transformers(saved, tmp_path / "st2")


def test_pairs_that_share_a_partner_are_no_negatives_for_each_other_and_it_is_ranked_once():
    torch.manual_seed(1)
    head = build_head(head_config("embedding", input_size=8, pooling="mean"))
    output = torch.randn(6, 8)  # 3 pairs; pairs 0 and 1 have the same partner text (id 7)
    labels = torch.tensor([[7.0], [7.0], [9.0]])
    loss, n = head.loss(output, labels, None)
    a, p = F.normalize(output[:3], dim=-1), F.normalize(output[3:], dim=-1)
    logits = 20.0 * a @ p.T
    logits[0, 1] = logits[1, 0] = float("-inf")  # each one's partner is the other's own: masked out
    assert n == 3 and torch.allclose(loss, F.cross_entropy(logits, torch.arange(3)))
    # a perfect model: two questions about one passage both find it first
    predictions = [[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    references = [("anchor", 3, 7), ("anchor", 3, 7), ("anchor", 3, 9), ("positive", -3, 7), ("positive", -3, 7),
                  ("positive", -3, 9)]  # fmt: skip
    assert RetrievalScores().score(predictions, references) == {"recall@1": 1.0, "mrr@10": 1.0}
    assert RetrievalScores().chance(references)["recall@1"] == 0.5  # two distinct positives


def test_a_run_cannot_read_pairs_two_ways_and_text_pairs_keep_their_start(tiny_text_model, tmp_path):
    from conftest import write_csv

    prefs = write_csv(tmp_path / "prefs.csv", [{"prompt": "the film", "chosen": "good", "rejected": "bad"}] * 8)
    pairs = write_csv(tmp_path / "pairs.csv", pair_rows(16))
    tasks = {
        "reward": {"data": str(prefs), "type": "reward", "label": "chosen,rejected", "text": "prompt"},
        "embed": {"data": str(pairs), "type": "embedding", "label": "positive"},
    }
    with pytest.raises(DataError, match="read their pairs of texts in two ways"):
        headkit.train(tiny_text_model, tasks, epochs=1, progress=False)
    tokenizer = headkit.load_processor(tiny_text_model)
    tokenizer.truncation_side = "left"  # as a model trained further from a reward run has it
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads={})
    model.save_pretrained(tmp_path / "left", processor=tokenizer)
    heads = {"embed": {"label": "positive", "type": "embedding"}}
    result = headkit.train(
        tmp_path / "left", heads, train_dataset=pair_rows(16), epochs=1, progress=False, output_dir=tmp_path / "run"
    )
    assert headkit.load_processor(tmp_path / "run" / "model").truncation_side == "right"
    assert result.model.heads["embed"].config.type == "embedding"


def test_the_server_answers_with_the_heads_vectors(trained):
    from fastapi.testclient import TestClient

    from headkit.ship.serve import load_app

    _, _, run = trained
    texts = ["the film good", "bob met alice"]
    with TestClient(load_app(run)) as client:
        answer = client.post("/predict", json={"texts": texts})
    assert answer.status_code == 200
    served = [p["embed"]["embedding"] for p in answer.json()["predictions"]]
    assert np.allclose(served, headkit.load(run / "model").encode(texts), atol=1e-5)


def test_the_embedding_head_trains_at_its_types_share_of_the_heads_rate(tiny_text_model):
    from headkit.training.config import TrainConfig
    from headkit.training.strategies import make_optimizer, parse_strategy

    heads = {"embed": head_config("embedding"), "topic": head_config("classification", labels=["a", "b"])}
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=heads)
    optimizer = make_optimizer(model, TrainConfig(strategy="frozen", lr=0.01), parse_strategy("frozen"))
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert {rate[id(p)] for p in model.heads["embed"].parameters()} == {0.01 * 0.01}
    assert {rate[id(p)] for p in model.heads["topic"].parameters()} == {0.01}


def test_triplets_add_each_texts_hard_negative_to_every_anchors_candidates():
    torch.manual_seed(2)
    head = build_head(head_config("embedding", input_size=8, pooling="mean"))
    output = torch.randn(9, 8)  # 3 triplets: anchors 0-2, positives 3-5, negatives 6-8
    labels = torch.tensor([[1.0], [2.0], [3.0]])
    loss, n = head.loss(output, labels, None)
    a, p, q = (F.normalize(output[k : k + 3], dim=-1) for k in (0, 3, 6))
    expected = F.cross_entropy(20.0 * torch.cat([a @ p.T, a @ q.T], dim=1), torch.arange(3))  # MNRL with negatives
    assert n == 3 and torch.allclose(loss, expected)
    references = head.codec.references(labels, torch.ones(9, 4))
    assert [r[0] for r in references] == ["anchor"] * 3 + ["positive"] * 3 + ["negative"] * 3
    # with the negatives' ids: pair 2's negative is pair 0's positive text, so no negative for anchor 0
    with_ids = torch.tensor([[1.0, 9.0], [2.0, 8.0], [3.0, 1.0]])
    masked, _ = head.loss(output, with_ids, None)
    logits = 20.0 * torch.cat([a @ p.T, a @ q.T], dim=1)
    logits[0, 5] = float("-inf")
    assert torch.allclose(masked, F.cross_entropy(logits, torch.arange(3)))


def test_an_embedding_head_trains_on_triplets_and_bad_ones_get_one_line(tiny_text_model):
    rows = pair_rows(64)
    triplets = [{**r, "negative": rows[(i + 1) % len(rows)]["positive"]} for i, r in enumerate(rows)]
    heads = {"embed": {"label": "positive,negative", "type": "embedding", "pooling": "mean"}}
    held_out = triplets[48:]
    result = headkit.train(
        tiny_text_model, heads, train_dataset=triplets[:48], eval_dataset=held_out, epochs=2, batch_size=16,
        strategy="frozen", lr=1e-2, progress=False,
    )  # fmt: skip
    again = result.model.evaluate(held_out)  # through the backbone, as the cached features scored it in the run
    assert again["embed"] == pytest.approx(result.metrics["heads"]["embed"])
    assert again.losses["embed"] == pytest.approx(result.metrics["val_losses"]["embed"], rel=1e-4)
    triplets[3]["negative"] = ""
    with pytest.raises(DataError, match=r"row 4: 'negative' is empty"):
        headkit.train(tiny_text_model, heads, train_dataset=triplets, epochs=1, progress=False)
    beside = {**heads, "title": {"label": "text", "type": "seq2seq"}}  # reads every position: not beside pairs
    with pytest.raises(DataError, match=r"heads \['title'\] cannot read the pairs of texts"):
        headkit.train(tiny_text_model, beside, train_dataset=pair_rows(16), epochs=1, progress=False)
    two = {"embed": heads["embed"], "other": {"label": "text", "type": "embedding"}}
    with pytest.raises(DataError, match="read their pairs from different columns"):
        headkit.train(tiny_text_model, two, train_dataset=pair_rows(16), epochs=1, progress=False)
