"""Evaluation data with labels training never had (issue #42): with 100 labelled examples a test set
usually holds a class or tag the training set lacked. Such labels are scored as misses, the loss
skips them, one warning names them; training data with them is still refused."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from seqeval.metrics import f1_score as entity_f1
from sklearn.metrics import f1_score

import headkit
from headkit.cli.main import main
from headkit.data.tasks import TaskSpec, prepare
from headkit.errors import DataError
from headkit.heads.labels import IGNORE_INDEX
from headkit.ship.predict_batches import predict_texts

from conftest import sentiment_rows, write_csv

HEADS = {
    "sentiment": {"type": "classification", "labels": ["neg", "pos"]},
    "genres": {"type": "multilabel", "labels": ["comedy", "drama"]},
    "tags": {"type": "token-classification", "labels": ["O", "B-LOC", "I-LOC", "B-PER"]},
}


@pytest.fixture(scope="module")
def model(tiny_text_model):
    torch.manual_seed(0)
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=HEADS)
    for p in model.heads.parameters():  # larger weights than the init, so that predictions vary
        torch.nn.init.normal_(p, std=0.5) if p.dim() > 1 else None
    return model.eval()


def text_rows() -> list[dict]:
    """Sentiment and genre labels; rows 0, 3, 6, ... carry a sentiment ("meh") and rows 1, 4, 7, ...
    a genre ("horror") that the heads never had."""
    rows = []
    for i, r in enumerate(sentiment_rows(18)):
        sentiment = "meh" if i % 3 == 0 else r["label"]
        genres = "horror|drama" if i % 3 == 1 else ("comedy" if i % 2 else "drama")
        rows.append({"text": r["text"], "sentiment": sentiment, "genres": genres})
    return rows


def test_a_class_training_never_had_is_a_miss_and_the_loss_skips_it(model, caplog):
    rows = text_rows()
    with caplog.at_level(logging.WARNING, logger="headkit"):
        metrics = model.evaluate(rows, heads=["sentiment"])
    warnings = [r.getMessage() for r in caplog.records if "never saw in training" in r.getMessage()]
    assert len(warnings) == 1 and "head 'sentiment': ['meh']" in warnings[0]
    assert metrics.unseen == {"sentiment": ["meh"]} and metrics.to_json()["unseen"] == {"sentiment": ["meh"]}
    predicted = [p["sentiment"]["label"] for p in model.predict([r["text"] for r in rows])]
    truth = [r["sentiment"] for r in rows]
    hits = [p == t for p, t in zip(predicted, truth, strict=True)]
    assert metrics["sentiment"]["accuracy"] == pytest.approx(np.mean(hits))
    assert metrics["sentiment"]["f1_macro"] == pytest.approx(
        f1_score(truth, predicted, labels=["neg", "pos", "meh"], average="macro", zero_division=0)
    )
    assert (
        metrics.per_class["sentiment"]["meh"]["support"] == 6 and metrics.per_class["sentiment"]["meh"]["recall"] == 0
    )
    known = model.evaluate([r for r in rows if r["sentiment"] != "meh"], heads=["sentiment"])
    assert metrics.losses["sentiment"] == pytest.approx(known.losses["sentiment"])  # the loss: known labels only
    assert not known.unseen and "unseen" not in known.to_json()


def test_a_label_set_with_a_label_training_never_had_misses_it(model):
    rows = text_rows()
    metrics = model.evaluate(rows, heads=["genres"])
    assert metrics.unseen == {"genres": ["horror"]}
    predicted = [{c["label"] for c in p["genres"]} for p in model.predict([r["text"] for r in rows])]
    names = ["comedy", "drama", "horror"]
    y_true = np.array([[n in r["genres"].split("|") for n in names] for r in rows])
    y_pred = np.array([[n in p for n in names] for p in predicted])
    assert metrics["genres"]["f1_micro"] == pytest.approx(f1_score(y_true, y_pred, average="micro", zero_division=0))
    assert (
        metrics.per_class["genres"]["horror"]["support"] == 6 and metrics.per_class["genres"]["horror"]["recall"] == 0
    )
    # the loss reads the head's own two columns: a row whose only label was unseen has neither
    known = [{**r, "genres": r["genres"].replace("horror|", "")} for r in rows]
    assert metrics.losses["genres"] == pytest.approx(model.evaluate(known, heads=["genres"]).losses["genres"])


def test_an_entity_type_training_never_had_is_missed_by_the_entity_scores(model, tiny_text_model):
    rows = [
        {"tokens": ["alice", "visited", "paris"], "tags": ["B-PER", "O", "B-LOC"]},
        {"tokens": ["bob", "works", "at", "acme", "corp"], "tags": ["B-PER", "O", "O", "B-ORG", "I-ORG"]},
        {"tokens": ["the", "acme", "film"], "tags": ["O", "B-ORG", "O"]},
    ]
    metrics = model.evaluate(rows, heads=["tags"])
    assert metrics.unseen == {"tags": ["B-ORG", "I-ORG"]}
    texts = [" ".join(r["tokens"]) for r in rows]
    predicted = [
        [w["tag"] for w in p["tags"]] for p in predict_texts(model, headkit.load_processor(tiny_text_model), texts)
    ]
    assert metrics["tags"]["f1"] == pytest.approx(entity_f1([r["tags"] for r in rows], predicted, zero_division=0))
    assert metrics.per_class["tags"]["ORG"]["support"] == 2 and metrics.per_class["tags"]["ORG"]["recall"] == 0


def test_labels_none_of_which_the_head_knows_are_a_wrong_column_or_format(model):
    """1.0 for 1, ids for names, another column: every label unseen is a data mistake, refused."""
    rows = [{"text": r["text"], "sentiment": str(i % 2)} for i, r in enumerate(sentiment_rows(6))]
    with pytest.raises(DataError, match=r"head 'sentiment': none of the labels in column 'sentiment' .*\['0', '1'\]"):
        model.evaluate(rows, heads=["sentiment"])
    tagged = [{"tokens": ["acme", "corp"], "tags": ["B-ORG", "I-ORG"]}, {"tokens": ["bob"], "tags": ["B-PER"]}]
    assert model.evaluate(tagged, heads=["tags"]).unseen == {"tags": ["B-ORG", "I-ORG"]}  # B-PER is known


def test_encoded_evaluation_data_holds_unseen_labels_past_the_map(tiny_text_model):
    tokenizer = headkit.load_processor(tiny_text_model)
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad", "label": "meh"}, {"text": "ok", "label": "so-so"},
            {"text": "fine", "label": "meh"}, {"text": "dull", "label": None}]  # fmt: skip
    data = prepare([TaskSpec("s", "rows")], tokenizer, val_fraction=0, label_maps={"s": ["neg", "pos"]},
                   sources={"rows": rows}, unseen_labels=True)  # fmt: skip
    assert data.train.labels["s"].tolist() == [1, 2, 3, 2, IGNORE_INDEX]
    assert data.train.unseen == {"s": ["meh", "so-so"]} and data.train.subset([1]).unseen == {"s": ["meh", "so-so"]}
    with pytest.raises(DataError, match=r"label 'meh' of head 's' \(row 2\) was never seen in training"):
        prepare([TaskSpec("s", "rows")], tokenizer, label_maps={"s": ["neg", "pos"]}, sources={"rows": rows})


def test_headkit_evaluate_scores_unseen_labels_and_writes_them(tiny_text_model, tmp_path):
    data = write_csv(tmp_path / "train.csv", sentiment_rows(24))
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_text_model), "--data", str(data), "--head", "sentiment:label",
                 "--epochs", "1", "--output_dir", str(run), "--no_progress"]) == 0  # fmt: skip
    test = sentiment_rows(8, seed=3)
    test[0]["label"] = test[5]["label"] = "meh"
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(run), "--data", str(write_csv(tmp_path / "test.csv", test)),
                 "--device", "cpu", "--output", str(out), "--no_progress"]) == 0  # fmt: skip
    written = json.loads(out.read_text())
    assert written["unseen"] == {"sentiment": ["meh"]} and written["per_class"]["sentiment"]["meh"]["support"] == 2
    assert written["scores"]["sentiment"]["accuracy"] <= 6 / 8
