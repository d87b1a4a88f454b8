"""The label codec every layout's codec starts from: what a head type knows about its labels.

A codec reads a head's labels from table rows (`label_names`, `encode_labels`, `tokenize_labels`),
joins and batches them in its `layout` (`concat`, `collate`), turns a batch back into per-example
references in the form `decode` gives predictions (`references`), and knows what follows from
the layout: class counts for advice, `class_weights: auto`, few-shot pairs. This base is the
codec of a head that is not trained from table files (a language-model or CTC head); the codecs
of the layouts (index.py, vector.py, per_token.py, sequence.py, pair.py) override what applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from headkit.errors import DataError, HeadConfigError
from headkit.heads.fewshot import Pair
from headkit.heads.labels import IGNORE_INDEX, NAN, Inputs, LabelLayout, LabelSource
from headkit.heads.part import Part


class Codec(Part):
    layout: LabelLayout | None = None  # None: not trained from table files
    inputs: Inputs = "text"  # what the training rows hold
    # an example is several rows of a batch (a pair of texts, a context's choices); a head beside
    # such a head, one example per row, reads each example's first row (MultiHeadModel.forward_heads)
    multi_row: bool = False
    needs_text_pair: bool = False  # each row is a pair of texts (`text_pair` names the second column)
    crop_ok: bool = True  # False: labels are image positions, so images are never centre-cropped
    class_noun: str = "class"  # what one label is called in advice ("class", "label", "target")
    suggested_name: str = "label"  # the head name advise writes in the commands it prints

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        """The label map, inferred from the training rows (sorted, so it is deterministic)."""
        raise DataError(f"head '{where.head}': its head type cannot be trained from table files yet")

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> Any:
        """Raw column values -> this head's label array, in its `layout`."""
        raise DataError(f"head '{where.head}': its head type cannot be trained from table files yet")

    def tokenize_labels(self, y: Any, processor: Any, where: LabelSource) -> Any:
        """Labels that are text (seq2seq targets) -> token ids with the run's tokenizer; others as they are."""
        return y

    def label_column(self, column: str) -> str:
        """The column a task's `label` setting reads (the default, "label", may mean another)."""
        return column

    def references(self, labels: Tensor, mask: Tensor, unseen: Sequence[str] = ()) -> list[Any]:
        """A batch's labels as one reference per example, in the form `decode` gives predictions
        (None where the example has no label), for the head's metrics. `unseen`: the names of the
        ids past the head's labels (evaluation data with labels training never had)."""
        raise NotImplementedError(f"{type(self).__name__} has no references")

    def known_labels(self, labels: Tensor) -> Tensor:
        """A batch's labels as the loss reads them: those unseen in training (ids past the head's
        labels, in evaluation data: `labels.label_index`) made missing, as the head has no output
        for them. Class ids (index, per_token) past the labels become IGNORE_INDEX."""
        if self.layout in ("index", "per_token"):
            return labels.masked_fill(labels >= len(self.names), IGNORE_INDEX)
        return labels

    def label_counts(self, values: list[Any]) -> dict[str, int]:
        """How many examples carry each label (advise's class balance); {} for labels without classes."""
        return {}

    def describe_counts(self, counts: dict[str, int]) -> str:
        """`label_counts` in a few words, e.g. "2 classes (fresh 235, rotten 165)"."""
        shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:8])
        return f"{len(counts)} {self.class_noun}{'es' if self.class_noun.endswith('s') else 's'} ({shown})"

    def auto_class_weights(self, y: Any, width: int) -> list[float] | None:
        """`class_weights: auto` from the encoded training labels `y` (`width` classes): one loss
        weight per label, inverse to its frequency. None: these labels have no classes to weigh."""
        return None

    def fewshot_pairs(self, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        """Contrastive pairs for few-shot tuning (2 per labelled example and iteration)."""
        raise HeadConfigError(f"strategy fewshot cannot train head '{head}': use frozen, lora or full")

    def fewshot_similarity(self, a: Any, b: Any, span: np.ndarray) -> float | None:
        """How alike two examples' labels are, in [0, 1] (`span`: each label column's range), for
        few-shot's all-pairs steps; None for labels without one (per-token labels pair tokens,
        not examples, and keep the pairs of `fewshot_pairs`)."""
        return None

    def concat(self, parts: list[Any | None], sizes: list[int]) -> Any:
        """The labels of several sources joined; a source without this head's labels (None)
        adds `size` missing ones."""
        if self.layout in ("per_token", "sequence"):  # lists of their own lengths
            return [y for part, n in zip(parts, sizes, strict=True) for y in (part if part is not None else [None] * n)]
        have = next(p for p in parts if p is not None)
        fill = IGNORE_INDEX if self.layout == "index" else NAN
        missing = [np.full((n, *have.shape[1:]), fill, have.dtype) for n in sizes]
        return np.concatenate([p if p is not None else m for p, m in zip(parts, missing, strict=True)])

    def labelled_mask(self, y: Any) -> np.ndarray:
        """Which examples carry a label in `y` (this head's labels in its layout, as `concat` joins
        them: a source without the head's labels adds missing ones): training leaves out the rows
        no head has a label for, and model cards count the rest."""
        if self.layout is None:  # not from tables (language-model heads): every example's own tokens
            return np.ones(len(y), dtype=bool)
        if self.layout == "per_token":  # a row without tags is all IGNORE_INDEX once aligned to its tokens
            return np.array([v is not None and any(t != IGNORE_INDEX for t in v) for v in y], dtype=bool)
        if self.layout == "sequence":  # target token lists, None where missing
            return np.array([v is not None for v in y], dtype=bool)
        y = np.asarray(y).reshape(len(y), -1)
        if self.layout == "index":  # ids (a triplet's partner and negative: either one)
            return (y != IGNORE_INDEX).any(axis=1)
        return ~np.isnan(y).all(axis=1)  # float rows: all NaN where missing

    def count_labelled(self, y: Any) -> int:
        """How many examples carry a label in `y` (`labelled_mask`), for model cards."""
        return int(self.labelled_mask(y).sum())

    def collate(self, values: list[Any], length: int, width: int) -> Tensor:
        """One batch's labels (None: missing) as a tensor in the layout: per-token ids padded to
        the inputs' `length`, target sequences to the longest, float rows of `width`, class ids."""
        if self.layout == "per_token":
            return pad_ids(values, length)
        if self.layout == "sequence":
            return pad_ids(values, max((len(v) for v in values if v is not None), default=1))
        if self.layout in ("vector", "pair"):
            return torch.from_numpy(fill_missing_float(values, width))
        return torch.tensor([IGNORE_INDEX if v is None else int(v) for v in values], dtype=torch.long)


def pad_ids(values: list[list[int] | None], width: int) -> Tensor:
    """(B, width) long: each id list cut or padded to `width` with IGNORE_INDEX (None: all IGNORE_INDEX)."""
    y = torch.full((len(values), width), IGNORE_INDEX, dtype=torch.long)
    for i, v in enumerate(values):
        if v is not None:
            y[i, : min(len(v), width)] = torch.tensor(v[:width])
    return y


def fill_missing_float(values: list[Any], width: int) -> np.ndarray:
    """(B, width) float32 rows; a missing row (None) is all NaN."""
    return np.stack([np.full(width, NAN, np.float32) if v is None else np.asarray(v, np.float32) for v in values])
