"""Where rows come from: a table file, a built-in dataset, Hugging Face `datasets`, or a table in memory.

`datasets` sources: an in-memory `Dataset` / `DatasetDict` (library use), a folder written by
`save_to_disk`, or `hf:NAME[:CONFIG][:SPLIT]` (loaded through `datasets.load_dataset`, from the
hub or, with HF_HUB_OFFLINE=1, from the local cache). SPLIT is any split expression `datasets`
reads: `train`, `train[:1000]`, `train[10%:20%]`, `train+validation` (the colons inside the
brackets are the slice's, not separators). ClassLabel columns become their names, and the names'
order is kept (`Rows.label_names`) so a head's label map follows the dataset's; a pandas
categorical column keeps its categories' order the same way.

Tables in memory (library use, `headkit.train(..., train_dataset=...)`): a pandas DataFrame, a
dict of equal-length lists (columns) or a list of dicts (rows). Missing values (None, NaN) are
missing labels, as empty cells of a file are.

Streams (`datasets.IterableDataset`, `hf:...?streaming`) are never read here: they have no
length and may not fit in memory; `data/streaming.py` encodes them as they pass.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headkit.data.builtin import BUILTIN_DATASETS
from headkit.data.files import read_file
from headkit.errors import DataError


class Rows(list):
    """Row dicts, plus the label names a source declares per column (ClassLabel), in their order."""

    label_names: dict[str, list[str]]

    def __init__(self, rows: list[dict[str, Any]], label_names: dict[str, list[str]] | None = None):
        super().__init__(rows)
        self.label_names = label_names or {}


def read_rows(source: Any) -> Rows:
    """Rows of a file, a built-in dataset, a `datasets` folder or hub dataset, a Dataset, a pandas
    DataFrame, a dict of column lists or a list of row dicts (`Rows` already read: as they are,
    with the label names their dataset declared)."""
    if isinstance(source, Rows):
        return source
    if _is_datasets_object(source):
        if is_iterable_dataset(source):
            raise DataError(
                "a streamed dataset (datasets.IterableDataset) cannot be read into rows: it has no length; "
                "it trains through headkit.data.streaming (give it as train_dataset)"
            )
        return _dataset_rows(source, "the given dataset")
    if _is_dataframe(source):
        return _frame_rows(source)
    if isinstance(source, dict):
        return _column_rows(source)
    if isinstance(source, (list, tuple)):
        return _record_rows(source)
    name = str(source)
    if name in BUILTIN_DATASETS:
        return Rows(BUILTIN_DATASETS[name]())
    if name.startswith("hf:"):
        spec = parse_hf_spec(name)
        if spec.streaming:
            raise DataError(
                f"{name} asks for streaming, which trains through headkit.data.streaming and cannot be read "
                "into rows; drop '?streaming' to load the split into memory"
            )
        return _dataset_rows(load_hub_dataset(spec), name)
    path = Path(name).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        import datasets

        return _dataset_rows(datasets.load_from_disk(str(path)), name)
    if not path.is_file():
        raise DataError(
            f"data '{name}' not found: expected a file (.csv, .jsonl, .json, .parquet, .conll), a folder written by "
            f"Dataset.save_to_disk, {HF_FORMS}, or a built-in dataset: {sorted(BUILTIN_DATASETS)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    return Rows(read_file(path))


# ----------------------------------------------------------------------------- tables in memory


def _is_dataframe(source: Any) -> bool:
    pandas = sys.modules.get("pandas")  # a DataFrame means pandas is already imported
    return pandas is not None and isinstance(source, pandas.DataFrame)


def _missing(value: Any) -> Any:
    """NaN (pandas' and numpy's missing value) -> None, numpy scalars -> Python values."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _frame_rows(frame: Any) -> Rows:
    """A pandas DataFrame's rows; a categorical column's categories become its label names, in order."""
    if frame.empty:
        raise DataError(f"the given DataFrame is empty ({len(frame)} rows, columns {list(frame.columns)})")
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise DataError(f"the given DataFrame has duplicated column names {duplicated}; give each column its own name")
    names = {
        str(column): [str(c) for c in frame[column].cat.categories]
        for column in frame.columns
        if str(frame[column].dtype) == "category"
    }
    columns = [str(c) for c in frame.columns]
    rows = [
        {column: _missing(value) for column, value in zip(columns, values, strict=True)}
        for values in frame.itertuples(index=False, name=None)
    ]
    for column in names:
        for row in rows:
            row[column] = None if row[column] is None else str(row[column])
    return Rows(rows, names)


def _column_rows(columns: dict[Any, Any]) -> Rows:
    """A dict of equal-length column lists (`Dataset.from_dict`'s input) -> rows."""
    if not columns:
        raise DataError("the given dict has no columns; give {column: [values, ...], ...}")
    bad = [str(k) for k, v in columns.items() if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__")]
    if bad:
        raise DataError(
            f"the given dict's columns {bad} are not lists of values; a table in a dict is {{column: [values]}} "
            "(a list of row dicts also works)"
        )
    lengths = {str(k): len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"the given dict's columns have different lengths: {lengths}; every column needs one value per row"
        )
    n = next(iter(lengths.values()))
    if n == 0:
        raise DataError(f"the given dict's columns {list(lengths)} are empty")
    values = {str(k): list(v) for k, v in columns.items()}
    return Rows([{k: _missing(v[i]) for k, v in values.items()} for i in range(n)])


def _record_rows(records: list[Any] | tuple[Any, ...]) -> Rows:
    """A list of row dicts (`Dataset.from_list`'s input) -> rows; a key a row lacks is a missing value."""
    if not records:
        raise DataError("the given list of rows is empty")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(
            f"row {bad} of the given list is a {type(records[bad]).__name__}, not a dict; a table as a list is "
            "[{column: value, ...}, ...]"
        )
    return Rows([{str(k): _missing(v) for k, v in r.items()} for r in records])


# ----------------------------------------------------------------------------- datasets


def _is_datasets_object(source: Any) -> bool:
    return hasattr(source, "column_names") and (hasattr(source, "to_list") or hasattr(source, "keys"))


def is_iterable_dataset(source: Any) -> bool:
    """A streamed `datasets.IterableDataset` or `IterableDatasetDict` (no length, read as it passes)."""
    datasets = sys.modules.get("datasets")  # a datasets object means datasets is already imported
    return datasets is not None and isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict))


def is_split_dict(source: Any) -> bool:
    """A `datasets.DatasetDict` or `IterableDatasetDict`: splits by name, not rows."""
    datasets = sys.modules.get("datasets")  # a datasets object means datasets is already imported
    return datasets is not None and isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict))


HF_FORMS = (
    "hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT (no config: hf:NAME::SPLIT), where SPLIT is a datasets "
    "split expression (train, train[:1000], train[10%:20%], train+validation), with ?streaming at the end to "
    "stream the split instead of loading it"
)


@dataclass(frozen=True)
class HubSpec:
    """`hf:NAME[:CONFIG][:SPLIT][?streaming]`, parsed."""

    name: str
    config: str | None
    split: str  # a datasets split expression; the train split unless named
    streaming: bool = False
    text: str = ""  # the spec as written, for messages


def parse_hf_spec(spec: str) -> HubSpec:
    """Split `hf:NAME[:CONFIG][:SPLIT][?streaming]` at the colons outside brackets (a slice such as
    `train[10:20]` has its own). A bad spec is a DataError that shows the forms expected."""
    body, streaming = spec[3:], False
    if "?" in body:
        body, _, query = body.partition("?")
        if query not in ("streaming", "streaming=true", "streaming=True", "streaming=1"):
            raise DataError(f"'{spec}': unknown option '?{query}'; expected {HF_FORMS}")
        streaming = True
    parts, depth, current = [], 0, ""
    for char in body:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise DataError(f"'{spec}': unbalanced brackets; expected {HF_FORMS}")
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    if depth != 0 or not parts[0] or len(parts) > 3 or any("[" in p for p in parts[:2]):
        raise DataError(f"'{spec}' should look like {HF_FORMS}")
    config = (parts[1] if len(parts) > 1 else None) or None
    split = (parts[2] if len(parts) > 2 else None) or "train"
    return HubSpec(parts[0], config, split, streaming, spec)


def load_hub_dataset(spec: HubSpec | str) -> Any:
    """A Dataset (streaming: an IterableDataset) through `datasets.load_dataset`: the split
    expression is datasets' own, so it does the slicing (`train[:1000]` reads only those rows)."""
    import datasets

    where = spec if isinstance(spec, str) else spec.text
    spec = parse_hf_spec(spec) if isinstance(spec, str) else spec
    split, rows = spec.split, None
    if spec.streaming and "[" in split:  # a stream has no length: only a first-rows slice can be taken
        split, rows = _stream_slice(spec)
    options = {"streaming": True} if spec.streaming else {}
    try:
        dataset = datasets.load_dataset(spec.name, spec.config, split=split, **options)
    except (FileNotFoundError, ValueError, ConnectionError, OSError, KeyError) as e:
        raise DataError(
            f"{where}: datasets could not load it ({type(e).__name__}: {e}); the forms are {HF_FORMS}"
        ) from e
    if rows is not None:
        start, stop = rows
        dataset = dataset.skip(start) if start else dataset
        dataset = dataset.take(stop - start) if stop is not None else dataset
    return dataset


def _stream_slice(spec: HubSpec) -> tuple[str, tuple[int, int | None]]:
    """`train[A:B]` of a stream -> ("train", (A, B)), taken with skip/take as the rows pass;
    a percentage needs the split's length, which a stream does not have."""
    match = re.fullmatch(r"([\w.-]+)\[(\d*):(\d*)\]", spec.split)
    if match is None:
        raise DataError(
            f"{spec.text}: a streamed split can be sliced only by row numbers (train[:1000], train[500:1500]), "
            f"not {spec.split!r}: a stream has no length to take a percentage of; drop ?streaming to load it"
        )
    start, stop = int(match[2] or 0), int(match[3]) if match[3] else None
    if stop is not None and stop <= start:
        raise DataError(f"{spec.text}: the slice [{match[2]}:{match[3]}] selects no rows")
    return match[1], (start, stop)


def _dataset_rows(dataset: Any, where: str) -> Rows:
    """A Dataset (a DatasetDict: its train split) as rows, ClassLabel ids turned into names."""
    if not hasattr(dataset, "to_list"):  # a DatasetDict
        splits = list(dataset.keys())
        if "train" not in splits:
            raise DataError(f"{where} has the splits {splits} and none is 'train'; pass one split (dataset['name'])")
        dataset = dataset["train"]
    if len(dataset) == 0:
        raise DataError(f"{where} is empty")
    names = label_names_of(dataset.features)
    return Rows(named_rows(dataset.to_list(), names), names)


def label_names_of(features: Any) -> dict[str, list[str]]:
    """The class names each ClassLabel column (or list of ClassLabels) declares, in their order."""
    names: dict[str, list[str]] = {}
    for column, feature in (features or {}).items():
        inner = getattr(feature, "feature", None)  # List(ClassLabel) / Sequence(ClassLabel)
        label = feature if hasattr(feature, "names") and hasattr(feature, "int2str") else None
        label = label or (inner if hasattr(inner, "names") and hasattr(inner, "int2str") else None)
        if label is not None:
            names[column] = list(label.names)
    return names


def named_rows(rows: list[dict[str, Any]], names: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Rows with their ClassLabel ids turned into the names (in place)."""
    for column, classes in names.items():
        for row in rows:
            row[column] = _names(row[column], classes)
    return rows


def _names(value: Any, classes: list[str]) -> Any:
    """ClassLabel ids (one, or a list) -> names; -1 (the datasets convention for none) -> None."""
    if isinstance(value, list):
        return [_names(v, classes) for v in value]
    if value is None or value == -1:
        return None
    return classes[value]
