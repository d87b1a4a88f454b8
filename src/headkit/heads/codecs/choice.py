"""The choice layout: a context and N candidate answers per example, one of them right.

The texts are the inputs: each (context, choice) pair is a row the head scores, read as
`tokenizer(context, choice)` (transformers' multiple-choice recipe, `run_swag`); a batch of B
examples of N choices is N x B rows, every example's first choice first (choice-major, as
preference pairs are laid out: headkit.data.batching). The label is the right choice's position,
(B,) long with IGNORE_INDEX where missing, as the index layout stores a class.

From tables the choices come from the task's `text_pair`: one column of lists (default
`choices`) or several columns, comma-separated (SWAG's `ending0,ending1,ending2,ending3`); the
answer column holds a position from 0 or a letter (A the first choice).
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from headkit.data.files import SEQUENCE_TYPES, column_values, is_missing
from headkit.errors import DataError
from headkit.heads.codecs.base import Codec
from headkit.heads.labels import IGNORE_INDEX, LabelSource

CHOICES_COLUMN = "choices"  # where a task's choices are read when its text_pair names none


class ChoiceCodec(Codec):
    layout = "index"
    inputs = "choices"
    multi_row = True
    class_noun = "choice"
    suggested_name = "answer"

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return []  # an answer is a position among the example's own choices, not a class

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        """(B,) the right choice's position (IGNORE_INDEX where missing); that it is one of the
        example's choices is checked where the choices are read (headkit.data.choices)."""
        values = column_values(rows, where.column, where.source)
        # a datasets ClassLabel column was read as its names (data/readers.py): its id is the position
        declared = where.declared.get(where.column)
        values = [declared.index(v) if declared and v in declared else v for v in values]
        positions = [IGNORE_INDEX if is_missing(v) else answer_position(v, where, i + 1) for i, v in enumerate(values)]
        return np.array(positions, dtype=np.int64)

    def known_labels(self, labels: Tensor) -> Tensor:
        return labels  # positions, never labels training lacked

    def references(self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()) -> list[Any]:
        """One entry per row (N x B, as the head reads them): an example's first row holds
        ("answer", position, B, N), the rows of its other choices ("choice", k); None where the
        example has no label."""
        examples = labels.shape[0]
        if mask is None or examples == 0 or mask.shape[0] % examples:
            raise DataError(f"a multiple-choice batch of {examples} examples needs N x {examples} rows of choices")
        per_example = mask.shape[0] // examples
        answers = labels.tolist()
        return [
            None if answers[row % examples] == IGNORE_INDEX
            else ("answer", answers[row], examples, per_example) if row < examples
            else ("choice", row // examples)
            for row in range(per_example * examples)
        ]  # fmt: skip

    def label_counts(self, values: list[Any]) -> dict[str, int]:
        return {f"choice {k}": n for k, n in sorted(Counter(int(v) for v in values).items())}


def answer_position(value: Any, where: LabelSource, row: int) -> int:
    """An answer cell as a choice position: a whole number from 0, or a letter (A: the first)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in string.ascii_uppercase:
        return string.ascii_uppercase.index(value.strip().upper())
    if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer() and value >= 0:
        return int(value)
    raise DataError(
        f"row {row} of {where.source}: answer column '{where.column}' holds {value!r}; a multiple-choice answer is "
        "the right choice's position from 0, or its letter (A the first)"
    )


def choice_lists(
    rows: list[dict[str, Any]], columns: str | None, source: str, same_count: bool = True
) -> list[list[str]]:
    """Each row's choices (each a text; with `same_count`, as training batches them, every row as
    many), from one column of lists or from several comma-separated columns; a DataError names
    the first bad row."""
    names = [c.strip() for c in (columns or CHOICES_COLUMN).split(",")]
    if len(names) > 1:
        per_column = [column_values(rows, name, source) for name in names]
        lists = [list(texts) for texts in zip(*per_column, strict=True)]
    else:
        lists = column_values(rows, names[0], source)
    where = f"column '{names[0]}'" if len(names) == 1 else f"columns {names}"
    count = None
    for number, choices in enumerate(lists, start=1):
        if not isinstance(choices, SEQUENCE_TYPES) or len(choices) < 2:
            raise DataError(
                f"row {number} of {source}: {where} should hold an example's choices (at least 2), got {choices!r}; "
                "give one column of lists or several columns, comma-separated (text_pair: ending0,ending1)"
            )
        if same_count and count is not None and len(choices) != count:
            raise DataError(
                f"row {number} of {source}: {len(choices)} choices where the rows before have {count}; every "
                "example of a multiple-choice head needs the same number of choices"
            )
        count = len(choices)
        bad = next((k for k, c in enumerate(choices) if not isinstance(c, str) or not c.strip()), None)
        if bad is not None:
            raise DataError(f"row {number} of {source}: choice {bad} in {where} is empty or not text: {choices[bad]!r}")
    return [list(choices) for choices in lists]
