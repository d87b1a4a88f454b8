"""Pooled heads: single-label classification, multi-label classification and regression.

All three are `pool -> dropout -> linear`; they differ only in loss, decoding and metric.
Label tensors: single-label (B,) long with -100 for missing; multi-label (B, C) float 0/1 and
regression (B, K) float, NaN for missing values.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from sklearn.preprocessing import MultiLabelBinarizer
from torch import Tensor

from headkit.data.files import SEQUENCE_TYPES, column_values, is_missing
from headkit.errors import DataError
from headkit.heads import fewshot
from headkit.heads.base import (
    IGNORE_INDEX,
    HeadBase,
    HeadConfig,
    LabelSource,
    Pair,
    balanced_weights,
    dropout_linear,
    label_index,
    label_order,
    label_values,
    labelled,
    report_dict,
    set_label_maps,
    weight_tensor,
    zero_loss,
)
from headkit.heads.pooling import check_pooling, pool

NAN = float("nan")
SEQUENCE_CLASSIFICATION = "AutoModelForSequenceClassification"  # holds all three, told apart by problem_type


@dataclass
class ClassificationConfig(HeadConfig):
    """`labels` are class names (classification, multilabel) or target names (regression)."""

    type: str = "classification"
    threshold: float = 0.5  # multi-label: a class is predicted when its probability exceeds this
    thresholds: list[float] | None = None  # multi-label: one threshold per label, tuned on validation
    class_weights: list[float] | None = None  # loss weight per label (multi-label: BCE's pos_weight)
    normalize: bool = False  # L2-normalise the pooled vector first (fewshot: contrastive tuning shapes directions)


class PooledHead(HeadBase):
    """pool -> dropout -> linear; the three types below differ in labels, loss, decode and score."""

    min_labels = 1
    fewshot = True
    export_target = SEQUENCE_CLASSIFICATION
    pipeline_tag = "text-classification"
    problem_type: str  # transformers' name for this kind of sequence classification

    def __init__(self, config: ClassificationConfig):
        super().__init__()
        config.require_labels(self.min_labels)
        check_pooling(config.pooling)
        self.config = config
        self.classifier = dropout_linear(config.input_size, len(config.labels), config.dropout)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.forward_pooled(pool(hidden, mask, self.config.pooling))

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        """(B, H) -> (B, C): used directly with cached pooled features."""
        if self.config.normalize:
            pooled = F.normalize(pooled.float(), dim=-1).to(pooled.dtype)
        return self.classifier(pooled)

    def export_config(self, config: Any) -> None:
        set_label_maps(config, list(self.config.labels), self.problem_type)

    def _fewshot_solution(self, features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fewshot_fit(self, features: np.ndarray, y: Any) -> None:
        fewshot.load_linear(self.classifier[-1], *self._fewshot_solution(features, np.asarray(y)))


class ClassificationHead(PooledHead):
    """Single-label classification: softmax over `labels`, cross-entropy loss."""

    primary_metric = "accuracy"
    metrics: ClassVar[dict[str, bool]] = {"accuracy": True, "f1_macro": True}
    label_layout = "index"
    min_labels = 2
    problem_type = "single_label_classification"

    @classmethod
    def label_names(cls, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        """Sorted distinct values; lists, free text and a single class are refused here, where the
        column is read, instead of becoming a confusing label map."""
        present = [v for v in label_values(rows, where) if not is_missing(v)]
        nested = next((v for v in present if isinstance(v, list | dict)), None)
        if nested is not None:
            raise DataError(
                f"column '{where.column}' of {where.source} holds a {type(nested).__name__} ({nested!r}); a "
                "classification label must be one value (use type multilabel for lists of labels)"
            )
        distinct = {str(v) for v in present}
        if len(distinct) > max(50, len(present) // 2):
            raise DataError(
                f"column '{where.column}' of {where.source} has {len(distinct)} distinct values in {len(present)} "
                "rows: it looks continuous or free text, not class labels. Use type regression, or another column."
            )
        declared = where.declared_names(present=distinct)
        if declared is not None:
            return declared  # the dataset's own order (ClassLabel names)
        if len(distinct) < 2:
            raise DataError(
                f"column '{where.column}' of {where.source} has a single class {sorted(distinct)}; "
                "a classifier needs at least 2"
            )
        return label_order(distinct)

    @classmethod
    def encode_labels(
        cls, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        lookup = label_index(labels, where)
        out = np.full(len(rows), IGNORE_INDEX, dtype=np.int64)
        for i, v in enumerate(column_values(rows, where.column, where.source)):
            if not is_missing(v):
                out[i] = lookup(str(v), i + 1)
        return out

    @classmethod
    def label_counts(cls, values: list[Any]) -> dict[str, int]:
        return dict(Counter(str(v) for v in values).most_common())

    @classmethod
    def fewshot_pairs(cls, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        return fewshot.class_pairs(head, np.asarray(y), iterations, rng)

    @classmethod
    def fewshot_similarity(cls, a: Any, b: Any, span: np.ndarray) -> float:
        return float(a == b)

    @classmethod
    def auto_class_weights(cls, y: Any, width: int) -> list[float]:
        y = np.asarray(y)
        return balanced_weights(np.bincount(y[y != IGNORE_INDEX], minlength=width))

    def _fewshot_solution(self, features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = y != IGNORE_INDEX
        return fewshot.logistic(features[keep], y[keep], len(self.config.labels))

    def brief(self, prediction: Any) -> str:
        return f"{prediction['label']} ({prediction['probs'][prediction['label']]:.2f})"

    def pipeline_output(self, prediction: Any) -> dict[str, Any]:
        """text-classification's {"label", "score"}."""
        return {"label": prediction["label"], "score": prediction["probs"][prediction["label"]]}

    def table_cells(self, prediction: Any) -> dict[str, Any]:
        return {"": prediction["label"], **{f".p.{k}": round(v, 6) for k, v in prediction["probs"].items()}}

    def class_decisions(self, predictions: list[Any], references: list[Any]) -> tuple[list, list] | None:
        preds, refs = labelled([p["label"] for p in predictions], references)
        return refs, preds

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        n = int((labels != IGNORE_INDEX).sum())
        if n == 0:
            return zero_loss(output), 0
        weight = weight_tensor(self.config.class_weights, output)
        return F.cross_entropy(output.float(), labels.long(), weight=weight, ignore_index=IGNORE_INDEX), n

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[dict[str, Any]]:
        probs = output.float().softmax(-1).tolist()
        names = self.config.labels
        return [{"label": names[int(np.argmax(p))], "probs": dict(zip(names, p, strict=True))} for p in probs]

    def references(self, labels: Tensor, mask: Tensor | None = None) -> list[str | None]:
        return [None if int(y) == IGNORE_INDEX else self.config.labels[int(y)] for y in labels]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        preds, refs = labelled([p["label"] for p in predictions], references)
        if not refs:
            return {}
        return {
            "accuracy": float(accuracy_score(refs, preds)),
            "f1_macro": float(f1_score(refs, preds, labels=self.config.labels, average="macro", zero_division=0)),
        }

    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None:
        preds, refs = labelled([p["label"] for p in predictions], references)
        if not refs:
            return None
        labels = self.config.labels
        return report_dict(classification_report(refs, preds, labels=labels, output_dict=True, zero_division=0))


def as_label_list(value: Any) -> list[str]:
    """A multi-label value as its label names: a list as is, a string split at '|' (CSV cells)."""
    if isinstance(value, SEQUENCE_TYPES):
        return [str(v) for v in value]
    return [part for part in str(value).split("|") if part]


class MultiLabelHead(PooledHead):
    """Multi-label classification: one sigmoid per label, binary cross-entropy, NaN = missing.

    A label cell is a list (JSONL, Parquet) or names joined by '|' (CSV: `drama|comedy`)."""

    primary_metric = "f1_micro"
    metrics: ClassVar[dict[str, bool]] = {"f1_micro": True, "f1_macro": True, "subset_accuracy": True}
    label_layout = "vector"
    problem_type = "multi_label_classification"
    class_noun, suggested_name = "label", "labels"

    @classmethod
    def describe_counts(cls, counts: dict[str, int]) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:8])
        return f"{len(counts)} labels (examples with each: {shown})"  # an example counts once per label

    @classmethod
    def label_names(cls, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        values = label_values(rows, where)
        present = {name for v in values if not is_missing(v) for name in as_label_list(v)}
        return where.declared_names(present=present) or label_order(present)

    @classmethod
    def encode_labels(
        cls, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        lookup = label_index(labels, where)
        out = np.full((len(rows), len(labels)), NAN, dtype=np.float32)
        for i, v in enumerate(column_values(rows, where.column, where.source)):
            if not is_missing(v):
                out[i] = 0.0
                for name in as_label_list(v):
                    out[i, lookup(name, i + 1)] = 1.0
        return out

    @classmethod
    def label_counts(cls, values: list[Any]) -> dict[str, int]:
        """Examples that carry each label (an example counts once for each of its labels)."""
        return dict(Counter(name for v in values for name in set(as_label_list(v))).most_common())

    @classmethod
    def fewshot_pairs(cls, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        y = np.asarray(y, dtype=np.float64)
        return fewshot.random_partner_pairs(head, y, cls.fewshot_similarity, iterations, rng)

    @classmethod
    def fewshot_similarity(cls, a: Any, b: Any, span: np.ndarray) -> float:
        """The Jaccard overlap of the two label sets."""
        union = np.sum((a > 0.5) | (b > 0.5))
        return float(np.sum((a > 0.5) & (b > 0.5)) / union) if union else 1.0

    @classmethod
    def auto_class_weights(cls, y: Any, width: int) -> list[float]:
        """BCE's pos_weight per label: negatives / positives (PyTorch's advice), 1 for a label
        that is never or always present."""
        y = np.asarray(y, dtype=np.float64)
        y = y[~np.isnan(y).any(axis=1)]
        positives = y.sum(axis=0)
        negatives = len(y) - positives
        ratio = np.divide(negatives, positives, out=np.ones(width), where=(positives > 0) & (negatives > 0))
        return [round(float(w), 6) for w in ratio]

    def _fewshot_solution(self, features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fewshot.binary_logistic_per_label(features, y)

    def brief(self, prediction: Any) -> str:
        return ", ".join(prediction["labels"]) or "(none)"

    def pipeline_output(self, prediction: Any) -> list[dict[str, Any]]:
        """The labels above their thresholds as {"label", "score"}, most probable first."""
        chosen = [{"label": n, "score": prediction["probs"][n]} for n in prediction["labels"]]
        return sorted(chosen, key=lambda c: -c["score"])

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

    def label_thresholds(self) -> list[float]:
        return self.config.thresholds or [self.config.threshold] * len(self.config.labels)

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[dict[str, Any]]:
        names = self.config.labels
        return [self._decided(dict(zip(names, p, strict=True))) for p in output.float().sigmoid().tolist()]

    def _decided(self, probs: dict[str, float]) -> dict[str, Any]:
        """A prediction from its label probabilities: the labels above their thresholds."""
        names, thresholds = self.config.labels, self.label_thresholds()
        return {"labels": [n for n, t in zip(names, thresholds, strict=True) if probs[n] > t], "probs": probs}

    def calibrate(self, predictions: list[Any], references: list[Any]) -> dict[str, float] | None:
        """Per label, the threshold in 0.05..0.95 with the best validation F1 (ties: nearest the
        default); a label with no positive validation example keeps the default. The given
        predictions are re-decided at the tuned thresholds."""
        preds, refs = labelled(predictions, references)
        if not refs:
            return None
        default = self.config.threshold
        candidates = sorted(np.round(np.arange(0.05, 0.96, 0.05), 2), key=lambda t: abs(t - default))
        tuned = []
        for name in self.config.labels:
            probs = np.array([p["probs"][name] for p in preds])
            truth = np.array([name in r for r in refs])
            if not truth.any():
                tuned.append(default)
                continue
            f1s = [f1_score(truth, probs > t, zero_division=0) for t in candidates]
            tuned.append(float(candidates[int(np.argmax(f1s))]))
        self.config.thresholds = tuned
        for prediction in predictions:
            prediction.update(self._decided(prediction["probs"]))
        return dict(zip(self.config.labels, tuned, strict=True))

    def references(self, labels: Tensor, mask: Tensor | None = None) -> list[list[str] | None]:
        names = self.config.labels
        return [
            None if torch.isnan(row).any() else [n for n, y in zip(names, row.tolist(), strict=True) if y > 0.5]
            for row in labels
        ]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        preds, refs = labelled([p["labels"] for p in predictions], references)
        if not refs:
            return {}
        binarizer = MultiLabelBinarizer(classes=self.config.labels).fit([self.config.labels])
        y_pred, y_true = binarizer.transform(preds), binarizer.transform(refs)
        return {
            "f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        }

    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None:
        preds, refs = labelled([p["labels"] for p in predictions], references)
        if not refs:
            return None
        binarizer = MultiLabelBinarizer(classes=self.config.labels).fit([self.config.labels])
        report = classification_report(
            binarizer.transform(refs),
            binarizer.transform(preds),
            target_names=self.config.labels,
            output_dict=True,
            zero_division=0,
        )
        return report_dict(report)


def _target(value: Any, column: str, row: int) -> float:
    if is_missing(value):
        if value is not None:
            raise DataError(
                f"regression target '{column}' is NaN in row {row}; leave the cell empty for a missing label"
            )
        return NAN
    if isinstance(value, bool):
        raise DataError(f"regression target '{column}' in row {row} is a boolean ({value}); expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"regression target '{column}' in row {row} is not a number: {value!r}; check the label column"
        ) from None
    if not math.isfinite(number):
        raise DataError(
            f"regression target '{column}' is {value!r} in row {row}; leave the cell empty for a missing label"
        )
    return number


class RegressionHead(PooledHead):
    """Regression on 1..K real targets (one per name in `labels`): MSE over present values.

    The label spec names the target columns, comma-separated (`valence,arousal`)."""

    primary_metric = "r2"
    metrics: ClassVar[dict[str, bool]] = {"r2": True, "mse": False, "mae": False}
    label_layout = "vector"
    problem_type = "regression"
    suggested_name = "score"

    @classmethod
    def label_names(cls, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return where.columns()

    @classmethod
    def encode_labels(
        cls, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        columns = where.columns()
        values = [column_values(rows, c, where.source) for c in columns]
        return np.array(
            [[_target(v[i], c, i + 1) for v, c in zip(values, columns, strict=True)] for i in range(len(rows))],
            dtype=np.float32,
        ).reshape(len(rows), len(columns))

    @classmethod
    def fewshot_pairs(cls, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        y = np.asarray(y, dtype=np.float64)
        return fewshot.random_partner_pairs(head, y, cls.fewshot_similarity, iterations, rng)

    @classmethod
    def fewshot_similarity(cls, a: Any, b: Any, span: np.ndarray) -> float:
        """1 - the mean gap between the two targets as a share of each target's range."""
        gap = np.abs(a - b) / span
        return float(1.0 - np.nanmean(gap)) if np.isfinite(gap).any() else 0.5

    def _fewshot_solution(self, features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fewshot.ridge_per_target(features, y)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        labels = labels.reshape(output.shape)
        present = ~torch.isnan(labels)
        n = int(present.any(dim=1).sum())
        if n == 0:
            return zero_loss(output), 0
        return F.mse_loss(output.float()[present], labels.float()[present]), n

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[dict[str, float]]:
        return [dict(zip(self.config.labels, row, strict=True)) for row in output.float().tolist()]

    def references(self, labels: Tensor, mask: Tensor | None = None) -> list[dict[str, float] | None]:
        rows = labels.reshape(labels.shape[0], -1).float().tolist()
        return [
            None if all(np.isnan(v) for v in row) else dict(zip(self.config.labels, row, strict=True)) for row in rows
        ]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        scores: dict[str, list[float]] = {"mse": [], "mae": [], "r2": []}
        for name in self.config.labels:
            pairs = [
                (p[name], r[name])
                for p, r in zip(predictions, references, strict=True)
                if r is not None and not np.isnan(r[name])
            ]
            if len(pairs) < 2:
                continue
            y_pred, y_true = zip(*pairs, strict=True)
            scores["mse"].append(mean_squared_error(y_true, y_pred))
            scores["mae"].append(mean_absolute_error(y_true, y_pred))
            scores["r2"].append(r2_score(y_true, y_pred))
        return {k: float(np.mean(v)) for k, v in scores.items() if v}
