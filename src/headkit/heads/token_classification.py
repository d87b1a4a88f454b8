"""Token classification (NER, POS): one label per token, no pooling.

Labels are (B, T) long with -100 at positions that carry no label (padding, special tokens,
continuation sub-words); an example whose positions are all -100 is missing for this head.
Predictions and references are per-example tag lists over real (mask == 1) positions, with None
where the reference has no label, so `score` can align them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from seqeval.metrics import accuracy_score as seq_accuracy
from seqeval.metrics import f1_score as seq_f1
from seqeval.metrics import precision_score, recall_score
from sklearn.metrics import accuracy_score, f1_score
from torch import Tensor, nn

from headkit.heads.base import IGNORE_INDEX, HeadConfig, dropout_linear, zero_loss


@dataclass
class TokenClassificationConfig(HeadConfig):
    """`labels` are tag names; BIO tags (`B-PER`, `I-PER`, `O`) are scored entity-level by seqeval."""

    type: str = "token-classification"
    pooling: str = "none"
    normalize: bool = False  # L2-normalise each token vector first (fewshot: contrastive tuning shapes directions)


def is_bio(tags: list[str]) -> bool:
    return all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in tags)


class TokenClassificationHead(nn.Module):
    per_token = True
    primary_metric, greater_is_better = "f1", True

    def __init__(self, config: TokenClassificationConfig):
        super().__init__()
        config.require_labels(2)
        self.config = config
        self.classifier = dropout_linear(config.input_size, len(config.labels), config.dropout)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.config.normalize:
            hidden = F.normalize(hidden.float(), dim=-1).to(hidden.dtype)
        return self.classifier(hidden)  # (B, T, C)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        n = int((labels != IGNORE_INDEX).any(dim=1).sum())
        if n == 0:
            return zero_loss(output), 0
        loss = F.cross_entropy(output.float().flatten(0, 1), labels.long().flatten(), ignore_index=IGNORE_INDEX)
        return loss, n

    def decode(self, output: Tensor, mask: Tensor) -> list[list[str]]:
        names = self.config.labels
        ids = output.argmax(-1).tolist()
        lengths = mask.sum(dim=1).tolist()
        return [[names[i] for i in row[: int(n)]] for row, n in zip(ids, lengths, strict=True)]

    def references(self, labels: Tensor, mask: Tensor) -> list[list[str | None] | None]:
        names = self.config.labels
        refs: list[list[str | None] | None] = []
        for row, n in zip(labels.tolist(), mask.sum(dim=1).tolist(), strict=True):
            tags = [None if y == IGNORE_INDEX else names[y] for y in row[: int(n)]]
            refs.append(None if all(t is None for t in tags) else tags)
        return refs

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        y_pred, y_true = [], []
        for pred, ref in zip(predictions, references, strict=True):
            if ref is None:
                continue
            kept = [(p, r) for p, r in zip(pred, ref, strict=False) if r is not None]
            y_pred.append([p for p, _ in kept])
            y_true.append([r for _, r in kept])
        if not y_true:
            return {}
        if is_bio(self.config.labels):
            return {
                "f1": float(seq_f1(y_true, y_pred, zero_division=0)),
                "precision": float(precision_score(y_true, y_pred, zero_division=0)),
                "recall": float(recall_score(y_true, y_pred, zero_division=0)),
                "accuracy": float(seq_accuracy(y_true, y_pred)),
            }
        flat_true = [t for seq in y_true for t in seq]
        flat_pred = [t for seq in y_pred for t in seq]
        return {
            "f1": float(f1_score(flat_true, flat_pred, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(flat_true, flat_pred)),
        }
