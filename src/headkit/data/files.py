"""Table files -> rows (a list of dicts): CSV, JSONL/JSON, Parquet and CoNLL token files.

Empty cells become None (a missing label); every other value keeps its file's type until the
head that reads the column parses it (heads/ own label parsing and checking).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from headkit.errors import DataError


def read_file(path: Path) -> list[dict[str, Any]]:
    """Rows of one table file, by its suffix; every failure is a DataError that names the file."""
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
    if path.suffix.lower() == ".json" and (document := _squad_document(text)) is not None:
        from headkit.heads.squad import read_squad

        return read_squad(document, source=str(path))
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


def _squad_document(text: str) -> dict[str, Any] | None:
    """A .json file's object when it is in SQuAD's own layout, {"data": [articles with paragraphs]}
    (JSON Lines files hold one object per line and fail to load as one); else None."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return None
    articles = whole.get("data") if isinstance(whole, dict) else None
    if not isinstance(articles, list) or not articles or not isinstance(articles[0], dict):
        return None
    return whole if "paragraphs" in articles[0] else None


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise DataError(f"{path} is not a readable Parquet file: {e}") from e
    return [{k: (None if is_missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


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


def is_missing(value: Any) -> bool:
    """An empty cell: None, or a float NaN (Parquet and pandas write missing numbers as NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def column_values(rows: list[dict[str, Any]], column: str, source: str) -> list[Any]:
    """One column of a table, or a DataError that lists the columns there are."""
    if column not in rows[0]:
        raise DataError(f"column '{column}' not found in {source}; available columns: {sorted(rows[0])}")
    return [row.get(column) for row in rows]


SEQUENCE_TYPES = (list, tuple, np.ndarray)  # a cell holding several values (Parquet gives ndarrays)
