"""The pair layout: two texts per example, each its own row for the head: a preference pair (a
prompt, a chosen and a rejected response; `PairCodec`), or a text and its partner (an anchor and
its positive; `TextPairCodec`).

The texts are the inputs (headkit.data.pairs): a batch of B pairs is 2B rows, the first texts
first. The label only says the pair is there: (B, 1), 1 or NaN. References give each row its role
and how far away its partner row is, so a metric can pair the rows up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from headkit.heads.codecs.base import Codec
from headkit.heads.labels import LabelSource, rows_with_labels


class PairCodec(Codec):
    layout = "pair"
    inputs = "pairs"
    suggested_name = "reward"
    joins = True  # each row is the prompt (the text column) joined with one response (the two label columns)
    roles = ("chosen", "rejected")  # what the first and the second row of a pair are

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return ["score"]

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        """Every row is a pair to rank (the texts themselves are checked where they are encoded)."""
        return np.ones((len(rows), 1), dtype=np.float32)

    def references(
        self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()
    ) -> list[tuple[str, int] | None]:
        """One entry per row, in the order the head reads them (first rows, then second rows):
        its role and how far away its partner row is; None where the pair has no label."""
        present = rows_with_labels(labels).tolist()
        pairs = len(present)
        first, second = self.roles
        return [(first, pairs) if ok else None for ok in present] + [(second, -pairs) if ok else None for ok in present]


class TextPairCodec(PairCodec):
    """A text (the text column) and its partner (the label column), each read as it is: the
    pairs an embedding head learns to put side by side."""

    suggested_name = "embedding"
    joins = False
    roles = ("anchor", "positive")

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return []
