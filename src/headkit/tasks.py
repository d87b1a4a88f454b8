"""TaskSpecs -> encoded train/validation data and the head configs that fit it.

Label maps are inferred from the data at training time and saved in the head configs; at
evaluation and prediction time the saved maps are passed back in, so a label never seen in
training is reported instead of silently becoming a new class.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from headkit.data import (
    TOKEN_TYPES,
    EncodedData,
    TaskSpec,
    align_tags,
    check_label_dtype,
    column_values,
    concat,
    encode_labels,
    infer_labels,
    read_rows,
    split_indices,
    tokenize,
)
from headkit.errors import DataError
from headkit.heads import HeadConfig, head_config
from headkit.images import BOX_COLUMNS, box_labels, is_image_processor, load_images, preprocess
from headkit.model import HEAD_NAME

TRAINABLE_TYPES = ("classification", "multilabel", "regression", "token-classification", "box")


@dataclass
class PreparedData:
    train: EncodedData
    val: EncodedData
    heads: dict[str, HeadConfig]

    @property
    def head_types(self) -> dict[str, str]:
        return {name: c.type for name, c in self.heads.items()}

    @property
    def widths(self) -> dict[str, int]:
        return {name: len(c.labels) for name, c in self.heads.items()}


def _check_tasks(tasks: list[TaskSpec]) -> None:
    if not tasks:
        raise DataError("no tasks: give at least one head and its data (--data FILE --head NAME:COLUMN)")
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"head name(s) {duplicates} used by more than one task; each head needs its own name")
    for t in tasks:
        if not HEAD_NAME.match(t.name):
            raise DataError(f"head name '{t.name}' must be a Python identifier (letters, digits, _)")
        if t.type not in TRAINABLE_TYPES:
            raise DataError(
                f"task '{t.name}': type '{t.type}' cannot be trained from files; use one of {TRAINABLE_TYPES}"
            )


def _sample(rows: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    if limit is None or limit >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:limit])
    return [rows[i] for i in keep]


def prepare(
    tasks: list[TaskSpec],
    tokenizer,
    max_length: int = 128,
    val_fraction: float = 0.1,
    seed: int = 0,
    label_maps: dict[str, list[str]] | None = None,
    sources: dict[str, Any] | None = None,
) -> PreparedData:
    """Read, encode and split every task's data; build each head's config with its label map.

    `sources` maps a task's `data` string to an in-memory `datasets.Dataset` (library use).
    """
    _check_tasks(tasks)
    groups: dict[tuple[str, str], list[TaskSpec]] = defaultdict(list)
    for task in tasks:
        groups[(task.data, task.text)].append(task)
    train_parts, val_parts, heads = [], [], {}
    for (data, text_column), group in groups.items():
        source = (sources or {}).get(data, data)
        rows = _sample(read_rows(source), min((t.limit for t in group if t.limit), default=None), seed)
        is_tokens = any(t.type in TOKEN_TYPES for t in group)
        images = is_image_processor(tokenizer)
        if images:  # the text column names image files
            pictures, sizes = load_images(rows, text_column, data)
            pixels = preprocess(tokenizer, pictures, crop=not any(t.type == "box" for t in group))
            encoded = EncodedData([[] for _ in rows], {}, [r.get(text_column) for r in rows], pixels)
        else:
            input_ids, word_ids = tokenize(tokenizer, rows, text_column, max_length, data, is_tokens)
            encoded = EncodedData(input_ids, {}, [r.get("tokens") if is_tokens else r.get(text_column) for r in rows])
        for task in group:
            if task.type == "box" and not images:
                raise DataError(f"task '{task.name}': a box head needs an image backbone and image files")
            if images and task.type in TOKEN_TYPES:
                raise DataError(f"task '{task.name}': a '{task.type}' head needs text, not images")
            labels = (label_maps or {}).get(task.name)
            if labels is None:
                column = "tags" if task.type in TOKEN_TYPES and task.label == "label" else task.label
                if task.type == "box":
                    labels = [c.strip() for c in task.label.split(",")] if "," in task.label else list(BOX_COLUMNS)
                elif task.type == "regression":
                    labels = [c.strip() for c in task.label.split(",")]
                else:
                    values = column_values(rows, column, data)
                    check_label_dtype(values, task, data)
                    labels = infer_labels(values, task.type)
            y = box_labels(rows, task, sizes, data) if task.type == "box" else encode_labels(rows, task, labels, data)
            if task.type in TOKEN_TYPES:
                y = [align_tags(tags, words) for tags, words in zip(y, word_ids, strict=True)]
            encoded.labels[task.name] = y
            heads[task.name] = head_config(
                task.type,
                labels=list(labels),
                pooling="none" if task.type in TOKEN_TYPES else task.pooling,
                loss_weight=task.loss_weight,
            )
        train_idx, val_idx = split_indices(len(encoded), val_fraction, seed)
        train_parts.append(encoded.subset(train_idx))
        val_parts.append(encoded.subset(val_idx))
    head_types = {name: c.type for name, c in heads.items()}
    return PreparedData(concat(train_parts, head_types), concat(val_parts, head_types), heads)
