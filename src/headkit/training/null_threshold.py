"""A question-answering head's null threshold, tuned on the validation split at the end of a run.

SQuAD 2.0 answers "no answer" when a question's null score beats its best span's by more than a
threshold. The score scale a model learns is its own, so the threshold that scores best is found
on held-out questions, as the official evaluation script's `find_best_thresh` finds it (transformers'
run_qa reports the same `best_f1_thresh`); the run then keeps it in the head's config, so predict,
serve and export answer with it. The validation windows keep token labels, not answer texts: the
answers are read back from the labels through the windows' offsets (`heads.qa.answers_from_labels`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np
import torch

from headkit.backbone import max_input_tokens
from headkit.backbone_outputs import is_causal
from headkit.data import MAX_TOKENS
from headkit.data.batching import EncodedData
from headkit.heads.labels import IGNORE_INDEX
from headkit.heads.qa import answers_from_labels, qa_windows
from headkit.heads.squad import apply_null_threshold, best_null_threshold, squad_scores
from headkit.model import MultiHeadModel
from headkit.ship.predict_batches import predict_questions

logger = logging.getLogger(__name__)


def tune_null_thresholds(
    model: MultiHeadModel, processor: Any, val: EncodedData, batch_size: int
) -> dict[str, dict[str, float]]:
    """Set each question-answering head's `null_threshold` to the one that maximises SQuAD F1 on
    the validation questions; returns, per head tuned, the threshold with the F1 and exact match
    before and at it. A head is left as it is when it never answers empty (trained on answerable
    questions only) or when the validation split lacks answerable or unanswerable questions."""
    tuned = {}
    for name, head in model.heads.items():
        config: Any = head.config  # a span head's (heads/span.py) where it reads questions
        if head.codec.inputs != "qa" or config.null_threshold is None or name not in val.labels:
            continue
        found = _tune(model, processor, val, name, batch_size)
        if found is None:
            logger.info(f"{name}: null threshold kept at {config.null_threshold} (the validation split "
                        "needs answerable and unanswerable questions to tune it)")  # fmt: skip
            continue
        head.config = dataclasses.replace(config, null_threshold=found["null_threshold"])
        tuned[name] = found
        logger.info(f"{name}: null threshold tuned on {int(found['questions'])} validation questions: "
                    f"{found['null_threshold']:.3f} (F1 {found['f1_before']:.3f} -> {found['f1']:.3f})")  # fmt: skip
    return tuned


@torch.inference_mode()
def _tune(
    model: MultiHeadModel, processor: Any, val: EncodedData, name: str, batch_size: int
) -> dict[str, float] | None:
    config: Any = model.heads[name].config  # a span head's (heads/span.py)
    limit = max_input_tokens(model.backbone_config, processor, model.max_length or 512)
    causal = is_causal(model.backbone_config)
    pairs, labels = _validation_questions(processor, val, name, limit, config.doc_stride, causal)
    if not pairs:
        return None
    questions, contexts = [q for q, _ in pairs], [c for _, c in pairs]
    windows = qa_windows(processor, questions, contexts, limit, config.doc_stride, causal)
    gold = answers_from_labels(windows, labels, contexts)
    rows: list[dict[str, Any]] = [{"id": str(i), "answers": a} for i, a in enumerate(gold) if a is not None]
    if not any(r["answers"]["text"] for r in rows) or all(r["answers"]["text"] for r in rows):
        return None
    model.eval()
    answers = predict_questions(model, processor, questions, contexts, limit, batch_size, [name], False, MAX_TOKENS,
                                best_spans=True)  # fmt: skip
    spans = {r["id"]: answers[int(r["id"])][name]["answer"] for r in rows}
    diffs = {r["id"]: answers[int(r["id"])][name]["null_score_diff"] for r in rows}
    threshold, best_exact, best_f1 = best_null_threshold(diffs, spans, rows)
    before = squad_scores(apply_null_threshold(spans, diffs, config.null_threshold), rows)
    return {
        "null_threshold": float(threshold),
        "f1": best_f1,
        "exact_match": best_exact,
        "f1_before": before["f1"],
        "exact_match_before": before["exact_match"],
        "questions": len(rows),
    }


def _validation_questions(
    processor: Any, val: EncodedData, name: str, limit: int, stride: int, causal: bool
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The validation split's (question, context) pairs for head `name`, one per question (a
    question asked twice counts twice), and their windows' labels. A pair's windows are consecutive
    and depend on that pair alone, so cutting each distinct pair again says how many windows it has."""
    y = np.asarray(val.labels[name]).reshape(-1, 2)
    labelled = [t for t, label in zip(val.texts, y, strict=True) if isinstance(t, tuple) and IGNORE_INDEX not in label]
    distinct = list(dict.fromkeys(labelled))
    if not distinct:
        return [], y[:0]
    cut = qa_windows(processor, [q for q, _ in distinct], [c for _, c in distinct], limit, stride, causal)
    count = Counter(distinct[e] for e in cut.example)
    pairs, rows, w = [], [], 0
    while w < len(val.texts):
        text = val.texts[w]
        if text not in count or IGNORE_INDEX in y[w]:
            w += 1
            continue
        pairs.append(text)
        rows.append(y[w : w + count[text]])
        w += count[text]
    return pairs, np.concatenate(rows)
