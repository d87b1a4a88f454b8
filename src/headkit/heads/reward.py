"""Reward heads: one scalar score per sequence, trained on preference pairs.

The Bradley–Terry model (as in InstructGPT's reward model and TRL's RewardTrainer) says the
chosen response beats the rejected one with probability sigmoid(r_chosen - r_rejected), so the
loss is -log sigmoid(r_chosen - r_rejected) per pair. A batch of B pairs arrives as 2B scored
rows, the chosen ones first (headkit.data.pairs, collate). The metric is the share of pairs the
head ranks right. At prediction time a reward head scores each text given (a prompt and a
response joined as the user likes), like any other pooled head, so it exports to ONNX and serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from headkit.errors import HeadConfigError
from headkit.heads.base import HeadBase, zero_loss
from headkit.heads.codecs import PairCodec
from headkit.heads.labels import rows_with_labels
from headkit.heads.mlp import MLPConfig, output_layers
from headkit.heads.pooling import check_pooling
from headkit.heads.presentation import View
from headkit.heads.scoring import Scoring, same_score


@dataclass(frozen=True)
class RewardConfig(MLPConfig):
    type: str = "reward"
    # auto: on a decoder the last real token, the one that has read the whole sequence (heads/pooling.py)
    pooling: str = "auto"
    dropout: float = 0.0


class PairScores(Scoring):
    """Predictions are one score per scored row; references pair each chosen row with its rejected one."""

    primary = "pair_accuracy"
    metrics: ClassVar[dict[str, bool]] = {"pair_accuracy": True, "mean_margin": True}

    def same_decision(self, a: Any, b: Any) -> bool:
        return same_score(a, b)

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        margins = [
            predictions[i] - predictions[i + ref[1]]
            for i, ref in enumerate(references)
            if ref is not None and ref[0] == "chosen"
        ]
        if not margins:
            return {}
        return {
            "pair_accuracy": float(np.mean([m > 0 for m in margins])),
            "mean_margin": float(np.mean(margins)),
        }


class ScoreView(View):
    """One score per input, {"score"}: what `model.rank` orders a query's candidates by."""

    gives_scores = True

    def probabilities(self, scores: list[float]) -> list[float]:
        """What `model.rank` reports as each candidate's probability: softmax over the candidates
        (a choice among them; a cross-encoder reads each score alone)."""
        values = np.array(scores, dtype=np.float64)
        weights = np.exp(values - values.max())
        return (weights / weights.sum()).tolist()

    def for_text(self, prediction: Any, encoding: Any, text: str) -> Any:
        return {"score": prediction}

    def brief(self, prediction: Any) -> str:
        return f"score {prediction['score']:.4f}"


class ScoreHead(HeadBase):
    """pool -> dropout -> linear (or an MLP) to one score per row: what reward and multiple-choice
    heads compute; they differ in how rows are paired or grouped for the loss."""

    view = ScoreView()

    def __init__(self, config: MLPConfig):
        super().__init__()
        check_pooling(config.pooling)
        self.config: MLPConfig = config
        assert config.input_size is not None  # build_head refuses a config without it
        self.scorer = output_layers(config, 1)

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        return self.scorer(pooled).squeeze(-1).float()  # (rows,)

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[float]:
        return output.float().tolist()


class RewardHead(ScoreHead):
    """One score per text; Bradley–Terry loss on (chosen, rejected) pairs."""

    codec = PairCodec()
    scoring = PairScores()

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        pairs = labels.shape[0]
        if output.shape[0] != 2 * pairs:
            raise HeadConfigError(
                f"a reward head trains on preference pairs (2 x {pairs} scored rows), got {output.shape[0]} rows"
            )
        present = rows_with_labels(labels)
        n = int(present.sum())
        if n == 0:
            return zero_loss(output), 0
        margin = output[:pairs][present] - output[pairs:][present]
        return -F.logsigmoid(margin).mean(), n
