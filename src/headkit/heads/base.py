"""The head contract.

A head is a plain `nn.Module` that turns the backbone's hidden states into its output. It is
fully described by a small config dataclass (serialised into `heads.json`), and it knows its
own loss and metric, so `MultiHeadModel` and the training loop treat every head the same:

    output = head(hidden, mask)            # hidden: (B, T, H), mask: (B, T) of 0/1
    loss, n = head.loss(output, labels, mask)  # mean over the n labelled examples; n == 0 -> loss 0
    preds = head.decode(output, mask)      # one JSON-friendly prediction per example
    refs = head.references(labels, mask)   # labels in the same per-example form (None = missing)
    scores = head.score(preds, refs)       # {"accuracy": ...} via scikit-learn / seqeval

Missing labels (None in data, -100 / NaN in tensors) never contribute to a loss, and a batch
with no labels for a head returns a zero loss that still has a graph, never NaN.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from headkit.errors import HeadConfigError

IGNORE_INDEX = -100


@dataclass
class HeadConfig:
    """Fields every head has. Head families add their own fields in a subclass."""

    type: str
    input_size: int | None = None  # filled from the backbone's hidden size when None
    labels: list[str] = field(default_factory=list)
    pooling: str = "cls"
    dropout: float = 0.1
    loss_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HeadConfigError(
                f"unknown field(s) {unknown} for a '{data.get('type')}' head; expected some of {sorted(known)}"
            )
        return cls(**data)

    def require_labels(self, minimum: int) -> None:
        if len(self.labels) < minimum:
            raise HeadConfigError(
                f"a '{self.type}' head needs at least {minimum} label name(s) in `labels`, got {self.labels}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise HeadConfigError(f"duplicate label names in {self.labels}")


class Head(Protocol):
    """What `MultiHeadModel` and the trainer rely on. Heads are nn.Modules with these methods."""

    config: HeadConfig
    per_token: bool  # True: works on every position (no pooling); False: on one pooled vector

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor: ...
    def loss(self, output: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, int]: ...
    def decode(self, output: Tensor, mask: Tensor) -> list[Any]: ...
    def references(self, labels: Tensor, mask: Tensor) -> list[Any]: ...
    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]: ...


def zero_loss(output: Tensor) -> Tensor:
    """A zero that keeps the autograd graph, for batches with no labels for a head.

    Masked logits hold huge negative values whose sum overflows to -inf (and -inf * 0 is NaN),
    so entries are zeroed before summing, non-finite ones included.
    """
    return (torch.where(torch.isfinite(output), output, 0.0) * 0.0).sum()


def labelled(predictions: list[Any], references: list[Any]) -> tuple[list[Any], list[Any]]:
    """Keep only the examples that have a reference label."""
    pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
    return [p for p, _ in pairs], [r for _, r in pairs]


def rows_with_labels(labels: Tensor) -> Tensor:
    """Boolean (B,) mask of rows whose float labels are all present (no NaN)."""
    return ~torch.isnan(labels.float()).reshape(labels.shape[0], -1).any(dim=1)


def dropout_linear(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    """The standard classifier: dropout then one linear layer (as in BERT's task heads)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))
