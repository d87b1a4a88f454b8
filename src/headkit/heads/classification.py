"""Pooled heads: single-label classification, multi-label classification and regression.

All three are `pool -> dropout -> linear`; they differ only in loss, decoding and metric.
Label tensors: single-label (B,) long with -100 for missing; multi-label (B, C) float 0/1 and
regression (B, K) float, NaN for missing values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score
from sklearn.preprocessing import MultiLabelBinarizer
from torch import Tensor, nn

from headkit.heads.base import IGNORE_INDEX, HeadConfig, dropout_linear, labelled, zero_loss
from headkit.heads.pooling import check_pooling, pool


@dataclass
class ClassificationConfig(HeadConfig):
    """`labels` are class names (classification, multilabel) or target names (regression)."""

    type: str = "classification"
    threshold: float = 0.5  # multi-label: a class is predicted when its probability exceeds this
    normalize: bool = False  # L2-normalise the pooled vector first (fewshot: contrastive tuning shapes directions)


class PooledHead(nn.Module):
    """pool -> dropout -> linear; the three types below differ in loss, decode and score."""

    per_token = False

    def __init__(self, config: ClassificationConfig):
        super().__init__()
        config.require_labels(2 if config.type == "classification" else 1)
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


class ClassificationHead(PooledHead):
    """Single-label classification: softmax over `labels`, cross-entropy loss."""

    primary_metric, greater_is_better = "accuracy", True

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


class MultiLabelHead(PooledHead):
    """Multi-label classification: one sigmoid per label, binary cross-entropy, NaN = missing."""

    primary_metric, greater_is_better = "f1_micro", True

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


class RegressionHead(PooledHead):
    """Regression on 1..K real targets (one per name in `labels`): MSE over present values."""

    primary_metric, greater_is_better = "r2", True

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
