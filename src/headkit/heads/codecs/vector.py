"""The vector layout: a row of floats per example, (B, K) with NaN where a value is missing.

Two codecs share it: a label set (multi-label classification: 1/0 per label name) and named
real-valued targets (regression: one column per target). Box coordinates and reward pairs have
codecs of their own (heads/box.py, pair.py), batched the same way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from headkit.data.files import SEQUENCE_TYPES, column_values, is_missing
from headkit.errors import DataError
from headkit.heads import fewshot
from headkit.heads.codecs.base import Codec
from headkit.heads.fewshot import Pair
from headkit.heads.labels import NAN, LabelSource, label_index, label_order, label_values, rows_with_labels


def as_label_list(value: Any) -> list[str]:
    """A multi-label value as its label names: a list as is, a string split at '|' (CSV cells)."""
    if isinstance(value, SEQUENCE_TYPES):
        return [str(v) for v in value]
    return [part for part in str(value).split("|") if part]


class LabelSetCodec(Codec):
    """Any number of labels per example. A label cell is a list (JSONL, Parquet) or names joined
    by '|' (CSV: `drama|comedy`); references are the label names present."""

    layout = "vector"
    class_noun, suggested_name = "label", "labels"

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        values = label_values(rows, where)
        present = {name for v in values if not is_missing(v) for name in as_label_list(v)}
        return where.declared_names(present=present) or label_order(present)

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        """One 1/0 column per label name; labels unseen in training (evaluation data) in columns past them."""
        lookup = label_index(labels, where)
        values = column_values(rows, where.column, where.source)
        ids = [
            None if is_missing(v) else [lookup(name, i + 1) for name in as_label_list(v)] for i, v in enumerate(values)
        ]
        out = np.full((len(rows), len(labels) + len(where.tally.unseen if where.tally else ())), NAN, dtype=np.float32)
        for i, present in enumerate(ids):
            if present is not None:
                out[i] = 0.0
                out[i, present] = 1.0
        return out

    def references(
        self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()
    ) -> list[list[str] | None]:
        names, present = [*self.names, *unseen], rows_with_labels(labels).tolist()
        return [
            [n for n, y in zip(names, row, strict=True) if y > 0.5] if ok else None
            for row, ok in zip(labels.float().tolist(), present, strict=True)
        ]

    def known_labels(self, labels: Tensor) -> Tensor:
        """The columns of the head's own labels (a row whose labels were all unseen: none of them)."""
        return labels[:, : len(self.names)]

    def label_counts(self, values: list[Any]) -> dict[str, int]:
        """Examples that carry each label (an example counts once for each of its labels)."""
        return dict(Counter(name for v in values for name in set(as_label_list(v))).most_common())

    def describe_counts(self, counts: dict[str, int]) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:8])
        return f"{len(counts)} labels (examples with each: {shown})"  # an example counts once per label

    def auto_class_weights(self, y: Any, width: int) -> list[float]:
        """BCE's pos_weight per label: negatives / positives (PyTorch's advice), 1 for a label
        that is never or always present."""
        y = np.asarray(y, dtype=np.float64)
        y = y[~np.isnan(y).any(axis=1)]
        positives = y.sum(axis=0)
        negatives = len(y) - positives
        ratio = np.divide(negatives, positives, out=np.ones(width), where=(positives > 0) & (negatives > 0))
        return [round(float(w), 6) for w in ratio]

    def fewshot_pairs(self, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        y = np.asarray(y, dtype=np.float64)
        return fewshot.random_partner_pairs(head, y, self.fewshot_similarity, iterations, rng)

    def fewshot_similarity(self, a: Any, b: Any, span: np.ndarray) -> float:
        """The Jaccard overlap of the two label sets."""
        union = np.sum((a > 0.5) | (b > 0.5))
        return float(np.sum((a > 0.5) & (b > 0.5)) / union) if union else 1.0


class TargetCodec(Codec):
    """Real-valued targets, one per name in the head's labels: the label spec names the target
    columns, comma-separated (`valence,arousal`); references map each name to its value."""

    layout = "vector"
    suggested_name = "score"

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return where.columns()

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        columns = where.columns()
        values = [column_values(rows, c, where.source) for c in columns]
        return np.array(
            [[_target(v[i], c, i + 1) for v, c in zip(values, columns, strict=True)] for i in range(len(rows))],
            dtype=np.float32,
        ).reshape(len(rows), len(columns))

    def references(
        self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()
    ) -> list[dict[str, float] | None]:
        rows = labels.reshape(labels.shape[0], -1).float().tolist()
        names = self.names
        return [None if all(np.isnan(v) for v in row) else dict(zip(names, row, strict=True)) for row in rows]

    def fewshot_pairs(self, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        y = np.asarray(y, dtype=np.float64)
        return fewshot.random_partner_pairs(head, y, self.fewshot_similarity, iterations, rng)

    def fewshot_similarity(self, a: Any, b: Any, span: np.ndarray) -> float:
        """1 - the mean gap between the two targets as a share of each target's range."""
        gap = np.abs(a - b) / span
        return float(1.0 - np.nanmean(gap)) if np.isfinite(gap).any() else 0.5


def _target(value: Any, column: str, row: int) -> float:
    if is_missing(value):
        if value is not None:
            raise DataError(
                f"regression target '{column}' is NaN in row {row}; leave the cell empty for a missing label"
            )
        return NAN
    if isinstance(value, bool):
        raise DataError(f"regression target '{column}' in row {row} is a boolean ({value}); expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"regression target '{column}' in row {row} is not a number: {value!r}; check the label column"
        ) from None
    if not math.isfinite(number):
        raise DataError(
            f"regression target '{column}' is {value!r} in row {row}; leave the cell empty for a missing label"
        )
    return number
