"""The pair layout: two texts per example, each its own row for the head: a preference pair (a
prompt, a chosen and a rejected response; `PairCodec`), or a text and its partner (an anchor and
its positive, and optionally a hard negative: a triplet; `TextPairCodec`).

The texts are the inputs (headkit.data.pairs): a batch of B pairs is 2B rows (triplets 3B), the
first texts first. The label only says the pair is there: (B, 1), 1 or NaN. References give each
row its role and how far away its partner row is, so a metric can pair the rows up.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from headkit.errors import DataError
from headkit.heads.codecs.base import Codec
from headkit.heads.labels import LabelSource, rows_with_labels


class PairCodec(Codec):
    layout = "pair"
    inputs = "pairs"
    multi_row = True
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
    pairs an embedding head learns to put side by side.

    A pair's label is its partner's text as a number (`partner_id`), so that pairs whose partners
    are the same text are known as such: one's partner is no negative for the other in the loss,
    and the metrics rank each distinct partner once (question-to-passage data repeats passages)."""

    suggested_name = "embedding"
    joins = False
    roles = ("anchor", "positive")

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return []

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        """(B, 1): each partner text's id; triplets (B, 2): the positive's and the negative's (the
        texts are checked where they are encoded)."""
        columns = partner_columns(where.column)
        return np.array([[partner_id(row.get(c)) for c in columns] for row in rows], dtype=np.float32)

    def references(
        self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()
    ) -> list[tuple[str, int] | None]:
        """As PairCodec's, each entry with the pair's partner id: (role, offset, id); a triplet's
        negatives (rows 2B..3B-1, when the mask has them) are ("negative", 0, id), for no metric."""
        ids = labels.reshape(labels.shape[0], -1)[:, 0].tolist()
        roles = super().references(labels, mask, unseen)
        pairs = len(ids)
        if mask is not None and pairs and mask.shape[0] == 3 * pairs:
            roles += [None if r is None else ("negative", 0) for r in roles[:pairs]]
        return [None if r is None else (*r, int(ids[i % pairs])) for i, r in enumerate(roles)]  # type: ignore[misc]


def partner_columns(label: str) -> list[str]:
    """A text pair's partner column, or a triplet's positive and negative columns (`POS,NEG`)."""
    columns = [c.strip() for c in label.split(",")]
    if len(columns) > 2 or not all(columns):
        raise DataError(f"text pairs name their partner column (or POSITIVE,NEGATIVE for triplets), not '{label}'")
    return columns


def partner_id(text: Any) -> float:
    """A text as 1 + its CRC-32 modulo 2^24: exact in float32, equal for equal texts (different texts
    share one with a chance of 1 in 16.7 million per pair of them, which costs that pair a negative)."""
    return float(1 + zlib.crc32(str(text).encode("utf-8")) % (1 << 24))
