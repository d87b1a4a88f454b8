"""Multiple-choice heads: one score per (context, choice), softmax over an example's choices.

As `AutoModelForMultipleChoice` (SWAG, RACE, ARC, HellaSwag): every (context, choice) pair is
read as one sentence pair by the backbone, pooled and scored by one linear layer; the scores of
an example's N choices are its logits, trained with cross-entropy against the right choice. A
batch of B examples arrives as N x B rows, every example's first choice first (heads/codecs/
choice.py). On pooling `pooler` (BERT's tanh pooler, as transformers' classes read it) the head
is exactly transformers' and exports to it; `model.rank(context, choices)` scores any number of
choices at prediction time, and predict / serve / ONNX score each (context, choice) pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from headkit.errors import HeadConfigError
from headkit.heads.base import zero_loss
from headkit.heads.codecs.choice import ChoiceCodec
from headkit.heads.export import ExportSpec
from headkit.heads.labels import IGNORE_INDEX
from headkit.heads.mlp import MLPConfig
from headkit.heads.reward import ScoreHead
from headkit.heads.scoring import Scoring, same_score


@dataclass(frozen=True)
class MultipleChoiceConfig(MLPConfig):
    type: str = "multiple-choice"


def choice_logits(output: Tensor, examples: int) -> Tensor:
    """(N x B,) row scores, choice-major -> (B, N) logits, one row per example."""
    if examples == 0 or output.shape[0] % examples:
        raise HeadConfigError(
            f"a multiple-choice head scores N choices per example: {output.shape[0]} rows do not split into "
            f"{examples} examples"
        )
    return output.reshape(output.shape[0] // examples, examples).T


class ChoiceScores(Scoring):
    """Predictions are one score per row; each example's first row's reference gathers its choices."""

    primary = "accuracy"
    metrics: ClassVar[dict[str, bool]] = {"accuracy": True}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        right = [int(np.argmax(scores)) == answer for scores, answer in _examples(predictions, references)]
        return {"accuracy": float(np.mean(right))} if right else {}

    def same_decision(self, a: Any, b: Any) -> bool:
        return same_score(a, b)

    def chance(self, references: list[Any]) -> dict[str, float]:
        """Always the most frequent answer position."""
        answers = [ref[1] for ref in references if ref is not None and ref[0] == "answer"]
        return {"accuracy": float(np.bincount(answers).max() / len(answers))} if answers else {}


def _examples(predictions: list[Any], references: list[Any]) -> list[tuple[list[float], int]]:
    """(the choices' scores, the right position) of every labelled example."""
    return [
        ([predictions[i + k * ref[2]] for k in range(ref[3])], ref[1])
        for i, ref in enumerate(references)
        if ref is not None and ref[0] == "answer"
    ]


def one_choice_each(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rows (R, T) as transformers' (batch, choices, T) layout: R examples of one choice each, whose
    logits are the rows' scores."""
    return {k: v.unsqueeze(1) for k, v in inputs.items()}


def row_scores(out: Any) -> Tensor:
    return out.logits.reshape(-1)


class MultipleChoiceHead(ScoreHead):
    """One score per (context, choice) row; cross-entropy over each example's choices."""

    codec = ChoiceCodec()
    scoring = ChoiceScores()
    export = ExportSpec(
        "AutoModelForMultipleChoice", "multiple-choice", ("ForMultipleChoice",), feed=one_choice_each, read=row_scores
    )

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        logits = choice_logits(output, labels.shape[0])
        n = int((labels != IGNORE_INDEX).sum())
        if n == 0:
            return zero_loss(output), 0
        return F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX), n
