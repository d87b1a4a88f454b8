"""Labelled data in, padded tensor batches out.

    source (CSV / JSONL / Parquet / CoNLL / datasets.Dataset / built-in name)
      -> rows (list of dicts)  -> per-head label encoding (label maps inferred from training data)
      -> EncodedData (token ids + label arrays) -> length-grouped, dynamically padded batches

A `TaskSpec` names one head and where its labels live. Tasks that share a source and text
column become one dataset with several label columns; tasks on different sources become
separate datasets whose examples are interleaved, each missing the other heads' labels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from headkit.builtin_data import BUILTIN_DATASETS
from headkit.errors import DataError
from headkit.heads import IGNORE_INDEX

NAN = float("nan")
TOKEN_TYPES = ("token-classification",)
FLOAT_TYPES = ("multilabel", "regression", "box")


@dataclass
class TaskSpec:
    """One head and where its labels come from.

    Attributes:
        name: the head's name (a Python identifier).
        data: a file (.csv, .jsonl, .json, .parquet, .conll/.txt/.tsv token files) or a built-in
            dataset: rotten_tomatoes, bbc_news, tweet_ner, word_scores.
        label: the column holding this head's labels (regression: comma-separated columns).
        text: the column holding the input text (token files: ignored).
        type: head type: classification, multilabel, regression, token-classification.
        pooling: cls, mean, max, last or pooler (the backbone's own pooling layer; pooled heads).
        loss_weight: this head's weight in the total loss.
        limit: use at most this many rows of the source (a seeded random sample).
    """

    name: str
    data: str
    label: str = "label"
    text: str = "text"
    type: str = "classification"
    pooling: str = "mean"
    loss_weight: float = 1.0
    limit: int | None = None


def parse_task(spec: str, data: str | None, text: str = "text", pooling: str = "mean") -> TaskSpec:
    """`name:column[:type]` (with shared --data/--text) -> TaskSpec."""
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise DataError(f"--head '{spec}' should look like NAME:COLUMN or NAME:COLUMN:TYPE (e.g. sentiment:label)")
    if not data:
        raise DataError(f"--head '{spec}' needs --data FILE (or use `tasks:` in a YAML config)")
    kind = parts[2] if len(parts) > 2 else "classification"
    return TaskSpec(name=parts[0], data=data, label=parts[1], text=text, type=kind, pooling=pooling)


# ----------------------------------------------------------------------------- reading sources


def read_rows(source: Any) -> list[dict[str, Any]]:
    """Read a file, a built-in dataset or a `datasets.Dataset` into a list of row dicts."""
    if hasattr(source, "to_list") and hasattr(source, "column_names"):  # datasets.Dataset
        rows = source.to_list()
        if not rows:
            raise DataError("the given datasets.Dataset is empty")
        return rows
    name = str(source)
    if name in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[name]()
    path = Path(name).expanduser()
    if not path.is_file():
        raise DataError(
            f"data '{name}' not found: expected a file (.csv, .jsonl, .json, .parquet, .conll) or a built-in "
            f"dataset: {sorted(BUILTIN_DATASETS)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            rows = _read_csv(path)
        elif suffix in (".jsonl", ".json"):
            rows = _read_jsonl(path)
        elif suffix == ".parquet":
            rows = _read_parquet(path)
        elif suffix in (".conll", ".txt", ".tsv", ".iob"):
            rows = read_conll(path)
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}'; use .csv, .jsonl, .parquet or .conll")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from e
    if not rows:
        raise DataError(f"{path} has no data rows")
    return rows


def _read_csv(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:  # a non-UTF-8 file raises UnicodeDecodeError, which read_rows reports
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path} has no header and no rows") from e
    except pd.errors.ParserError as e:
        raise DataError(f"{path} is not a well-formed CSV file: {e}") from e
    # Empty cells are missing labels; every other value stays a string until its head parses it.
    return [{k: (None if v == "" else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON: {e}") from e
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}: not valid JSON ({e.msg}); expected one object per line") from e
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: record {bad + 1} is not a JSON object")
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise DataError(f"{path} is not a readable Parquet file: {e}") from e
    return [{k: (None if _is_missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def read_conll(path: str | os.PathLike) -> list[dict[str, Any]]:
    """CoNLL-style token files: `token<TAB>tag` per line, blank (or tab-only) line between sentences."""
    rows: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                if tokens:
                    rows.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2:
                raise DataError(
                    f"{path}, line {number}: expected 'token<TAB>tag', got {line!r} (each token needs exactly one tag)"
                )
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ----------------------------------------------------------------------------- label encoding


def column_values(rows: list[dict[str, Any]], column: str, source: str) -> list[Any]:
    """One column of a table, or a DataError that lists the columns there are."""
    if column not in rows[0]:
        raise DataError(f"column '{column}' not found in {source}; available columns: {sorted(rows[0])}")
    return [row.get(column) for row in rows]


SEQUENCE_TYPES = (list, tuple, np.ndarray)  # a cell holding several values (Parquet gives ndarrays)


def as_label_list(value: Any) -> list[str]:
    """A multi-label value as its label names: a list as is, a string split at '|' (CSV cells)."""
    if isinstance(value, SEQUENCE_TYPES):
        return [str(v) for v in value]
    return [part for part in str(value).split("|") if part]


def infer_labels(values: list[Any], head_type: str) -> list[str]:
    """The label map of a head, inferred from its training labels (sorted for determinism)."""
    present = [v for v in values if not _is_missing(v)]
    if head_type == "multilabel":
        return sorted({name for v in present for name in as_label_list(v)})
    if head_type in TOKEN_TYPES:
        tags = sorted({str(t) for v in present for t in v})
        return (["O"] if "O" in tags else []) + [t for t in tags if t != "O"]
    return sorted({str(v) for v in present})


def _regression_value(value: Any, column: str, row: int) -> float:
    if _is_missing(value):
        if value is not None:
            raise DataError(
                f"regression target '{column}' is NaN in row {row}; leave the cell empty for a missing label"
            )
        return NAN
    if isinstance(value, bool):
        raise DataError(f"regression target '{column}' in row {row} is a boolean ({value}); expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"regression target '{column}' in row {row} is not a number: {value!r}; check the label column"
        ) from None
    if not math.isfinite(number):
        raise DataError(
            f"regression target '{column}' is {value!r} in row {row}; leave the cell empty for a missing label"
        )
    return number


def encode_labels(rows: list[dict[str, Any]], task: TaskSpec, labels: list[str], source: str) -> Any:
    """Raw column values -> the head's label array (class ids, multi-hot, targets, tag lists)."""
    if task.type == "regression":
        columns = [c.strip() for c in task.label.split(",")]
        values = [column_values(rows, c, source) for c in columns]
        return np.array(
            [
                [_regression_value(v[i], c, i + 1) for v, c in zip(values, columns, strict=True)]
                for i in range(len(rows))
            ],
            dtype=np.float32,
        ).reshape(len(rows), len(columns))
    column = "tags" if task.type in TOKEN_TYPES and task.label == "label" else task.label
    values = column_values(rows, column, source)
    index = {name: i for i, name in enumerate(labels)}

    def lookup(name: str, row: int) -> int:
        if name not in index:
            raise DataError(
                f"label {name!r} of head '{task.name}' (row {row}) was never seen in training; "
                f"known labels: {labels[:20]}"
            )
        return index[name]

    if task.type == "classification":
        out = np.full(len(rows), IGNORE_INDEX, dtype=np.int64)
        for i, v in enumerate(values):
            if not _is_missing(v):
                out[i] = lookup(str(v), i + 1)
        return out
    if task.type == "multilabel":
        out = np.full((len(rows), len(labels)), NAN, dtype=np.float32)
        for i, v in enumerate(values):
            if not _is_missing(v):
                out[i] = 0.0
                for name in as_label_list(v):
                    out[i, lookup(name, i + 1)] = 1.0
        return out
    if task.type in TOKEN_TYPES:
        token_lists = column_values(rows, "tokens", source)
        encoded = []
        for i, (tokens, tags) in enumerate(zip(token_lists, values, strict=True)):
            if _is_missing(tags):
                encoded.append(None)
                continue
            if len(tokens) != len(tags):
                raise DataError(
                    f"head '{task.name}', example {i + 1}: {len(tokens)} tokens but {len(tags)} tags; "
                    "every token needs exactly one tag"
                )
            encoded.append([lookup(str(t), i + 1) for t in tags])
        return encoded
    raise DataError(f"head type '{task.type}' cannot be trained from tabular data yet (task '{task.name}')")


def check_label_dtype(values: list[Any], task: TaskSpec, source: str) -> None:
    """Catch a label column of the wrong kind before it becomes a confusing label map."""
    present = [v for v in values if not _is_missing(v)]
    if not present:
        raise DataError(f"column '{task.label}' of {source} has no labels at all for head '{task.name}'")
    if task.type == "classification":
        nested = next((v for v in present if isinstance(v, list | dict)), None)
        if nested is not None:
            raise DataError(
                f"column '{task.label}' of {source} holds a {type(nested).__name__} ({nested!r}); a classification "
                "label must be one value (use type multilabel for lists of labels)"
            )
        distinct = {str(v) for v in present}
        if len(distinct) > max(50, len(present) // 2):
            raise DataError(
                f"column '{task.label}' of {source} has {len(distinct)} distinct values in {len(present)} rows: it "
                f"looks continuous or free text, not class labels. Use type regression, or another column."
            )
        if len(distinct) < 2:
            raise DataError(
                f"column '{task.label}' of {source} has a single class {sorted(distinct)}; "
                "a classifier needs at least 2"
            )


# ----------------------------------------------------------------------------- encoded data


@dataclass
class EncodedData(Dataset):
    """Token ids (text) or pixel tensors (images) plus each head's labels, one entry per example.

    Heads absent from `labels` are missing for every example here."""

    input_ids: list[list[int]]
    labels: dict[str, Any] = field(default_factory=dict)  # head -> np.ndarray or list of per-token lists
    texts: list[Any] = field(default_factory=list)
    pixels: torch.Tensor | None = None  # (N, C, H, W) for image data; input_ids are then empty lists

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = {"index": i, "input_ids": self.input_ids[i], "labels": {h: y[i] for h, y in self.labels.items()}}
        if self.pixels is not None:
            example["pixel_values"] = self.pixels[i]
        return example

    def subset(self, indices: list[int] | np.ndarray) -> EncodedData:
        idx = [int(i) for i in indices]
        labels = {h: (y[idx] if isinstance(y, np.ndarray) else [y[i] for i in idx]) for h, y in self.labels.items()}
        texts = [self.texts[i] for i in idx] if self.texts else []
        pixels = self.pixels[idx] if self.pixels is not None else None
        return EncodedData([self.input_ids[i] for i in idx], labels, texts, pixels)

    def lengths(self) -> list[int]:
        return [len(x) or 1 for x in self.input_ids]  # images: all one length


def concat(parts: list[EncodedData], heads: dict[str, str]) -> EncodedData:
    """Join datasets; each example gets a 'missing' label for heads its dataset lacks."""
    input_ids, texts = [], []
    for part in parts:
        input_ids += part.input_ids
        texts += part.texts or [None] * len(part)
    images = [p.pixels is not None for p in parts]
    if any(images) and not all(images):
        raise DataError("a run trains on text or on images, not both: give every task the same kind of data")
    pixels = torch.cat([p.pixels for p in parts]) if all(images) and parts else None
    labels: dict[str, Any] = {}
    for head, head_type in heads.items():
        if head_type in TOKEN_TYPES:
            labels[head] = [y for p in parts for y in (p.labels[head] if head in p.labels else [None] * len(p))]
            continue
        have = [p.labels[head] for p in parts if head in p.labels]
        shape, dtype = have[0].shape[1:], have[0].dtype
        fill = IGNORE_INDEX if head_type == "classification" else NAN
        labels[head] = np.concatenate(
            [p.labels[head] if head in p.labels else np.full((len(p), *shape), fill, dtype) for p in parts]
        )
    return EncodedData(input_ids, labels, texts, pixels)


def fill_missing_float(values: list[Any], width: int) -> np.ndarray:
    return np.stack([np.full(width, NAN, np.float32) if v is None else np.asarray(v, np.float32) for v in values])


def tokenize(
    tokenizer, rows: list[dict[str, Any]], text_column: str, max_length: int, source: str, is_tokens: bool
) -> tuple[list[list[int]], list[list[int | None]] | None]:
    """Token ids (truncated to max_length) and, for pre-split tokens, the word index of each position."""
    if is_tokens:
        words = column_values(rows, "tokens", source)
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        return enc["input_ids"], [enc.word_ids(i) for i in range(len(words))]
    texts = column_values(rows, text_column, source)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise DataError(f"row {bad + 1} of {source}: text column '{text_column}' is empty or not text: {texts[bad]!r}")
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return enc["input_ids"], None


def align_tags(tag_ids: list[int] | None, word_ids: list[int | None]) -> list[int]:
    """Word-level tag ids -> token positions: first sub-word gets the tag, the rest -100."""
    out, previous = [], None
    for word in word_ids:
        if tag_ids is None or word is None or word == previous:
            out.append(IGNORE_INDEX)
        else:
            out.append(tag_ids[word])
        previous = word
    return out


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic shuffled train/validation split."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0  # a requested split is never empty
    if val_fraction > 0 and n - n_val < 1:
        raise DataError(f"only {n} examples: too few to hold out {val_fraction:.0%} for validation")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ----------------------------------------------------------------------------- batching


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of similar length (less padding), in a random order that is fixed by seed + epoch.

    Indices are shuffled, cut into mega-batches of 50 batches, sorted by length inside each
    mega-batch and cut into batches; the batch order is shuffled again. Determinism per epoch
    is what lets an interrupted run resume mid-epoch on exactly the same batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, shuffle: bool = True):
        self.lengths, self.batch_size, self.seed, self.shuffle = lengths, batch_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i])
            return [order[i : i + size] for i in range(0, n, size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n).tolist()
        mega = size * 50
        batches = []
        for start in range(0, n, mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def collate(
    examples: list[dict[str, Any]], pad_id: int, head_types: dict[str, str], widths: dict[str, int]
) -> dict[str, Any]:
    """Pad a list of examples to the longest one in the batch (dynamic padding); stack images."""
    if "pixel_values" in examples[0]:
        length = 0
        batch: dict[str, Any] = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    else:
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for i, e in enumerate(examples):
            input_ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            attention_mask[i, : len(e["input_ids"])] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    labels: dict[str, torch.Tensor] = {}
    for head, head_type in head_types.items():
        values = [e["labels"].get(head) for e in examples]
        if head_type in TOKEN_TYPES:
            y = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
            for i, v in enumerate(values):
                if v is not None:
                    y[i, : len(v)] = torch.tensor(v[:length])
        elif head_type in FLOAT_TYPES:
            y = torch.from_numpy(fill_missing_float(values, widths[head]))
        else:
            y = torch.tensor([IGNORE_INDEX if v is None else int(v) for v in values], dtype=torch.long)
        labels[head] = y
    return {**batch, "labels": labels, "index": torch.tensor([e["index"] for e in examples])}


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "input_values")


def model_inputs(batch: dict[str, Any], device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a batch that the backbone reads (whatever the modality), on `device`."""
    return {k: (v.to(device) if device is not None else v) for k, v in batch.items() if k in MODEL_INPUTS}
