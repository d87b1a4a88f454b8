"""Streamed data: a `datasets.IterableDataset` (or `hf:...?streaming`) trains without being read
into memory.

A stream has no length, cannot be indexed, shuffled as a whole or split, so it trains the way
transformers' Trainer trains one:

- **Rows are encoded as they pass**, a chunk at a time (`CHUNK_ROWS`); only the chunk in hand is in
  memory. Every pass re-reads the stream from its start; `set_epoch(k)` is called on it before pass
  k, so a stream shuffled with `stream.shuffle(seed=..., buffer_size=...)` is reshuffled each pass
  (headkit does not shuffle a stream itself: the buffer size is a memory choice that is yours).
- **Label maps** come from, in this order: the label maps given (a head config's `labels`, a
  trained model's heads), the stream's ClassLabel features (their order kept), or a bounded first
  look at the stream (`PROBE_ROWS` rows). A label first seen after that look is an error that
  says how to give the labels up front. `class_weights: auto` counts labels in that first look too.
- **Validation** comes from a separate eval source (`eval_dataset`, a task's `eval_data`, or the
  `validation` split of an `IterableDatasetDict`): a stream cannot be split. That eval source is
  read into memory (keep it small, e.g. `stream.take(2000)`); without one the run trains without
  validation and keeps its last weights, and says so.
- **How long**: phases that run the backbone over the stream (full, partial, lora, lp-ft's
  fine-tuning, frozen without the feature cache) need `max_steps` (optimizer steps), as
  transformers' Trainer does for data without a length; the stream is re-read as often as the
  steps need. A frozen run with the feature cache needs none: one pass over the stream computes
  the backbone's features (`training/features.stream_features`: written to disk as they are made,
  then memory-mapped, so memory stays bounded by a chunk; the cost is disk: 4 bytes x hidden size
  per example for pooled heads, 2 bytes x hidden size per token for per-token heads), after which
  the heads train their epochs (or max_steps) on the cache exactly as on in-memory data. An endless stream must be
  bounded for that pass (`stream.take(n)`, or a task's `limit`: the first `limit` rows).

Not yet for streams: image and preference-pair (reward) heads, several processes, `resume`, and
several training streams in one run (join them first with `datasets.interleave_datasets`); each is
refused with an error that says so.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from headkit.data.batching import EncodedData, concat
from headkit.data.encode import PreparedData, check_tasks, encode_rows
from headkit.data.readers import (
    Rows,
    is_iterable_dataset,
    label_names_of,
    load_hub_dataset,
    named_rows,
    parse_hf_spec,
    read_rows,
)
from headkit.errors import DataError, HeadkitError

logger = logging.getLogger(__name__)

PROBE_ROWS = 1000  # the first look at a stream: label maps, column checks, class-weight counts
CHUNK_ROWS = 256  # rows encoded (and, for the feature cache, run through the backbone) at a time


def is_stream(source: Any) -> bool:
    """A source that is read as it passes: a `datasets.IterableDataset` / `IterableDatasetDict`,
    or `hf:NAME[:CONFIG][:SPLIT]?streaming` (`datasets.load_dataset(..., streaming=True)`)."""
    if isinstance(source, str):
        if not source.startswith("hf:"):
            return False
        try:
            return parse_hf_spec(source).streaming
        except DataError:
            return False  # read_rows reports the bad spec
    return is_iterable_dataset(source)


def _open(source: Any, where: str) -> tuple[Any, Any | None]:
    """A stream source -> (the training stream, the dict's validation stream or None)."""
    if isinstance(source, str):
        source = load_hub_dataset(source)
    if isinstance(source, dict):  # IterableDatasetDict
        if "train" not in source:
            raise DataError(
                f"{where} has the splits {list(source)} and none is 'train'; pass one split (stream['name'])"
            )
        return source["train"], source.get("validation")
    return source, None


class StreamedData:
    """`PreparedData.train` of a stream: encodes chunks of rows as they pass (`chunks`), for the
    loop's streamed phases (`examples`) and for the one pass that caches backbone features.

    `labels` are the first look's (what `class_weights: auto` counts); `len()` is the number of
    examples one pass has read so far (0 before training; the stream's size after a whole pass)."""

    def __init__(
        self,
        stream: Any,
        group: list[Any],
        where: str,
        text_column: str,
        processor: Any,
        max_length: int,
        label_maps: dict[str, list[str]],
        names: dict[str, list[str]],
        sample: EncodedData,
        inferred: list[str],
        causal: bool = False,
    ):
        self.stream, self.group, self.where, self.text_column = stream, group, where, text_column
        self.causal = causal  # encoded for a decoder backbone (question-answering windows)
        self.questions = sample.questions  # QA: the first rows' questions (what a stream keeps of its rows)
        self.processor, self.max_length, self.label_maps, self.names = processor, max_length, label_maps, names
        self.labels, self.inferred, self.read = sample.labels, inferred, 0

    def __len__(self) -> int:
        return self.read

    def chunks(self, epoch: int = 0) -> Iterator[EncodedData]:
        """One pass over the stream, `CHUNK_ROWS` encoded rows at a time."""
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)  # a shuffled stream: another order each pass
        rows, count = iter(self.stream), 0
        while chunk := list(itertools.islice(rows, CHUNK_ROWS)):
            batch = Rows(named_rows(chunk, self.names), self.names)
            try:
                encoded, _ = encode_rows(
                    batch,
                    self.group,
                    self.where,
                    self.text_column,
                    self.processor,
                    self.max_length,
                    self.label_maps,
                    causal=self.causal,
                )
            except DataError as e:
                if self.inferred and "never seen" in str(e):
                    raise DataError(
                        f"{e} (rows {count + 1}-{count + len(chunk)} of the stream; the label maps of "
                        f"{self.inferred} came from its first {PROBE_ROWS} rows: give the heads their labels "
                        "up front, e.g. head_config('classification', labels=[...]), or a ClassLabel feature)"
                    ) from e
                raise
            count += len(chunk)
            self.read = max(self.read, count)
            yield encoded

    def examples(self, epoch: int = 0) -> Iterator[dict[str, Any]]:
        """One pass's examples, as `EncodedData[i]` gives them (without the chunk-local index)."""
        for chunk in self.chunks(epoch):
            for i in range(len(chunk)):
                example = chunk[i]
                del example["index"]
                yield example

    def loader(self, batch_size: int, collate: Any) -> torch.utils.data.DataLoader:
        """Batches of `batch_size` examples in the stream's order, one pass per iteration;
        `loader.set_epoch(k)` (accelerate calls it) selects pass k's order."""
        return torch.utils.data.DataLoader(_Examples(self), batch_size=batch_size, collate_fn=collate)

    def _refuse(self, *args: Any) -> Any:
        raise HeadkitError(
            f"{self.where} is a stream (datasets.IterableDataset): it cannot be indexed or split; this needs "
            "a Dataset (e.g. datasets.Dataset.from_list(list(stream.take(n))))"
        )

    __getitem__ = subset = lengths = _refuse


class _Examples(torch.utils.data.IterableDataset):
    """The examples of a StreamedData as a torch IterableDataset (what a DataLoader batches)."""

    def __init__(self, data: StreamedData):
        super().__init__()
        self.data, self.epoch = data, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.data.examples(self.epoch)


class CachedExamples(torch.utils.data.Dataset):
    """A streamed dataset after its one backbone pass: the labels and lengths of every example,
    indexed like the feature cache (the token ids are not kept: a cached phase never reads them)."""

    def __init__(self, lengths: np.ndarray, labels: dict[str, Any]):
        self._lengths, self.labels, self.texts, self.pixels, self.more_ids = lengths, labels, list[Any](), None, None

    def __len__(self) -> int:
        return len(self._lengths)

    def lengths(self) -> list[int]:
        return self._lengths.tolist()

    def __getitem__(self, i: int) -> dict[str, Any]:
        # placeholder ids of the example's length: collate pads per-token labels to the batch's longest
        length = int(self._lengths[i])
        return {"index": i, "input_ids": [0] * length, "labels": {h: y[i] for h, y in self.labels.items()}}

    @staticmethod
    def join(offsets: torch.Tensor, labels: list[dict[str, Any]], head_types: dict[str, str]) -> CachedExamples:
        """One pass's chunk labels, and the lengths the feature cache's offsets give, as one dataset."""
        lengths = (offsets[1:] - offsets[:-1]).numpy()
        sizes = [len(next(iter(part.values()))) if part else 0 for part in labels]
        parts = [EncodedData([[]] * n, part) for part, n in zip(labels, sizes, strict=True)]
        return CachedExamples(lengths, concat(parts, head_types).labels)


def prepare_stream(
    tasks: list[Any],
    processor: Any,
    max_length: int,
    seed: int,
    sources: dict[str, Any] | None,
    label_maps: dict[str, list[str]] | None,
    causal: bool = False,
) -> Any:
    """Streamed training data (a `StreamedData`), the in-memory validation data, and the head
    configs with their label maps (see the module docstring for where each comes from)."""
    from headkit.data.images import is_image_processor
    from headkit.heads import head_class

    check_tasks(tasks)
    sources = sources or {}
    keys = {(t.data, t.text, getattr(t, "text_pair", None), t.eval_data) for t in tasks}
    if len(keys) > 1:
        raise DataError(
            "a streamed run trains every head on one stream with the same text column(s) and eval source; "
            f"these tasks read {sorted(str(k[0]) for k in keys)}: join the streams first "
            "(datasets.interleave_datasets), or train from Datasets"
        )
    data, text_column, _, eval_data = keys.pop()
    source = sources.get(data, data)
    if not is_stream(source):
        raise DataError(f"{data}: a streamed run reads its training data from a stream, not {type(source).__name__}")
    if is_image_processor(processor):
        raise DataError(f"{data}: training on a stream of images is not supported yet; use a Dataset")
    # an example of several rows (a pair, a context's choices): the feature pass writes a stream's
    # rows chunk by chunk, not in the whole data's row-by-row layout the cache reads
    pairs = [t.name for t in tasks if head_class(t.type).codec.multi_row or head_class(t.type).codec.inputs == "images"]
    if pairs:
        raise DataError(f"heads {pairs} (pairs of texts, choices, images) cannot train on a stream yet; use a Dataset")
    stream, validation = _open(source, data)
    limit = min((t.limit for t in tasks if t.limit), default=None)
    if limit:  # a stream's sample is its first rows: there is no whole to draw from
        stream = stream.take(limit)
    names = label_names_of(getattr(stream, "features", None))
    probe = Rows(named_rows(list(itertools.islice(iter(stream), PROBE_ROWS)), names), names)
    if not probe:
        raise DataError(f"{data}: the stream is empty")
    given = dict(label_maps or {})
    sample, configs = encode_rows(probe, tasks, data, text_column, processor, max_length, given, causal=causal)
    maps = {**given, **{n: c.labels for n, c in configs.items()}}
    declared = {t.name for t in tasks if t.label in names}
    inferred = [t.name for t in tasks if t.name not in given and t.name not in declared]
    if inferred:
        logger.info(f"label maps of {inferred} read from the first {len(probe)} rows of {data}")
    train = StreamedData(stream, tasks, data, text_column, processor, max_length, maps, names, sample, inferred, causal)
    val = EncodedData([], {}, [])  # no validation
    eval_source = sources.get(eval_data, eval_data) if eval_data else validation
    if eval_source is not None:
        where = str(eval_data or f"{data} (validation split)")
        eval_rows = _read_all(eval_source, where)
        val = encode_rows(eval_rows, tasks, where, text_column, processor, max_length, maps, causal=causal)[0]
    else:
        logger.warning(
            f"{data} is a stream, which cannot be split for validation: training without validation (the last "
            "weights are kept); give eval_dataset (or a task's eval_data) to validate"
        )
    return PreparedData(train, val, configs)  # type: ignore[arg-type]  # a stream reads as EncodedData in the loop


def _read_all(source: Any, where: str) -> Rows:
    """An eval source's rows; a stream is read whole (validation data is held in memory)."""
    if not is_stream(source):
        return read_rows(source)
    stream, _ = _open(source, where)
    names = label_names_of(getattr(stream, "features", None))
    rows = Rows(named_rows(list(stream), names), names)
    if not rows:
        raise DataError(f"{where}: the eval stream is empty")
    return rows
