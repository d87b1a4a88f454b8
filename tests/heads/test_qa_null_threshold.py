"""A span head's null threshold: the one that scores best on the validation questions, set at the
end of a run and answered with afterwards (predict, save, export); never answering empty when no
training question is unanswerable (SQuAD 1.1 data); kept when a task's options set it."""

from __future__ import annotations

import json

import pytest
import torch

import headkit
from headkit.errors import DataError, HeadConfigError
from headkit.heads.squad import apply_null_threshold, read_squad, squad_scores, tune_null_threshold
from heads.test_qa import context_with, long_questions, qa_data, squad_file, train_span

GOLD = [
    {"id": "a1", "answers": {"text": ["Paris"], "answer_start": [0]}},
    {"id": "a2", "answers": {"text": ["1889"], "answer_start": [0]}},
    {"id": "u1", "answers": {"text": [], "answer_start": []}},
    {"id": "u2", "answers": {"text": [], "answer_start": []}},
]


def f1_at(threshold, spans, diffs):
    return squad_scores(apply_null_threshold(spans, diffs, threshold), GOLD)["f1"]


def test_the_tuned_threshold_reaches_the_best_f1_that_any_threshold_gives():
    spans = {"a1": "Paris", "a2": "1889", "u1": "Rome", "u2": "Oslo"}
    cases = [
        {"a1": -1.0, "a2": 0.5, "u1": 2.0, "u2": 3.0},  # the answerable ones lowest: answer up to 0.5
        {"a1": 1.0, "a2": 1.0, "u1": 1.0, "u2": -2.0},  # a tie at 1.0 answers all three or none of them
        {"a1": 5.0, "a2": 6.0, "u1": -1.0, "u2": -2.0},  # answering nothing is best: below every diff
        {"a1": float("inf"), "a2": 0.0, "u1": 1.0, "u2": 2.0},  # a1 has no span at all
    ]
    for diffs in cases:
        threshold = tune_null_threshold(diffs, spans, GOLD)
        every = [f1_at(t, spans, diffs) for t in (-10.0, *diffs.values(), 10.0) if t != float("inf")]
        assert f1_at(threshold, spans, diffs) == pytest.approx(max(every))
        assert threshold != float("inf")
    everything_empty = cases[2]
    assert tune_null_threshold(everything_empty, spans, GOLD) < min(everything_empty.values())
    # the current threshold stays unless another scores higher
    assert tune_null_threshold(cases[0], spans, GOLD, current=0.7) == 0.7
    moved = tune_null_threshold(cases[0], spans, GOLD, current=-5.0)
    assert 0.5 < moved < 2.0  # halfway between the last diff answered and the next: robust to noise
    with pytest.raises(DataError, match="no null_score_diff for question 'u2'"):
        tune_null_threshold({"a1": 0.0, "a2": 0.0, "u1": 0.0}, spans, GOLD)


def test_the_tuned_threshold_is_the_best_of_every_threshold_on_random_diffs_with_ties_and_infinities():
    import random

    rng = random.Random(0)
    values = [-2.0, -1.0, -1.0, 0.0, 0.5, 3.0, 1e16, 2e16, float("inf"), float("-inf")]
    for _ in range(300):
        diffs = {r["id"]: rng.choice(values) for r in GOLD}
        spans = {r["id"]: rng.choice(["Paris", "1889", "", "Rome"]) for r in GOLD}
        current = rng.choice([None, 0.0, -1.0, 0.5])
        threshold = tune_null_threshold(diffs, spans, GOLD, current=current)
        finite = sorted({d for d in diffs.values() if abs(d) != float("inf")})
        tried = [*finite, *(f - 1.0 for f in finite), *(f + 1.0 for f in finite), 0.0, -3e16, 3e16]
        best = max(f1_at(t, spans, diffs) for t in tried)
        assert threshold == threshold and abs(threshold) != float("inf")  # a number a config can hold
        assert f1_at(threshold, spans, diffs) == pytest.approx(best)
        if current is not None and f1_at(current, spans, diffs) == pytest.approx(best):
            assert threshold == current


def validation_rows(tiny_text_model, data):
    """The questions the run held out (its split is seeded: prepare makes it again), as read_squad reads them."""
    from headkit.data.tasks import TaskSpec, prepare

    spec = TaskSpec("answer", str(data), label="answers", type="span")
    held_out = set(prepare([spec], headkit.load_processor(tiny_text_model), 24, 0.5, 0).val.texts)
    return [r for r in read_squad(data) if (r["question"], r["context"]) in held_out]


def test_the_null_threshold_is_tuned_on_the_validation_questions_and_predict_answers_with_it(tiny_text_model, tmp_path):
    from headkit.ship.predict_batches import predict_questions

    data = qa_data(tmp_path, n=16)
    result = train_span(tiny_text_model, data)
    model, tokenizer = result.model, headkit.load_processor(tiny_text_model)
    tuned = result.metrics["thresholds"]["answer"]
    assert model.heads["answer"].config.null_threshold == tuned["null_threshold"]
    assert tuned["f1"] >= tuned["f1_before"]
    rows = validation_rows(tiny_text_model, data)
    assert len(rows) == tuned["questions"] == 16  # every held-out question once, duplicates included
    questions, contexts = [r["question"] for r in rows], [r["context"] for r in rows]
    spans = predict_questions(model, tokenizer, questions, contexts, 24, 8, ["answer"], False, None, best_spans=True)
    best = {r["id"]: s["answer"]["answer"] for r, s in zip(rows, spans, strict=True)}
    diffs = {r["id"]: s["answer"]["null_score_diff"] for r, s in zip(rows, spans, strict=True)}
    assert tuned["null_threshold"] == pytest.approx(tune_null_threshold(diffs, best, rows, current=0.0))
    # the scores reported are those at the threshold kept, and predict answers with it
    predicted = model.predict(list(zip(questions, contexts, strict=True)))
    answered = {r["id"]: p["answer"]["answer"] for r, p in zip(rows, predicted, strict=True)}
    assert answered == apply_null_threshold(best, diffs, tuned["null_threshold"])
    assert squad_scores(answered, rows)["f1"] == pytest.approx(tuned["f1"])
    saved = headkit.save(model, tmp_path / "saved", processor=tokenizer)
    loaded = headkit.MultiHeadModel.from_pretrained(saved)
    assert loaded.heads["answer"].config.null_threshold == tuned["null_threshold"]


def test_the_validation_answers_are_the_questions_own_not_what_the_windows_hold(tiny_text_model, tmp_path):
    """An answer no window holds whole trains as "no answer here" in every window, yet its question
    is answerable: tuning scores it against its own answer text."""
    from headkit.data.tasks import TaskSpec, prepare

    data, rows = long_questions(tmp_path)
    long_answer = " ".join(["story"] * 30)
    context = f"alice told a {long_answer} and left"
    rows.append({"id": "long", "question": "what did alice tell", "context": context,
                 "answers": {"text": [long_answer], "answer_start": [context.index(long_answer)]}})  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TaskSpec("answer", str(data), label="answers", type="span")
    prepared = prepare([spec], headkit.load_processor(tiny_text_model), 24, 0.0, 0)
    records = list(dict.fromkeys(prepared.train.questions))
    assert [r.answers["answer"] for r in records] == [r["answers"] for r in rows]
    mine = [w for w, q in enumerate(prepared.train.questions) if q.question == "what did alice tell"]
    assert len(mine) > 1 and all(list(prepared.train.labels["answer"][w]) == [0, 0] for w in mine)


def test_without_tune_thresholds_the_null_threshold_stays_as_configured(tiny_text_model, tmp_path):
    result = train_span(tiny_text_model, qa_data(tmp_path, n=8), tune_thresholds=False)
    assert result.model.heads["answer"].config.null_threshold == 0.0 and "answer" not in result.metrics["thresholds"]


def test_a_threshold_set_in_the_tasks_options_is_kept(tiny_text_model, tmp_path):
    result = train_span(tiny_text_model, qa_data(tmp_path, n=8), task={"options": {"null_threshold": 2.5}})
    assert result.model.heads["answer"].config.null_threshold == 2.5 and "answer" not in result.metrics["thresholds"]


def answerable_only(tmp_path):
    contexts = []
    for i in range(12):
        name = ["alice", "bob"][i % 2]
        context, start = context_with(f"{name} visited paris", before=3 + i % 5, after=3)
        qas = [{"id": f"a{i}", "question": "who visited paris", "answers": [{"text": name, "answer_start": start}]}]
        contexts.append((context, qas))
    return squad_file(tmp_path / "v1.json", contexts)


def test_a_head_trained_on_answerable_questions_only_never_answers_empty(tiny_text_model, tmp_path):
    result = train_span(tiny_text_model, answerable_only(tmp_path))
    head = result.model.heads["answer"]
    assert head.config.null_threshold is None and "answer" not in result.metrics["thresholds"]
    saved = headkit.save(result.model, tmp_path / "saved", processor=headkit.load_processor(tiny_text_model))
    assert json.loads((saved / "config.json").read_text())["heads"]["answer"]["null_threshold"] is None
    # trained further on data with unanswerable questions, it answers empty again, tuned
    again = train_span(result.model, qa_data(tmp_path, n=16))
    assert again.model.heads["answer"].config.null_threshold is not None and "answer" in again.metrics["thresholds"]


def test_a_window_may_still_hold_no_answer_where_a_question_always_has_one():
    """null_threshold None is "never answer a question empty" (best_answers); one window of a long
    context may still hold no answer, and the per-window decode (training's scores) says so."""
    from headkit.heads.span import SpanConfig, SpanHead

    head = SpanHead(SpanConfig(input_size=4, null_threshold=None))
    logits = torch.full((1, 5, 2), -5.0)
    logits[0, 0, :] = 5.0  # the null answer far ahead of every span
    (span,) = head.decode(logits, torch.ones(1, 5, dtype=torch.long))
    assert (span["start"], span["end"]) == (0, 0)


def test_span_settings_out_of_range_are_refused():
    for bad, message in (
        ({"doc_stride": 0}, "at least 1"),
        ({"max_answer_tokens": 0}, "at least 1"),
        ({"null_position": "middle"}, "null_position is one of"),
        ({"null_threshold": float("inf")}, "finite number or None"),
        ({"null_threshold": "0.5"}, "a number or None"),
        ({"doc_stride": "64"}, "whole numbers"),
        ({"max_answer_tokens": True}, "whole numbers"),
    ):
        with pytest.raises(HeadConfigError, match=message):
            headkit.head_config("span", **bad)
