"""Evaluation: every head's metrics on a dataset, from one backbone pass per batch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from headkit.data.batching import EncodedData, LengthGroupedBatches, collate, model_inputs
from headkit.model import MultiHeadModel
from headkit.training.features import FeatureCache


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
    make_batch: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> Evaluation:
    """Decode every head on `data` and score it against the labels (missing labels skipped).

    `make_batch` builds a batch from examples (default: padding + labels); it must be
    deterministic so that two evaluations are comparable (pretraining masks with a fixed seed).
    """
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
        examples = [data[i] for i in indices]
        batch = make_batch(examples) if make_batch else collate(examples, pad_id, head_types, widths)
        labels = {k: v.to(device) for k, v in batch["labels"].items()}
        if cache is not None:
            hidden, mask, pooled = cache.batch(batch["index"])
            hidden = {layer: h.to(device) for layer, h in hidden.items()} if hidden is not None else None
            out = model.forward_heads(
                hidden, mask.to(device), labels, pooled={k: v.to(device) for k, v in pooled.items()}
            )
        else:
            out = model(labels=labels, **model_inputs(batch, device))
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
        if name in losses:
            scores[name].update(head.scores_from_loss(losses[name]))
    return Evaluation(scores, losses, preds, refs)


def evaluate_dataset(
    model: MultiHeadModel,
    processor,
    data: str,
    columns: dict[str, str] | None = None,
    text: str = "text",
    max_length: int = 128,
    batch_size: int = 64,
) -> tuple[Evaluation, int]:
    """Score a trained model on labelled data with the label maps saved at training time.

    `columns` maps head -> label column (default: a column named like the head, else 'label').
    Returns the evaluation and the number of examples. Unseen labels raise a `DataError`.
    """
    from headkit.backbone import max_input_tokens
    from headkit.data.readers import read_rows
    from headkit.data.tasks import TaskSpec, prepare
    from headkit.errors import HeadkitError

    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(model.heads))
    if unknown:
        raise HeadkitError(f"heads {unknown} are not heads of this model: {list(model.heads)}")
    if not columns:
        first = read_rows(data)[0]
        columns = {n: n if n in first else "label" for n in model.heads}
    tasks = [TaskSpec(n, data, label=c, text=text, type=model.heads[n].config.type) for n, c in columns.items()]
    label_maps = {n: model.heads[n].config.labels for n in columns}
    limit = max_input_tokens(model.backbone.config, processor, max_length)
    prepared = prepare(tasks, processor, limit, val_fraction=0.0, label_maps=label_maps)
    pad_id = getattr(processor, "pad_token_id", None) or 0  # image processors have none
    return evaluate(model, prepared.train, pad_id, batch_size=batch_size), len(prepared.train)
