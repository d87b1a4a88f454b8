"""The per-token layout: one tag per token, (B, T) ids with IGNORE_INDEX where a token has none.

Rows hold pre-split words (`tokens`) and one tag per word (`tags`, or the column the task names);
the data code gives each word's tag to its first sub-word token and IGNORE_INDEX to the rest, so
references are tag lists over an example's real positions, None where a position has no tag.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from headkit.data.files import column_values, is_missing
from headkit.errors import DataError
from headkit.heads.codecs.base import Codec
from headkit.heads.codecs.index import balanced_weights
from headkit.heads.fewshot import Pair
from headkit.heads.labels import (
    IGNORE_INDEX,
    LabelSource,
    label_index,
    label_name,
    label_order,
    label_values,
    real_positions,
)


def _tags_column(where: LabelSource) -> str:
    return "tags" if where.column == "label" else where.column  # CoNLL files name it `tags`


class TagCodec(Codec):
    layout = "per_token"
    inputs = "words"
    class_noun, suggested_name = "entity type", "tags"

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        """Sorted tags with `O` first (the usual id 0)."""
        values = label_values(rows, where, _tags_column(where))
        tags = {str(t) for v in values if not is_missing(v) for t in v if t is not None}
        declared = where.declared_names(_tags_column(where), present=tags)
        return declared or (["O"] if "O" in tags else []) + label_order(tags - {"O"})

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> list[list[int] | None]:
        """One tag id per word (None: the example has no tags), checked against the words."""
        lookup = label_index(labels, where)
        words = column_values(rows, "tokens", where.source)
        tag_lists = column_values(rows, _tags_column(where), where.source)
        encoded: list[list[int] | None] = []
        for i, (tokens, tags) in enumerate(zip(words, tag_lists, strict=True)):
            if is_missing(tags):
                encoded.append(None)
                continue
            if len(tokens) != len(tags):
                raise DataError(
                    f"head '{where.head}', example {i + 1}: {len(tokens)} tokens but {len(tags)} tags; "
                    "every token needs exactly one tag"
                )
            encoded.append([lookup(str(t), i + 1) for t in tags])
        return encoded

    def references(self, labels: Tensor, mask: Tensor, unseen: Sequence[str] = ()) -> list[list[str | None] | None]:
        names = self.names
        refs: list[list[str | None] | None] = []
        for row in real_positions(labels, mask):
            tags = [None if y == IGNORE_INDEX else label_name(names, unseen, y) for y in row]
            refs.append(None if all(t is None for t in tags) else tags)
        return refs

    def label_counts(self, values: list[Any]) -> dict[str, int]:
        """Entities per type for BIO / BIOES tags (an entity starts at B-X or S-X, or at an I-X or
        E-X that does not continue an X, as seqeval reads them), else tagged words per tag; `O` is
        not counted."""
        counts: Counter[str] = Counter()
        tag_lists = [[str(t) for t in v] for v in values if not is_missing(v)]
        entities = all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for tags in tag_lists for t in tags)
        for tags in tag_lists:
            previous = "O"
            for tag in tags:
                if not entities:
                    counts.update([tag] if tag != "O" else [])
                elif tag[:2] in ("B-", "S-") or (
                    tag[:2] in ("I-", "E-") and (previous[2:] != tag[2:] or previous[:2] in ("E-", "S-"))
                ):
                    counts[tag[2:]] += 1
                previous = tag
        return dict(counts.most_common())

    def auto_class_weights(self, y: Any, width: int) -> list[float]:
        """Inverse tag frequency over labelled tokens (`O` usually weighs far below 1)."""
        tags = [t for row in y if row for t in row if t != IGNORE_INDEX]
        return balanced_weights(np.bincount(np.asarray(tags, dtype=np.int64), minlength=width))

    def fewshot_pairs(self, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        """Pairs of tagged tokens: two of one tag (1.0), one of it and one of another tag (0.0)."""
        tags: list[list[int] | None] = y
        tokens = [(i, pos, t) for i, row in enumerate(tags) if row for pos, t in enumerate(row) if t != IGNORE_INDEX]
        by_tag: dict[int, list[tuple[int, int]]] = {}
        for i, pos, t in tokens:
            by_tag.setdefault(t, []).append((i, pos))
        anchors = sorted(t for t, items in by_tag.items() if len(items) >= 2)
        if len(by_tag) < 2 or not anchors:
            raise DataError(
                f"head '{head}': few-shot token tagging needs at least 2 tags and 2 tagged words of some tag; "
                f"the training data has {len(by_tag)} tag(s)"
            )
        sentences = sum(1 for row in tags if row and any(t != IGNORE_INDEX for t in row))
        pairs = []
        for _ in range(iterations * sentences):
            tag = anchors[rng.integers(len(anchors))]
            same = by_tag[tag]
            a, b = rng.choice(len(same), size=2, replace=False)
            others = [t for t in by_tag if t != tag]
            other = by_tag[others[rng.integers(len(others))]]
            c = other[rng.integers(len(other))]
            (i, pi), (j, pj) = same[a], same[b]
            pairs.append(Pair(head, i, j, 1.0, pi, pj))
            pairs.append(Pair(head, i, c[0], 0.0, pi, c[1]))
        return pairs
