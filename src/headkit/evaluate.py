"""Evaluation: every head's metrics on a dataset, from one backbone pass per batch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from headkit.data import EncodedData, LengthGroupedBatches, collate
from headkit.features import FeatureCache
from headkit.model import MultiHeadModel


@dataclass
class Evaluation:
    scores: dict[str, dict[str, float]]  # head -> metric -> value
    losses: dict[str, float]  # head -> mean loss over labelled examples
    predictions: dict[str, list[Any]] = field(default_factory=dict)
    references: dict[str, list[Any]] = field(default_factory=dict)

    def objective(self, model: MultiHeadModel) -> float:
        """One number to select checkpoints by: the mean primary metric, sign-adjusted (higher is better)."""
        values = []
        for name, head in model.heads.items():
            value = self.scores.get(name, {}).get(head.primary_metric)
            if value is not None:
                values.append(value if head.greater_is_better else -value)
        return sum(values) / len(values) if values else -math.inf


@torch.no_grad()
def evaluate(
    model: MultiHeadModel,
    data: EncodedData,
    pad_id: int,
    batch_size: int = 64,
    cache: FeatureCache | None = None,
) -> Evaluation:
    """Decode every head on `data` and score it against the labels (missing labels skipped)."""
    was_training = model.training
    model.eval()
    head_types = {n: h.config.type for n, h in model.heads.items()}
    widths = {n: len(h.config.labels) for n, h in model.heads.items()}
    preds: dict[str, list[Any]] = {n: [] for n in model.heads}
    refs: dict[str, list[Any]] = {n: [] for n in model.heads}
    loss_sums: dict[str, float] = {n: 0.0 for n in model.heads}
    counts: dict[str, int] = {n: 0 for n in model.heads}
    device = model.device
    for indices in LengthGroupedBatches(data.lengths(), batch_size, seed=0, shuffle=False).batches():
        batch = collate([data[i] for i in indices], pad_id, head_types, widths)
        labels = {k: v.to(device) for k, v in batch["labels"].items()}
        if cache is not None:
            hidden, mask, pooled = cache.batch(batch["index"])
            hidden = hidden.to(device) if hidden is not None else None
            out = model.forward_heads(
                hidden, mask.to(device), labels, pooled={k: v.to(device) for k, v in pooled.items()}
            )
        else:
            out = model(
                labels=labels,
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            )
        for name, head in model.heads.items():
            preds[name] += head.decode(out.outputs[name], out.mask)
            refs[name] += head.references(labels[name], out.mask)
            if name in out.losses:
                loss_sums[name] += float(out.losses[name]) * out.counts[name]
                counts[name] += out.counts[name]
    model.train(was_training)
    scores = {n: h.score(preds[n], refs[n]) for n, h in model.heads.items()}
    losses = {n: loss_sums[n] / counts[n] for n in model.heads if counts[n]}
    for name, head in model.heads.items():
        if head.config.type in ("masked-lm", "causal-lm") and name in losses:
            scores[name]["perplexity"] = math.exp(min(losses[name], 50))
    return Evaluation(scores, losses, preds, refs)
