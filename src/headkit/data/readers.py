"""Where rows come from: a table file, a built-in dataset, or an in-memory `datasets.Dataset`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headkit.data.builtin import BUILTIN_DATASETS
from headkit.data.files import read_file
from headkit.errors import DataError


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
    return read_file(path)
