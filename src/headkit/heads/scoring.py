"""Metrics: how a head type is scored, reported and calibrated (one part, `scoring`, per head type).

    scores = head.scoring.score(predictions, references)   # {"accuracy": ...}, {} when nothing is labelled
    head.scoring.primary, head.scoring.metrics              # what ranks runs; metric -> higher is better

Predictions are what the head's `decode` gives and references what its codec's `references`
give, example by example (None: no label, not scored). `ClassScores` serves every head that
decides one class per example; head types with metrics of their own define their scoring in
their file.

scikit-learn and seqeval are imported inside the methods that score, never with a head's module:
loading them takes seconds, and loading a model to predict with it needs neither.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, ClassVar

import numpy as np

from headkit.heads import calibration
from headkit.heads.calibration import expected_calibration_error
from headkit.heads.part import Part


class Scoring(Part):
    """What every scoring answers; a head type's scoring sets `primary` and `metrics` and
    defines `score`, and whatever else applies to it."""

    primary: str = ""  # what early stopping and the summary rank by (unless told otherwise)
    metrics: ClassVar[dict[str, bool]] = {}  # every metric `score` reports -> whether higher is better

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} does not score; give the head type a scoring")

    def scores_from_loss(self, mean_loss: float) -> dict[str, float]:
        """Metrics that follow from the mean loss alone (language models: perplexity)."""
        return {}

    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None:
        """Per-class precision / recall / F1 / support (classification_report's dict), or None."""
        return None

    def chance(self, references: list[Any]) -> dict[str, float]:
        """Metric -> what the best answer blind to the input (the majority class; no entity at
        all) scores on `references`, which is what a head that learned nothing scores; only for
        the metrics where the head type defines it ({}: none, or nothing to tell by)."""
        return {}

    def class_decisions(self, predictions: list[Any], references: list[Any]) -> tuple[list, list] | None:
        """(true, predicted) class per labelled example, for a confusion matrix; None if not classes."""
        return None

    def calibrate(self, predictions: list[Any], references: list[Any]) -> dict[str, float] | None:
        """Tune decision settings on validation predictions (multi-label: a threshold per label)
        into the head's state, so they are saved with it, and re-decide `predictions` (in place)
        at them, as `decode` now would; returns what was set, or None."""
        return None

    def confidences(self, predictions: list[Any], references: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """(confidence in the decided answer, whether it is right) per labelled example, for
        calibration metrics and reliability diagrams; None where the head decides no class."""
        return None

    def scale_temperature(self, predictions: list[Any], references: list[Any]) -> dict[str, float] | None:
        """Fit a softmax temperature on validation predictions into the head (heads/calibration.py)
        and re-decide `predictions` in place at it; returns the temperature and the validation NLL
        and ECE before and after; None where nothing changed."""
        return None

    def same_decision(self, a: Any, b: Any) -> bool:
        """Whether two decoded predictions of one example decide alike (another engine's against
        torch fp32's: ship/engines.py). The default is strict: equal structure, equal discrete
        values, numbers within 1% (a regression value, a span's score); a head type whose answer
        is a decision beside scores (a class beside its probabilities) compares the decision."""
        return same_values(a, b)


def same_values(a: Any, b: Any) -> bool:
    """Equal structure and discrete values; numbers (not bools) within 1% of each other."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b, rel_tol=1e-2)
    return bool(a == b)


def same_score(a: float, b: float) -> bool:
    """Two engines' scores of one pair agree: within 1%, or within 0.01 near zero. A score ranks and
    a logit's scale is its own (0.004 against 0.0041 decides nothing apart), unlike a regression
    value, which `same_values` holds to 1% however small."""
    return math.isclose(a, b, rel_tol=1e-2, abs_tol=1e-2)


class ClassScores(Scoring):
    """One class per example: predictions carry it as `label`, references are class names."""

    primary = "accuracy"
    metrics: ClassVar[dict[str, bool]] = {"accuracy": True, "f1_macro": True, "ece": False}

    def same_decision(self, a: Any, b: Any) -> bool:
        return a["label"] == b["label"]  # the class, not the probabilities beside it

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        preds, refs = labelled([p["label"] for p in predictions], references)
        if not refs:
            return {}
        scores = {
            "accuracy": float(accuracy_score(refs, preds)),
            "f1_macro": float(
                f1_score(refs, preds, labels=with_unseen(self.names, refs), average="macro", zero_division=0)
            ),
        }
        confidences = self.confidences(predictions, references)
        if confidences is not None:
            scores["ece"] = expected_calibration_error(*confidences)
        return scores

    def confidences(self, predictions: list[Any], references: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
        preds, refs = labelled(predictions, references)
        if not refs or any("probs" not in p for p in preds):
            return None
        return np.array([p["probs"][p["label"]] for p in preds]), np.array(
            [p["label"] == r for p, r in zip(preds, refs, strict=True)]
        )

    def scale_temperature(self, predictions: list[Any], references: list[Any]) -> dict[str, float] | None:
        """Temperature scaling on the labelled examples of a class the head knows: T is folded into
        the head's output layer (`scale_output`), so predict, serve and every export give the
        calibrated probabilities; decisions are unchanged."""
        if not hasattr(self.head, "scale_output"):  # a head type of its own, without a last linear layer to hold T
            return None
        names = self.names
        index = {name: i for i, name in enumerate(names)}
        pairs = [(p, index[r]) for p, r in zip(predictions, references, strict=True) if r in index and "probs" in p]
        if not pairs:
            return None
        probs = np.array([[p["probs"][n] for n in names] for p, _ in pairs])
        targets = np.array([t for _, t in pairs])
        temperature = calibration.fit_temperature(probs, targets)
        if temperature == 1.0:
            return None
        before = self.confidences(predictions, references)
        self.head.scale_output(1.0 / temperature)
        for prediction in predictions:
            row = calibration.scaled(np.array([prediction["probs"][n] for n in names]), temperature)
            prediction["probs"] = dict(zip(names, row.tolist(), strict=True))
        after = self.confidences(predictions, references)
        assert before is not None and after is not None
        return {
            "temperature": temperature,
            "nll_before": calibration.nll(probs, targets),
            "nll_after": calibration.nll(probs, targets, temperature),
            "ece_before": expected_calibration_error(*before),
            "ece_after": expected_calibration_error(*after),
            "examples": len(targets),
        }

    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None:
        from sklearn.metrics import classification_report

        preds, refs = labelled([p["label"] for p in predictions], references)
        if not refs:
            return None
        names = with_unseen(self.names, refs)
        return report_dict(classification_report(refs, preds, labels=names, output_dict=True, zero_division=0))

    def class_decisions(self, predictions: list[Any], references: list[Any]) -> tuple[list, list] | None:
        preds, refs = labelled([p["label"] for p in predictions], references)
        return refs, preds

    def chance(self, references: list[Any]) -> dict[str, float]:
        """Always answering the most frequent class (share p): accuracy p, and its F1 2p/(1+p) as
        the one class of the macro average's that is not 0 (averaged over the classes `score` averages)."""
        refs = [r for r in references if r is not None]
        if not refs:
            return {}
        share = max(Counter(refs).values()) / len(refs)
        return {"accuracy": share, "f1_macro": 2 * share / (1 + share) / len(with_unseen(self.names, refs))}


def with_unseen(names: list[str], references: list[Any]) -> list[str]:
    """A head's label `names` and, after them, the reference labels it never had (evaluation data
    with classes training lacked): per-class metrics count those as classes it always misses."""
    known = set(names)
    seen = {r for ref in references if ref is not None for r in (ref if isinstance(ref, list) else [ref])}
    return [*names, *sorted(str(r) for r in seen - known if r is not None)]


def labelled(predictions: list[Any], references: list[Any]) -> tuple[list[Any], list[Any]]:
    """Keep only the examples that have a reference label."""
    pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
    return [p for p, _ in pairs], [r for _, r in pairs]


def report_dict(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """A classification_report (scikit-learn or seqeval, output_dict=True) as plain floats, per
    class and average; the lone `accuracy` entry is dropped (it is in the head's scores)."""
    return {
        name: {key.replace("f1-score", "f1"): float(v) for key, v in row.items()}
        for name, row in report.items()
        if isinstance(row, dict)
    }


def perplexity(mean_loss: float) -> float:
    """exp of a mean token cross-entropy, capped so that a diverged loss reads as huge, not inf."""
    return math.exp(min(mean_loss, 50))
