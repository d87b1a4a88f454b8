"""Regression on 1..K real targets (one per name in `labels`): MSE over present values.

The label spec names the target columns, comma-separated (`valence,arousal`); a missing value is
NaN in the (B, K) label tensor and counts in no loss or metric.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from headkit.heads.base import zero_loss
from headkit.heads.classification import PooledHead, sequence_classification
from headkit.heads.codecs import TargetCodec
from headkit.heads.fewshot import FewShot, ridge_per_target
from headkit.heads.scoring import Scoring


class TargetScores(Scoring):
    """Per target (its pairs with a reference; 2 at least), then the mean over the targets."""

    primary = "r2"
    metrics: ClassVar[dict[str, bool]] = {"r2": True, "mse": False, "mae": False}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        scores: dict[str, list[float]] = {"mse": [], "mae": [], "r2": []}
        for name in self.names:
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

    def chance(self, references: list[Any]) -> dict[str, float]:
        """R² of always answering the references' own mean: 0 (no constant answer does better)."""
        return {"r2": 0.0}


class RegressionHead(PooledHead):
    codec = TargetCodec()
    scoring = TargetScores()
    export = sequence_classification("regression")
    fewshot = FewShot(ridge_per_target)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        labels = labels.reshape(output.shape)
        present = ~torch.isnan(labels)
        n = int(present.any(dim=1).sum())
        if n == 0:
            return zero_loss(output), 0
        return F.mse_loss(output.float()[present], labels.float()[present]), n

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[dict[str, float]]:
        return [dict(zip(self.config.labels, row, strict=True)) for row in output.float().tolist()]
