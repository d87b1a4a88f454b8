"""The index layout: one class per example, (B,) class ids with IGNORE_INDEX for a missing label.

Single-label classification uses it, and so can any head that picks one class per example (a
cosine classifier, a prototype head): the label map, the encoding, the references as class
names, the class balance, balanced class weights and SetFit's class pairs all follow from it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from headkit.data.files import column_values, is_missing
from headkit.errors import DataError
from headkit.heads import fewshot
from headkit.heads.codecs.base import Codec
from headkit.heads.fewshot import Pair
from headkit.heads.labels import (
    IGNORE_INDEX,
    LabelSource,
    label_index,
    label_name,
    label_order,
    label_values,
)


class IndexCodec(Codec):
    layout = "index"

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        """Sorted distinct values; lists, free text and a single class are refused here, where the
        column is read, instead of becoming a confusing label map."""
        present = [v for v in label_values(rows, where) if not is_missing(v)]
        nested = next((v for v in present if isinstance(v, list | dict)), None)
        if nested is not None:
            raise DataError(
                f"column '{where.column}' of {where.source} holds a {type(nested).__name__} ({nested!r}); a "
                "classification label must be one value (use type multilabel for lists of labels)"
            )
        distinct = {str(v) for v in present}
        if len(distinct) > max(50, len(present) // 2):
            raise DataError(
                f"column '{where.column}' of {where.source} has {len(distinct)} distinct values in {len(present)} "
                "rows: it looks continuous or free text, not class labels. Use type regression, or another column."
            )
        declared = where.declared_names(present=distinct)
        if declared is not None:
            return declared  # the dataset's own order (ClassLabel names)
        if len(distinct) < 2:
            raise DataError(
                f"column '{where.column}' of {where.source} has a single class {sorted(distinct)}; "
                "a classifier needs at least 2"
            )
        return label_order(distinct)

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        lookup = label_index(labels, where)
        out = np.full(len(rows), IGNORE_INDEX, dtype=np.int64)
        for i, v in enumerate(column_values(rows, where.column, where.source)):
            if not is_missing(v):
                out[i] = lookup(str(v), i + 1)
        return out

    def references(self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()) -> list[str | None]:
        names = self.names
        return [None if int(y) == IGNORE_INDEX else label_name(names, unseen, int(y)) for y in labels]

    def label_counts(self, values: list[Any]) -> dict[str, int]:
        return dict(Counter(str(v) for v in values).most_common())

    def auto_class_weights(self, y: Any, width: int) -> list[float]:
        y = np.asarray(y)
        return balanced_weights(np.bincount(y[y != IGNORE_INDEX], minlength=width))

    def fewshot_pairs(self, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        return fewshot.class_pairs(head, np.asarray(y), iterations, rng)

    def fewshot_similarity(self, a: Any, b: Any, span: np.ndarray) -> float:
        return float(a == b)


def balanced_weights(counts: np.ndarray) -> list[float]:
    """scikit-learn's "balanced" class weights, n / (k * count); a class never seen weighs 1."""
    counts = np.asarray(counts, dtype=np.float64)
    seen = counts > 0
    weights = np.ones_like(counts)
    weights[seen] = counts[seen].sum() / (seen.sum() * counts[seen])
    return [round(float(w), 6) for w in weights]
