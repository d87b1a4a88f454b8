"""A question-answering head's null threshold, settled at the end of a run.

SQuAD 2.0 answers "no answer" when a question's null score beats its best span's by more than a
threshold. The score scale a model learns is its own, so the threshold is chosen on held-out
questions, as the official evaluation script's `find_best_thresh` searches it (transformers' run_qa
reports the same `best_f1_thresh`): the run keeps, in the head's config, the threshold at which F1
on the validation questions is highest (`heads.squad.tune_null_threshold`), so predict, serve and
export answer with it. A head whose training questions all have an answer (SQuAD 1.1 data) never
answers empty instead, as run_qa without `--version_2_with_negative`. The questions and their
answers, as given, come with the encoded windows (`EncodedData.questions`): a window's token labels
keep neither every reference answer nor an answer that no window holds whole.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from headkit.backbone import max_input_tokens
from headkit.data import MAX_TOKENS
from headkit.data.batching import EncodedData
from headkit.data.tasks import PreparedData
from headkit.errors import DataError
from headkit.heads.qa import distinct_questions
from headkit.heads.squad import apply_null_threshold, squad_scores, tune_null_threshold
from headkit.model import MultiHeadModel
from headkit.ship.predict_batches import predict_questions
from headkit.training.config import TrainConfig

logger = logging.getLogger(__name__)


def settle_null_thresholds(
    model: MultiHeadModel, processor: Any, data: PreparedData, run: TrainConfig
) -> dict[str, dict[str, float]]:
    """Set each question-answering head's `null_threshold`, unless its task's options set it: None
    when its training questions all have an answer; else, with `run.tune_thresholds`, the one that
    scores best on the validation questions. Returns, per head tuned, the threshold with the
    validation F1 and exact match at it and at the threshold before."""
    answering = [name for name, head in model.heads.items() if head.codec.inputs == "qa"]
    if not answering:
        return {}
    given = {t.name for t in run.all_tasks() if "null_threshold" in t.options}
    assert run.batch_size is not None  # TrainConfig.__post_init__ filled the strategy's default
    tune, batch_size = run.tune_thresholds, run.batch_size
    tuned = {}
    for name in answering:
        head = model.heads[name]
        config: Any = head.config  # a span head's (heads/span.py)
        if name in given:
            continue
        answerable_only = _answerable_only(data.train, name)
        if answerable_only:
            head.config = dataclasses.replace(config, null_threshold=None)
            logger.info(f"{name}: every training question has an answer: it never answers empty (SQuAD 1.1)")
            continue
        if answerable_only is False and config.null_threshold is None:  # trained before on SQuAD 1.1 data
            head.config = config = dataclasses.replace(config, null_threshold=0.0)
        if not tune or config.null_threshold is None:  # None: kept where the data does not tell
            continue
        try:
            found = _tune(model, processor, data.val, name, batch_size)
        except DataError as e:  # e.g. a NaN score: the run's model is still saved, with the threshold it had
            logger.warning(f"{name}: the null threshold could not be tuned ({e}); kept at {config.null_threshold}")
            continue
        if found is None:
            logger.info(f"{name}: null threshold kept at {config.null_threshold} (the validation split needs "
                        "answerable and unanswerable questions to tune it)")  # fmt: skip
            continue
        head.config = dataclasses.replace(config, null_threshold=found["null_threshold"])
        tuned[name] = found
        logger.info(f"{name}: null threshold tuned on {int(found['questions'])} validation questions: "
                    f"{found['null_threshold']:.3f} (F1 {found['f1_before']:.3f} -> {found['f1']:.3f})")  # fmt: skip
    return tuned


def _answerable_only(train: Any, name: str) -> bool | None:
    """Whether every labelled training question of head `name` has an answer (None: none to tell
    by; a stream tells by its first rows, the ones it keeps)."""
    questions = getattr(train, "questions", None)
    labelled = [q.answers[name] for q in questions or [] if q is not None and q.answers.get(name) is not None]
    if not labelled:
        return None
    return all(a["text"] for a in labelled)


def _tune(
    model: MultiHeadModel, processor: Any, val: EncodedData, name: str, batch_size: int
) -> dict[str, float] | None:
    questions = distinct_questions(val.questions or [], name)
    rows: list[dict[str, Any]] = [{"id": str(i), "answers": q.answers[name]} for i, q in enumerate(questions)]
    if not any(r["answers"]["text"] for r in rows) or all(r["answers"]["text"] for r in rows):
        return None
    config: Any = model.heads[name].config
    limit = max_input_tokens(model.backbone_config, processor, model.max_length or 512)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            answers = predict_questions(model, processor, [q.question for q in questions],
                                        [q.context for q in questions], limit, batch_size, [name], False, MAX_TOKENS,
                                        best_spans=True)  # fmt: skip
    finally:
        model.train(was_training)
    spans = {r["id"]: a[name]["answer"] for r, a in zip(rows, answers, strict=True)}
    diffs = {r["id"]: a[name]["null_score_diff"] for r, a in zip(rows, answers, strict=True)}
    before = config.null_threshold
    threshold = tune_null_threshold(diffs, spans, rows, current=before)
    at_before = squad_scores(apply_null_threshold(spans, diffs, before), rows)
    at_threshold = squad_scores(apply_null_threshold(spans, diffs, threshold), rows)
    return {
        "null_threshold": float(threshold),
        "f1": at_threshold["f1"],
        "exact_match": at_threshold["exact_match"],
        "f1_before": at_before["f1"],
        "exact_match_before": at_before["exact_match"],
        "questions": len(rows),
    }
