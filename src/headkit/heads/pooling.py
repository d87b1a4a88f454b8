"""Sequence pooling: (B, T, H) hidden states + (B, T) mask -> (B, H).

Every method respects the attention mask, so padding never leaks into the pooled vector, and
`last` finds the last real token for both right- and left-padded batches (decoder models).
`cls` reads each text's first real token (its [CLS] / <s>), also when the batch is left-padded.
`pooler` is the backbone's own pooling layer (BERT: tanh(dense(h_[CLS]))), which is what
`BertForSequenceClassification` classifies; it lives in the backbone, so `MultiHeadModel.pool`
computes it, and heads that use it export exactly to a plain transformers model.
`auto` (every pooled head's default) is resolved when a head joins a backbone
(`MultiHeadModel.add_head`, from `backbone_outputs.family_pooling` or the checkpoint's own
sentence-transformers pooling) and the resolved method is what heads.json records.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from headkit.choices import Pooling
from headkit.errors import HeadConfigError

POOLING_METHODS: tuple[str, ...] = get_args(Pooling)


def pool(hidden: Tensor, mask: Tensor, method: str) -> Tensor:
    """Pool hidden states over the sequence dimension with the named method."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if method == "cls":
        return hidden[rows, first_real_position(mask)]
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    if method == "mean":
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    if method == "max":
        masked = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min)
        return masked.max(dim=1).values
    if method == "last":
        return hidden[rows, last_real_position(mask)]
    if method == "pooler":
        raise HeadConfigError("'pooler' pooling runs the backbone's pooling layer: use MultiHeadModel.pool")
    if method == "auto":
        raise HeadConfigError(
            "pooling 'auto' is resolved when the head joins a backbone (MultiHeadModel.add_head); "
            f"to use a head on its own, name a method: {[m for m in POOLING_METHODS if m != 'auto']}"
        )
    raise HeadConfigError(f"unknown pooling '{method}'; choose one of {list(POOLING_METHODS)}")


def check_pooling(method: str) -> None:
    if method not in POOLING_METHODS:
        raise HeadConfigError(f"unknown pooling '{method}'; choose one of {list(POOLING_METHODS)}")


def last_real_position(mask: Tensor) -> Tensor:
    """(B,) index of each row's last real (mask 1) position, whichever side it is padded on (0 for a
    row with no real position)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)


def first_real_position(mask: Tensor) -> Tensor:
    """(B,) index of each row's first real (mask 1) position: 0 when right-padded, k when a
    left-padded row starts with k pads (and 0 for a row with no real position)."""
    return mask.long().argmax(dim=1)
