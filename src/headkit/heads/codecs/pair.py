"""The pair layout: one preference pair per example (a prompt, a chosen and a rejected response).

The texts are the inputs (headkit.data.pairs): a batch of B pairs is 2B scored rows, the chosen
ones first. The label only says the pair is to be ranked: (B, 1), 1 or NaN. References give each
scored row its role and how far away its partner row is, so a metric can pair the scores up.
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
        """One entry per scored row, in the order the head scores them (chosen rows, then rejected
        rows): its role and how far away its partner row is; None where the pair has no label."""
        present = rows_with_labels(labels).tolist()
        pairs = len(present)
        return [("chosen", pairs) if ok else None for ok in present] + [
            ("rejected", -pairs) if ok else None for ok in present
        ]
