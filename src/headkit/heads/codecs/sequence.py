"""The sequence layout: a target text per example, tokenised to (B, L) ids of its own length.

Targets are free text (a summary, a headline, a translation), read as text and tokenised with
the run's tokenizer between a start and an end token; a batch pads them with IGNORE_INDEX to its
longest. References are the targets as text again, written by the head (`text(ids)`), which
knows its tokenizer and its special tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from headkit.errors import DataError, HeadConfigError
from headkit.heads.codecs.base import Codec
from headkit.heads.labels import IGNORE_INDEX, LabelSource, label_values

logger = logging.getLogger(__name__)

# target tokens kept in training, start and end included (longer targets are cut, with a note):
# targets are tokenised while the data is read, before any head config exists
MAX_TARGET_TOKENS = 64


def special_tokens(tokenizer: Any) -> dict[str, int]:
    """The start / end / padding ids a decoder uses with this tokenizer: BOS (or BERT's [CLS],
    or T5's padding) starts, EOS (or [SEP]) ends."""
    start = next(
        (t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id, tokenizer.pad_token_id) if t is not None), None
    )
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if start is None or end is None:
        raise HeadConfigError(
            f"the tokenizer ({type(tokenizer).__name__}) has no start (bos/cls/pad) or end (eos/sep) token, "
            "so a seq2seq head cannot tell where a text begins and ends; set start_token_id and end_token_id"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return {"start_token_id": start, "end_token_id": end, "pad_token_id": pad}


class TextCodec(Codec):
    layout = "sequence"
    class_noun, suggested_name = "target", "summary"

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return []  # targets are free text, not classes

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> list[Any]:
        values = label_values(rows, where)
        for i, value in enumerate(values):
            if value is not None and not isinstance(value, str):
                raise DataError(
                    f"row {i + 1} of {where.source}: target column '{where.column}' holds {value!r}, not text"
                )
        return [v if isinstance(v, str) and v.strip() else None for v in values]

    def tokenize_labels(self, values: list[str | None], processor: Any, where: LabelSource) -> list[list[int] | None]:
        """Target texts -> [start, tokens .., end], cut to MAX_TARGET_TOKENS (counted in a note)."""
        ids = special_tokens(processor)
        limit = MAX_TARGET_TOKENS - 2
        texts = [v for v in values if v is not None]
        tokens = iter(processor(texts, add_special_tokens=False)["input_ids"] if texts else [])
        out: list[list[int] | None] = []
        cut = 0
        for value in values:
            if value is None:
                out.append(None)
                continue
            body = next(tokens)
            cut += len(body) > limit
            out.append([ids["start_token_id"], *body[:limit], ids["end_token_id"]])
        if cut:
            logger.info(
                f"note: {cut} of {len(texts)} targets in column '{where.column}' of {where.source} are longer than "
                f"{limit} tokens and were cut to that length"
            )
        return out

    def references(self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()) -> list[Any]:
        rows = [[i for i in row if i != IGNORE_INDEX] for row in labels.tolist()]
        return [self.head.text(ids) if ids else None for ids in rows]
