"""Pooled heads: single-label classification, multi-label classification and regression.

All three are `pool -> dropout -> linear`; they differ only in loss, decoding and metric.
Label tensors: single-label (B,) long with -100 for missing; multi-label (B, C) float 0/1 and
regression (B, K) float, NaN for missing values.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score
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
    dropout_linear,
    label_index,
    label_values,
    labelled,
    set_label_maps,
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
    normalize: bool = False  # L2-normalise the pooled vector first (fewshot: contrastive tuning shapes directions)


class PooledHead(HeadBase):
    """pool -> dropout -> linear; the three types below differ in labels, loss, decode and score."""

    min_labels = 1
    fewshot = True
    export_target = SEQUENCE_CLASSIFICATION
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

    primary_metric, greater_is_better = "accuracy", True
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
        if len(distinct) < 2:
            raise DataError(
                f"column '{where.column}' of {where.source} has a single class {sorted(distinct)}; "
                "a classifier needs at least 2"
            )
        return sorted(distinct)

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

    def _fewshot_solution(self, features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = y != IGNORE_INDEX
        return fewshot.logistic(features[keep], y[keep], len(self.config.labels))

    def brief(self, prediction: Any) -> str:
        return f"{prediction['label']} ({prediction['probs'][prediction['label']]:.2f})"

    def table_cells(self, prediction: Any) -> dict[str, Any]:
        return {"": prediction["label"], **{f".p.{k}": round(v, 6) for k, v in prediction["probs"].items()}}

    def class_decisions(self, predictions: list[Any], references: list[Any]) -> tuple[list, list] | None:
        preds, refs = labelled([p["label"] for p in predictions], references)
        return refs, preds

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        n = int((labels != IGNORE_INDEX).sum())
        if n == 0:
            return zero_loss(output), 0
        return F.cross_entropy(output.float(), labels.long(), ignore_index=IGNORE_INDEX), n

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


def as_label_list(value: Any) -> list[str]:
    """A multi-label value as its label names: a list as is, a string split at '|' (CSV cells)."""
    if isinstance(value, SEQUENCE_TYPES):
        return [str(v) for v in value]
    return [part for part in str(value).split("|") if part]


class MultiLabelHead(PooledHead):
    """Multi-label classification: one sigmoid per label, binary cross-entropy, NaN = missing.

    A label cell is a list (JSONL, Parquet) or names joined by '|' (CSV: `drama|comedy`)."""

    primary_metric, greater_is_better = "f1_micro", True
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
        return sorted({name for v in values if not is_missing(v) for name in as_label_list(v)})

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
        def jaccard(a: np.ndarray, b: np.ndarray, span: np.ndarray) -> float:
            union = np.sum((a > 0.5) | (b > 0.5))
            return float(np.sum((a > 0.5) & (b > 0.5)) / union) if union else 1.0

        return fewshot.random_partner_pairs(head, np.asarray(y, dtype=np.float64), jaccard, iterations, rng)

    def _fewshot_solution(self, features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fewshot.binary_logistic_per_label(features, y)

    def brief(self, prediction: Any) -> str:
        return ", ".join(prediction["labels"]) or "(none)"

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        present = ~torch.isnan(labels)
        n = int(present.any(dim=1).sum())
        if n == 0:
            return zero_loss(output), 0
        loss = F.binary_cross_entropy_with_logits(output.float()[present], labels.float()[present], reduction="mean")
        return loss, n

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[dict[str, Any]]:
        names, threshold = self.config.labels, self.config.threshold
        return [
            {
                "labels": [n for n, q in zip(names, p, strict=True) if q > threshold],
                "probs": dict(zip(names, p, strict=True)),
            }
            for p in output.float().sigmoid().tolist()
        ]

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

    primary_metric, greater_is_better = "r2", True
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
        def closeness(a: np.ndarray, b: np.ndarray, span: np.ndarray) -> float:
            gap = np.abs(a - b) / span
            return float(1.0 - np.nanmean(gap)) if np.isfinite(gap).any() else 0.5

        return fewshot.random_partner_pairs(head, np.asarray(y, dtype=np.float64), closeness, iterations, rng)

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
