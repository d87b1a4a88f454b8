"""Labels as the data code knows them: the layouts they are stored and batched in, where they are
read from, and the small helpers every codec uses to read them (heads/codecs/ per layout)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from headkit.data.files import column_values, is_missing
from headkit.errors import DataError

IGNORE_INDEX = -100
NAN = float("nan")

LabelLayout = Literal["index", "vector", "per_token", "sequence", "pair", "span"]
"""How a head's labels are stored and batched (the only label shapes the data code knows):
    index      one class id per example: (B,) long, IGNORE_INDEX when missing (also the right
               choice's position, for multiple-choice heads)
    vector     a row of floats per example: (B, K) float, NaN when missing
    per_token  one id per token: (B, T) long, IGNORE_INDEX where a token has no label
    sequence   a target token sequence per example, of its own length: (B, L) long, padded with
               IGNORE_INDEX to the batch's longest target (a missing target is all IGNORE_INDEX)
    pair       one preference pair per example (its texts are the inputs): (B, 1) float, 1 when
               the pair is to be ranked, NaN when missing
    span       an answer's first and last token in one window of a (question, context) pair:
               (B, 2) long, both the window's null position when it holds no answer, IGNORE_INDEX
               when missing (headkit.heads.qa)
"""

Inputs = Literal["text", "words", "images", "pairs", "qa", "choices"]
"""What a head's training rows hold: text, pre-split words (one label per word), image files,
preference pairs (a prompt and a chosen and a rejected response: headkit.data.pairs), a question
and a context that is cut into windows (headkit.heads.qa), or a context and its choices
(headkit.data.choices)."""


@dataclass
class LabelTally:
    """The labels met while encoding data a trained head is scored on: those outside its label map,
    in the order met (their ids follow the map's: `label_index`), and how many were in the map."""

    unseen: list[str] = field(default_factory=list)
    known: int = 0


@dataclass(frozen=True)
class LabelSource:
    """Where a head's labels are read from, for label parsing and its error messages."""

    head: str  # the head's name
    column: str  # the label column(s) as the user gave them (several: comma-separated)
    source: str  # the data they come from (a path or a built-in name)
    # label names a source declares per column, in their order (a datasets ClassLabel)
    declared: dict[str, list[str]] = field(default_factory=dict, compare=False, hash=False)
    # None: a label outside the head's label map is an error (training). A tally: such labels are
    # counted there and encoded past the map (evaluation data, where they are scored as misses)
    tally: LabelTally | None = field(default=None, compare=False, hash=False)

    def declared_names(self, column: str | None = None, present: set[str] | None = None) -> list[str] | None:
        """The declared label names of `column` (default: the label column), checked to hold every
        value `present`; None when the source declares none."""
        names = self.declared.get(column or self.column)
        if names is None:
            return None
        unknown = sorted((present or set()) - set(names))
        if unknown:
            raise DataError(
                f"column '{column or self.column}' of {self.source} holds {unknown}, "
                f"not among its declared labels {names}"
            )
        return list(names)

    def columns(self) -> list[str]:
        return [c.strip() for c in self.column.split(",")]


def label_values(rows: list[dict[str, Any]], where: LabelSource, column: str | None = None) -> list[Any]:
    """A head's label column, or a DataError when it holds no label at all."""
    values = column_values(rows, column or where.column, where.source)
    if all(is_missing(v) for v in values):
        raise DataError(f"column '{where.column}' of {where.source} has no labels at all for head '{where.head}'")
    return values


def label_order(names: Iterable[str]) -> list[str]:
    """Distinct label names in a stable order: numerically when every name is a number (star
    ratings 1, 2, 10, not the strings' 1, 10, 2), else alphabetically."""
    distinct = set(names)
    try:
        return sorted(distinct, key=lambda name: (float(name), name))
    except ValueError:
        return sorted(distinct)


def label_index(labels: list[str], where: LabelSource) -> Callable[[str, int], int]:
    """name -> id in the label map. A name never seen in training is an error naming the row, or,
    where the source tallies them (`where.tally`), the id `len(labels) + k` of the k-th such name:
    ids past the map, which no prediction can match and the loss skips (`Codec.known_labels`)."""
    index = {name: i for i, name in enumerate(labels)}
    tally = where.tally

    def lookup(name: str, row: int) -> int:
        if tally is not None and name in index:
            tally.known += 1
        elif tally is not None:
            if name not in tally.unseen:
                tally.unseen.append(name)
            return len(labels) + tally.unseen.index(name)
        if name not in index:
            raise DataError(
                f"label {name!r} of head '{where.head}' (row {row}) was never seen in training; "
                f"known labels: {labels[:20]}"
            )
        return index[name]

    return lookup


def label_name(names: list[str], unseen: Sequence[str], y: int) -> str:
    """The name of label id `y`: one of the head's `names`, or past them one of the `unseen` names
    (labels of evaluation data that training never had: `label_index`)."""
    return names[y] if y < len(names) else unseen[y - len(names)]


def real_positions(values: Tensor, mask: Tensor) -> list[list[Any]]:
    """Each row's values at its real (mask 1) positions, in order, whichever side the batch was
    padded on: per-token predictions and labels line up with the text's own tokens."""
    keep = mask.bool().cpu()
    return [row[m].tolist() for row, m in zip(values.cpu(), keep, strict=True)]


def rows_with_labels(labels: Tensor) -> Tensor:
    """Boolean (B,) mask of rows whose float labels are all present (no NaN)."""
    return ~torch.isnan(labels.float()).reshape(labels.shape[0], -1).any(dim=1)
