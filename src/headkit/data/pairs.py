"""Preference pairs: a prompt and two responses to it, the one people chose and the one they
rejected (TRL's `prompt`, `chosen`, `rejected` columns). Each response is encoded after its
prompt as one sequence; when the two together exceed `max_length`, the prompt is cut (the
responses are what is compared). Heads whose `inputs` is "pairs" (reward heads) train on them.
"""

from __future__ import annotations

from typing import Any

from headkit.data.files import column_values
from headkit.errors import DataError

PAIR_COLUMNS = ("chosen", "rejected")


def pair_columns(label: str) -> list[str]:
    """The two response columns a pairs head names (`chosen,rejected` unless given)."""
    columns = [c.strip() for c in label.split(",")] if "," in label else list(PAIR_COLUMNS)
    if len(columns) != 2 or not all(columns):
        raise DataError(f"preference pairs need two response columns CHOSEN,REJECTED, got '{label}'")
    return columns


def tokenize_pairs(
    tokenizer: Any, rows: list[dict[str, Any]], prompt_column: str, label: str, max_length: int, source: str
) -> tuple[list[list[int]], list[list[int]]]:
    """(chosen ids, rejected ids), each `prompt + response`; a DataError names the first bad row."""
    chosen_column, rejected_column = pair_columns(label)
    prompts = column_values(rows, prompt_column, source)
    chosen = column_values(rows, chosen_column, source)
    rejected = column_values(rows, rejected_column, source)
    for number, (prompt, good, bad) in enumerate(zip(prompts, chosen, rejected, strict=True), start=1):
        where = f"{source}, row {number}"
        if not isinstance(prompt, str):
            raise DataError(f"{where}: the prompt column '{prompt_column}' is empty or not text: {prompt!r}")
        for column, text in ((chosen_column, good), (rejected_column, bad)):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: the response in '{column}' is empty; a pair needs two responses")
        if good.strip() == bad.strip():
            raise DataError(f"{where}: '{chosen_column}' and '{rejected_column}' are the same text; a pair must differ")

    def encode(responses: list[str]) -> list[list[int]]:
        enc = tokenizer(prompts, responses, truncation="only_first", max_length=max_length)
        return enc["input_ids"]

    try:
        return encode(chosen), encode(rejected)
    except Exception as e:  # a response alone longer than max_length cannot be cut from the prompt
        raise DataError(
            f"{source}: a response does not fit in max_length {max_length} even without its prompt ({e}); "
            "raise --max_length"
        ) from e
