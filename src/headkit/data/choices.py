"""Multiple-choice examples: a context and N choices, each (context, choice) encoded as a
sentence pair, as transformers' multiple-choice recipe (`run_swag`) encodes them.

An example's first pair is its `input_ids` and the others its `more_ids`, so that a batch of B
examples is N x B rows (headkit.data.batching); the answer column is read by the head's codec
(heads/codecs/choice.py) and checked here against the number of choices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headkit.data.batching import EncodedData, text_values, tokenize_pairs_of_texts
from headkit.errors import DataError
from headkit.heads.codecs.choice import choice_lists
from headkit.heads.labels import IGNORE_INDEX


def encode_choices(
    tokenizer: Any, rows: list[dict[str, Any]], context_column: str, choice_columns: str | None, max_length: int,
    source: str,
) -> EncodedData:  # fmt: skip
    """The (context, choice) pairs of every row, choice by choice, with their segment ids."""
    contexts = text_values(rows, context_column, source)
    choices = choice_lists(rows, choice_columns, source)
    encoded = [
        tokenize_pairs_of_texts(tokenizer, contexts, [c[k] for c in choices], max_length, source)
        for k in range(len(choices[0]))
    ]
    first, more = encoded[0], encoded[1:]
    more_ids = [[e.input_ids[i] for e in more] for i in range(len(rows))]
    types = None if first.token_type_ids is None else [list(t) for t in first.token_type_ids]
    more_types = None
    if types is not None:
        more_types = [[e.token_type_ids[i] for e in more] for i in range(len(rows))]  # type: ignore[index]
    return EncodedData(first.input_ids, {}, contexts, None, more_ids, types, more_types=more_types)


def check_choice_answers(answers: np.ndarray, encoded: EncodedData, head: str, column: str, source: str) -> None:
    """Refuse an answer position past its example's choices, naming the row."""
    count = encoded.rows_per_example
    bad = np.flatnonzero((answers != IGNORE_INDEX) & ((answers < 0) | (answers >= count)))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"row {row + 1} of {source}: head '{head}' reads answer {int(answers[row])} in column '{column}', but the "
            f"example has {count} choices (positions 0 to {count - 1}, or letters A to {chr(ord('A') + count - 1)})"
        )
