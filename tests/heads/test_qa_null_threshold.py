"""A span head's null threshold: tuned on the validation questions at the end of a run (the official
SQuAD 2.0 best-F1 threshold) and answered with afterwards; never answering empty when no training
question is unanswerable (SQuAD 1.1 data); the validation answers read back from window labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

import headkit
from headkit.heads.labels import IGNORE_INDEX
from headkit.heads.qa import answers_from_labels, qa_windows, window_labels
from headkit.heads.squad import apply_null_threshold, best_null_threshold, read_squad, squad_scores
from heads.test_qa import context_with, qa_data, squad_file


def test_answers_read_back_from_window_labels_are_the_answers_trained_on(tiny_text_model):
    tokenizer = headkit.load_processor(tiny_text_model)
    pairs, answers = [], []
    for before in (2, 20, 37, 50):  # in the first window, a later one, across a border, the last
        context, start = context_with("alice met bob", before=before, after=25)
        pairs.append(("who met bob", context))
        answers.append({"text": ["alice met bob"], "answer_start": [start]})
    pairs.append(("who met london", context_with("bob", before=40, after=10)[0]))
    answers.append({"text": [], "answer_start": []})
    pairs.append(("who", "alice met bob"))
    answers.append(None)
    contexts = [c for _, c in pairs]
    windows = qa_windows(tokenizer, [q for q, _ in pairs], contexts, max_length=24, doc_stride=8)
    assert len(windows.example) > 2 * len(pairs)  # long contexts: many windows each
    assert answers_from_labels(windows, window_labels(windows, answers), contexts) == answers


def test_an_answer_label_outside_the_context_is_refused(tiny_text_model):
    from headkit.errors import DataError

    tokenizer = headkit.load_processor(tiny_text_model)
    windows = qa_windows(tokenizer, ["who met bob"], ["alice met bob"], max_length=24)
    with pytest.raises(DataError, match="outside the context"):
        answers_from_labels(windows, np.array([[1, 2]]), ["alice met bob"])  # question tokens
    unlabelled = np.full((1, 2), IGNORE_INDEX)
    assert answers_from_labels(windows, unlabelled, ["alice met bob"]) == [None]


def train_span(tiny_text_model, data, **options):
    return headkit.train(
        str(tiny_text_model),
        {"answer": {"type": "span", "label": "answers", "data": str(data)}},
        strategy="full",
        epochs=2,
        max_length=24,
        lr=1e-3,
        val_fraction=0.5,
        progress=False,
        **options,
    )


def validation_pairs(tiny_text_model, data):
    """The (question, context) pairs the run held out: its split is seeded, so prepare makes it again."""
    from headkit.data.tasks import TaskSpec, prepare

    spec = TaskSpec("answer", str(data), label="answers", type="span")
    return set(prepare([spec], headkit.load_processor(tiny_text_model), 24, 0.5, 0).val.texts)


def test_the_null_threshold_is_tuned_on_the_validation_questions_and_predict_answers_with_it(tiny_text_model, tmp_path):
    from headkit.ship.predict_batches import predict_questions

    data = qa_data(tmp_path, n=16)
    result = train_span(tiny_text_model, data)
    model, tokenizer = result.model, headkit.load_processor(tiny_text_model)
    tuned = result.metrics["thresholds"]["answer"]
    assert model.heads["answer"].config.null_threshold == tuned["null_threshold"] != 0.0
    assert tuned["f1"] >= tuned["f1_before"]
    # the official best-F1 threshold over the validation questions the run held out
    held_out = validation_pairs(tiny_text_model, data)
    rows = [r for r in read_squad(data) if (r["question"], r["context"]) in held_out]
    assert len(rows) == tuned["questions"] > 0
    questions, contexts = [r["question"] for r in rows], [r["context"] for r in rows]
    spans = predict_questions(model, tokenizer, questions, contexts, 24, 8, ["answer"], False, None, best_spans=True)
    best = {r["id"]: s["answer"]["answer"] for r, s in zip(rows, spans, strict=True)}
    diffs = {r["id"]: s["answer"]["null_score_diff"] for r, s in zip(rows, spans, strict=True)}
    threshold, _, best_f1 = best_null_threshold(diffs, best, rows)
    assert (threshold, best_f1) == pytest.approx((tuned["null_threshold"], tuned["f1"]))
    # predict answers with it, and the saved model keeps it
    predicted = model.predict(list(zip(questions, contexts, strict=True)))
    answered = {r["id"]: p["answer"]["answer"] for r, p in zip(rows, predicted, strict=True)}
    assert answered == apply_null_threshold(best, diffs, threshold)
    assert squad_scores(answered, rows)["f1"] == pytest.approx(tuned["f1"])
    saved = headkit.save(model, tmp_path / "saved", processor=tokenizer)
    assert headkit.MultiHeadModel.from_pretrained(saved).heads["answer"].config.null_threshold == threshold


def test_without_tune_thresholds_the_null_threshold_stays_zero(tiny_text_model, tmp_path):
    result = train_span(tiny_text_model, qa_data(tmp_path, n=8), tune_thresholds=False)
    assert result.model.heads["answer"].config.null_threshold == 0.0 and "answer" not in result.metrics["thresholds"]


def test_a_head_trained_on_answerable_questions_only_never_answers_empty(tiny_text_model, tmp_path):
    import torch

    contexts = []
    for i in range(12):
        name = ["alice", "bob"][i % 2]
        context, start = context_with(f"{name} visited paris", before=3 + i % 5, after=3)
        qas = [{"id": f"a{i}", "question": "who visited paris", "answers": [{"text": name, "answer_start": start}]}]
        contexts.append((context, qas))
    result = train_span(tiny_text_model, squad_file(tmp_path / "v1.json", contexts))
    head = result.model.heads["answer"]
    assert head.config.null_threshold is None and "answer" not in result.metrics["thresholds"]
    logits = torch.full((1, 5, 2), -5.0)
    logits[0, 0, :] = 5.0  # the null answer far ahead of every span
    (span,) = head.decode(logits, torch.ones(1, 5, dtype=torch.long))
    assert (span["start"], span["end"]) != (0, 0)
    saved = headkit.save(result.model, tmp_path / "saved", processor=headkit.load_processor(tiny_text_model))
    assert json.loads((saved / "config.json").read_text())["heads"]["answer"]["null_threshold"] is None
