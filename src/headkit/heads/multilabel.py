"""Multi-label classification: one sigmoid per label, binary cross-entropy, NaN = missing.

A label is predicted when its probability exceeds its threshold. The thresholds start from the
config (`threshold`, or one per label in `thresholds`) and live in the head's `thresholds`
buffer, saved with its weights: calibration tunes them on the validation split after training,
when the config is long fixed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from headkit.heads.base import weight_tensor, zero_loss
from headkit.heads.classification import ClassificationConfig, PooledHead, sequence_classification
from headkit.heads.codecs import LabelSetCodec
from headkit.heads.fewshot import FewShot, binary_logistic_per_label
from headkit.heads.presentation import View
from headkit.heads.scoring import Scoring, labelled, report_dict, with_unseen


class LabelSetScores(Scoring):
    """Predictions carry the chosen `labels` (and every label's `probs`); references are label lists."""

    primary = "f1_micro"
    metrics: ClassVar[dict[str, bool]] = {"f1_micro": True, "f1_macro": True, "subset_accuracy": True}

    def same_decision(self, a: Any, b: Any) -> bool:
        return sorted(a["labels"]) == sorted(b["labels"])  # the label set, not the probabilities

    def _binarized(
        self, predictions: list[Any], references: list[Any]
    ) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """References and predictions as 1/0 columns, one per label name (labels training never
        had included: always missed), and the names."""
        from sklearn.preprocessing import MultiLabelBinarizer

        preds, refs = labelled([p["labels"] for p in predictions], references)
        if not refs:
            return None
        names = with_unseen(self.names, refs)
        binarizer = MultiLabelBinarizer(classes=names).fit([names])
        return binarizer.transform(refs), binarizer.transform(preds), names

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        binarized = self._binarized(predictions, references)
        if binarized is None:
            return {}
        y_true, y_pred, _ = binarized
        return {
            "f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        }

    def chance(self, references: list[Any]) -> dict[str, float]:
        """Micro F1 of the best blind answer: the k most frequent labels for every example, for the
        best k (none at all: 0)."""
        refs = [r for r in references if r is not None]
        counts = sorted(Counter(name for r in refs for name in set(r)).values(), reverse=True)
        positives, best, hits = sum(counts), 0.0, 0
        for k, count in enumerate(counts, start=1):  # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (k N + P)
            hits += count
            best = max(best, 2 * hits / (k * len(refs) + positives))
        return {"f1_micro": best} if refs else {}

    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None:
        from sklearn.metrics import classification_report

        binarized = self._binarized(predictions, references)
        if binarized is None:
            return None
        y_true, y_pred, names = binarized
        report = classification_report(y_true, y_pred, target_names=names, output_dict=True, zero_division=0)
        return report_dict(report)

    def calibrate(self, predictions: list[Any], references: list[Any]) -> dict[str, float] | None:
        """Per label, the threshold in 0.05..0.95 with the best validation F1 (ties: nearest the
        default); a label with no positive validation example keeps the default. The tuned
        thresholds go into the head's buffer and the given predictions are re-decided at them."""
        from sklearn.metrics import f1_score

        preds, refs = labelled(predictions, references)
        if not refs:
            return None
        default = self.head.config.threshold
        candidates = sorted(np.round(np.arange(0.05, 0.96, 0.05), 2), key=lambda t: abs(t - default))
        tuned = []
        for name in self.names:
            probs = np.array([p["probs"][name] for p in preds])
            truth = np.array([name in r for r in refs])
            if not truth.any():
                tuned.append(default)
                continue
            f1s = [f1_score(truth, probs > t, zero_division=0) for t in candidates]
            tuned.append(float(candidates[int(np.argmax(f1s))]))
        with torch.no_grad():
            self.head.thresholds.copy_(torch.tensor(tuned))
        for prediction in predictions:
            prediction.update(self.head.decided(prediction["probs"], tuned))
        return dict(zip(self.names, tuned, strict=True))


class LabelSetView(View):
    def brief(self, prediction: Any) -> str:
        return ", ".join(prediction["labels"]) or "(none)"

    def pipeline_output(self, prediction: Any) -> list[dict[str, Any]]:
        """The labels above their thresholds as {"label", "score"}, most probable first."""
        chosen = [{"label": n, "score": prediction["probs"][n]} for n in prediction["labels"]]
        return sorted(chosen, key=lambda c: -c["score"])


class MultiLabelHead(PooledHead):
    codec = LabelSetCodec()
    scoring = LabelSetScores()
    view = LabelSetView()
    export = sequence_classification("multi_label_classification")
    fewshot = FewShot(binary_logistic_per_label)

    thresholds: Tensor  # a buffer (C,), registered in __init__

    def __init__(self, config: ClassificationConfig):
        super().__init__(config)
        thresholds = config.thresholds or [config.threshold] * len(config.labels)
        self.register_buffer("thresholds", torch.tensor(thresholds, dtype=torch.float32))  # (C,)

    def _apply(self, fn: Any, recurse: bool = True) -> MultiLabelHead:
        """`.to(dtype)`, `.half()`, `.bfloat16()` move the thresholds but keep them fp32: a tuned
        0.35 would be 0.3496 in bf16, and a probability between the two would change its label."""
        exact = self.thresholds
        super()._apply(fn, recurse)
        self.thresholds = exact.to(self.thresholds.device)
        return self

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        present = ~torch.isnan(labels)
        n = int(present.any(dim=1).sum())
        if n == 0:
            return zero_loss(output), 0
        losses = F.binary_cross_entropy_with_logits(
            output.float(),
            torch.nan_to_num(labels.float()),
            pos_weight=weight_tensor(self.config.class_weights, output),
            reduction="none",
        )
        return losses[present].mean(), n

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[dict[str, Any]]:
        names, thresholds = self.config.labels, self.thresholds.tolist()
        return [self.decided(dict(zip(names, p, strict=True)), thresholds) for p in output.float().sigmoid().tolist()]

    def decided(self, probs: dict[str, float], thresholds: list[float] | None = None) -> dict[str, Any]:
        """A prediction from its label probabilities: the labels above their thresholds."""
        thresholds = self.thresholds.tolist() if thresholds is None else thresholds
        chosen = [n for n, t in zip(self.config.labels, thresholds, strict=True) if probs[n] > t]
        return {"labels": chosen, "probs": probs}
