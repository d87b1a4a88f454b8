"""TaskSpecs -> encoded train/validation data and the head configs that fit it.

Label maps are inferred from the data at training time and saved in the head configs; at
evaluation and prediction time the saved maps are passed back in, so a label never seen in
training is reported instead of silently becoming a new class. A source's rows are encoded by
data/encode.py (shared with data/streaming.py, which encodes a stream as it passes), whose
`PreparedData` is importable from here as before, and so is `TaskSpec` (data/taskspec.py: a
config type, which the CLI reads without loading the data pipeline).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

from headkit.data.batching import EncodedData, concat, split_groups, split_indices
from headkit.data.encode import PreparedData, check_tasks, encode_rows
from headkit.data.pixels import pixel_store
from headkit.data.readers import Rows, read_rows
from headkit.data.taskspec import TaskSpec
from headkit.errors import DataError
from headkit.heads import HeadConfig, head_class

logger = logging.getLogger(__name__)


def _sample(rows: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    if limit is None or limit >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:limit])
    return Rows([rows[i] for i in keep], getattr(rows, "label_names", {}))


def prepare(
    tasks: list[TaskSpec],
    processor,
    max_length: int = 128,
    val_fraction: float = 0.1,
    seed: int = 0,
    label_maps: dict[str, list[str]] | None = None,
    sources: dict[str, Any] | None = None,
    causal: bool = False,
    unseen_labels: bool = False,
    labelled_only: bool = False,
) -> PreparedData:
    """Read, encode and split every task's data; build each head's config with its label map.

    `sources` maps a task's `data` (or `eval_data`) string to an in-memory source (library use:
    a `datasets.Dataset`, a DataFrame, rows ...; a stream goes to `prepare_stream`). A task with
    `eval_data` validates on it; the others hold out `val_fraction` of their data, stratified by
    the first single-label classification head's labels. `causal`: encoded for a decoder backbone
    (`backbone_outputs.is_causal`; question-answering windows differ). `unseen_labels`: labels
    outside `label_maps` are kept for scoring as misses (`EncodedData.unseen`), not refused; for
    data a trained model is scored on, never for data it trains on. `labelled_only`: leave out the
    rows no head has a label for (`labelled_rows`; data to train on).
    """
    if reads_stream(tasks, sources):  # encoded as it is read: data/streaming.py
        from headkit.data.streaming import prepare_stream

        return prepare_stream(tasks, processor, max_length, seed, sources, label_maps, causal)
    check_tasks(tasks)
    # tasks reading the same rows the same way share one encoding (and one backbone pass)
    groups: dict[tuple[str, str, str | None, str | None], list[TaskSpec]] = defaultdict(list)
    for task in tasks:
        groups[(task.data, task.text, task.text_pair, task.eval_data)].append(task)  # type: ignore[index]  # check_tasks: data given
    train_parts, val_parts, heads = [], [], {}
    for (data, text_column, _, eval_data), group in groups.items():
        limit = min((t.limit for t in group if t.limit), default=None)
        rows = _sample(read_rows((sources or {}).get(data, data)), limit, seed)
        encoded, configs = _encode(
            rows, group, data, text_column, processor, max_length, label_maps, causal, unseen_labels
        )
        if labelled_only:
            encoded = labelled_rows(encoded, configs, data)
        heads.update(configs)
        if eval_data:
            maps = {**(label_maps or {}), **{n: c.labels for n, c in configs.items()}}
            eval_rows = read_rows((sources or {}).get(eval_data, eval_data))
            train_parts.append(encoded)
            val_parts.append(_encode(eval_rows, group, eval_data, text_column, processor, max_length, maps, causal)[0])
            continue
        if encoded.groups is not None:  # windows of one context stay together
            train_idx, val_idx = split_groups(encoded.groups, val_fraction, seed)
        else:
            train_idx, val_idx = split_indices(len(encoded), val_fraction, seed, strata=_strata(encoded, group))
        train_parts.append(encoded.subset(train_idx))
        val_parts.append(encoded.subset(val_idx))
    head_types = {name: c.type for name, c in heads.items()}
    return PreparedData(concat(train_parts, head_types), concat(val_parts, head_types), heads)


def reads_stream(tasks: list[TaskSpec], sources: dict[str, Any] | None) -> bool:
    """Whether any task reads a stream: a `datasets.IterableDataset` among `sources`, or an
    `hf:...?streaming` data string."""
    from headkit.data.streaming import is_stream

    named = [s for t in tasks for s in (t.data, t.eval_data) if s is not None]
    return any(is_stream(s) for s in [*(sources or {}).values(), *named])


def _encode(
    rows: list[dict[str, Any]],
    group: list[TaskSpec],
    data: str,
    text_column: str,
    processor: Any,
    max_length: int,
    label_maps: dict[str, list[str]] | None,
    causal: bool,
    unseen_labels: bool = False,
) -> tuple[EncodedData, dict[str, HeadConfig]]:
    """`encode_rows` (data/encode.py), image files held by this module's `pixel_store`."""
    return encode_rows(
        rows, group, data, text_column, processor, max_length, label_maps, pixel_store, causal, unseen_labels
    )


def labelled_rows(encoded: EncodedData, configs: dict[str, HeadConfig], data: str) -> EncodedData:
    """The rows with a label for at least one of the heads: a row labelled for none adds nothing to
    any loss or score but would cost its backbone pass in every epoch (and its share of a held-out
    validation split). Such rows are unlabelled text: continued pretraining reads them."""
    if len(encoded) == 0:
        return encoded
    labelled = np.zeros(len(encoded), dtype=bool)
    for name, config in configs.items():
        if name not in encoded.labels:  # a head whose labels are the inputs themselves
            return encoded
        labelled |= head_class(config.type).codec.labelled_mask(encoded.labels[name])
    if labelled.all():
        return encoded
    if not labelled.any():
        columns = {name: config.type for name, config in configs.items()}
        raise DataError(f"{data}: no row has a label for any of the heads {columns}: nothing to train on")
    logger.info(
        f"{data}: {int((~labelled).sum())} of {len(encoded)} rows have no label for {sorted(configs)}; "
        "training leaves them out"
    )
    return encoded.subset(np.flatnonzero(labelled))


def _strata(encoded: EncodedData, group: list[TaskSpec]) -> np.ndarray | None:
    """The labels a validation split keeps the proportions of: the first single-label head's."""
    first = next((t for t in group if head_class(t.type).codec.layout == "index"), None)
    return np.asarray(encoded.labels[first.name]) if first is not None else None
