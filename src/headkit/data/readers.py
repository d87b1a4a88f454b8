"""Where rows come from: a table file, a built-in dataset, or Hugging Face `datasets`.

`datasets` sources: an in-memory `Dataset` / `DatasetDict` (library use), a folder written by
`save_to_disk`, or `hf:NAME[:CONFIG][:SPLIT]` (loaded through `datasets.load_dataset`, from the
hub or, with HF_HUB_OFFLINE=1, from the local cache). ClassLabel columns become their names, and
the names' order is kept (`Rows.label_names`) so a head's label map follows the dataset's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headkit.data.builtin import BUILTIN_DATASETS
from headkit.data.files import read_file
from headkit.errors import DataError
from headkit.extras import require


class Rows(list):
    """Row dicts, plus the label names a source declares per column (ClassLabel), in their order."""

    label_names: dict[str, list[str]]

    def __init__(self, rows: list[dict[str, Any]], label_names: dict[str, list[str]] | None = None):
        super().__init__(rows)
        self.label_names = label_names or {}


def read_rows(source: Any) -> Rows:
    """Read a file, a built-in dataset, a `datasets` folder or hub dataset, or a Dataset."""
    if _is_datasets_object(source):
        return _dataset_rows(source, "the given dataset")
    name = str(source)
    if name in BUILTIN_DATASETS:
        return Rows(BUILTIN_DATASETS[name]())
    if name.startswith("hf:"):
        return _dataset_rows(_load_hub_dataset(name), name)
    path = Path(name).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        require("datasets", "Reading a dataset folder")
        import datasets

        return _dataset_rows(datasets.load_from_disk(str(path)), name)
    if not path.is_file():
        raise DataError(
            f"data '{name}' not found: expected a file (.csv, .jsonl, .json, .parquet, .conll), a folder written by "
            f"Dataset.save_to_disk, hf:NAME[:CONFIG][:SPLIT], or a built-in dataset: {sorted(BUILTIN_DATASETS)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    return Rows(read_file(path))


def _is_datasets_object(source: Any) -> bool:
    return hasattr(source, "column_names") and (hasattr(source, "to_list") or hasattr(source, "keys"))


def _load_hub_dataset(spec: str) -> Any:
    """hf:NAME[:CONFIG][:SPLIT] -> a Dataset (the train split unless named)."""
    require("datasets", "Reading hf: datasets")
    import datasets

    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"'{spec}' should look like hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 else None) or None, parts[2] if len(parts) > 2 else None
    try:
        return datasets.load_dataset(name, config, split=split or "train")
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise DataError(f"{spec}: datasets could not load it ({type(e).__name__}: {e})") from e


def _dataset_rows(dataset: Any, where: str) -> Rows:
    """A Dataset (a DatasetDict: its train split) as rows, ClassLabel ids turned into names."""
    if not hasattr(dataset, "to_list"):  # a DatasetDict
        splits = list(dataset.keys())
        if "train" not in splits:
            raise DataError(f"{where} has the splits {splits} and none is 'train'; pass one split (dataset['name'])")
        dataset = dataset["train"]
    if len(dataset) == 0:
        raise DataError(f"{where} is empty")
    names: dict[str, list[str]] = {}
    for column, feature in dataset.features.items():
        inner = getattr(feature, "feature", None)  # List(ClassLabel) / Sequence(ClassLabel)
        label = feature if hasattr(feature, "names") and hasattr(feature, "int2str") else None
        label = label or (inner if hasattr(inner, "names") and hasattr(inner, "int2str") else None)
        if label is not None:
            names[column] = list(label.names)
    rows = dataset.to_list()
    for column, classes in names.items():
        for row in rows:
            row[column] = _names(row[column], classes)
    return Rows(rows, names)


def _names(value: Any, classes: list[str]) -> Any:
    """ClassLabel ids (one, or a list) -> names; -1 (the datasets convention for none) -> None."""
    if isinstance(value, list):
        return [_names(v, classes) for v in value]
    if value is None or value == -1:
        return None
    return classes[value]
