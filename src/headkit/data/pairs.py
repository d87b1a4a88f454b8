"""Two texts per example, each encoded as its own row: preference pairs (reward heads) and text
pairs (embedding heads: an anchor and its positive, `tokenize_text_pairs`).

Preference pairs: a prompt and two responses to it, the one people chose and the one they
rejected (TRL's `prompt`, `chosen`, `rejected` columns). Heads whose codec `joins` (reward heads)
train on them.

A reward head scores one text: the prompt and a response joined (`join_pair`, as TRL's
RewardTrainer joins them, with a space where neither side has one), encoded exactly as
`headkit predict` and the server encode the text a user sends, so a served score is the score
training saw. A text longer than `max_length` loses tokens from its start (the tokenizer of a
reward run truncates on the left, and is saved so), so the end of the prompt, next to the
response, is what stays.
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

    # keep the response: the run's tokenizer truncates on the left, and is saved so (init_kwargs is what
    # save_pretrained writes), so that predict and the server cut a long text as training did
    tokenizer.truncation_side = tokenizer.init_kwargs["truncation_side"] = "left"

    def encode(responses: list[str]) -> list[list[int]]:
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        lengths = [len(ids) + specials for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
        too_long = next((i for i, n in enumerate(lengths) if n > max_length), None)
        if too_long is not None:
            raise DataError(
                f"{source}, row {too_long + 1}: a response of {lengths[too_long]} tokens does not fit in max_length "
                f"{max_length} even without its prompt; raise --max_length"
            )
        joined = [join_pair(p, r) for p, r in zip(prompts, responses, strict=True)]
        return tokenizer(joined, truncation=True, max_length=max_length)["input_ids"]

    return encode(chosen), encode(rejected)


def tokenize_text_pairs(
    tokenizer: Any, rows: list[dict[str, Any]], text_column: str, partner_column: str, max_length: int, source: str
) -> tuple[list[list[int]], list[list[int]], list[list[int]] | None]:
    """(text ids, partner ids, negative ids or None): each text as the tokenizer encodes one text
    alone, as predict and the server encode what they are given; a DataError names the first
    empty one. `partner_column` may name two columns, POSITIVE,NEGATIVE (triplets: a hard
    negative per text). A long text keeps its start (the tokenizer is set to truncate on the
    right, and saved so: a model trained further from a reward run would otherwise keep its left
    truncation)."""
    from headkit.heads.codecs.pair import partner_columns

    tokenizer.truncation_side = tokenizer.init_kwargs["truncation_side"] = "right"
    encoded = []
    for column in (text_column, *partner_columns(partner_column)):
        texts = column_values(rows, column, source)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
        if bad is not None:
            raise DataError(
                f"{source}, row {bad + 1}: '{column}' is empty or not text ({texts[bad]!r}); each text needs its "
                f"partner: '{text_column}' and '{partner_column}' hold the texts of a pair (or a triplet)"
            )
        encoded.append(tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    return encoded[0], encoded[1], encoded[2] if len(encoded) > 2 else None


def join_pair(prompt: str, response: str) -> str:
    """The one text a reward head scores: the prompt, then the response (a space between them
    unless one of them already has whitespace at the join)."""
    seam = "" if not prompt or not response or prompt[-1].isspace() or response[0].isspace() else " "
    return prompt + seam + response
