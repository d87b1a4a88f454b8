"""The run's validation split, kept as encoded (token ids and each head's encoded labels) in
`validation.json` beside the model, so that `--engine auto` can check other engines against torch
fp32 on exactly the examples training scored, long after the data is gone (ship/engines.py).

JSON, not pickle: it is read back by code that trusts nothing in a run directory. Text runs only
(an image run's pixels are a cache file elsewhere); at most `LIMIT` examples, spread evenly over
the split (which holds one task's examples after another's), which keeps the file small (about
0.4 MB for the demo's 523 short texts; tens of MB at most for 2,048-token inputs) and the check
to seconds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from headkit._fs import atomic_write_bytes
from headkit.data.batching import EncodedData

logger = logging.getLogger(__name__)

VALIDATION_FILE = "validation.json"
FORMAT = "headkit.validation/2"  # /2: an example's further rows in `more_ids` (/1: one in `pair_ids`)
READABLE = (FORMAT, "headkit.validation/1")
LIMIT = 1000  # examples kept: enough for a 0.3-point metric check, small enough to run 4 engines in seconds


def save_validation_set(directory: Path, data: EncodedData) -> Path | None:
    """Write the first `LIMIT` examples of `data` to directory/validation.json; None (and nothing
    written) for image data or labels JSON cannot hold."""
    if data.pixels is not None or not len(data):
        return None
    kept = data.subset(np.linspace(0, len(data) - 1, min(len(data), LIMIT)).round().astype(int))
    try:
        labels = {head: _labels_to_json(values) for head, values in kept.labels.items()}
    except TypeError as e:  # a label encoding of an unforeseen kind: skip the file, never fail the run
        logger.debug("validation split not kept for engine checks: %s", e)
        return None
    record = {
        "format": FORMAT,
        "input_ids": kept.input_ids,
        "token_type_ids": kept.token_type_ids,
        "more_ids": kept.more_ids,
        "more_types": kept.more_types,
        "labels": labels,
    }
    path = directory / VALIDATION_FILE
    atomic_write_bytes(path, json.dumps(record).encode("utf-8"))
    return path


def load_validation_set(directory: Path) -> EncodedData | None:
    """The examples save_validation_set wrote in `directory`, or None when there is no such file
    (or it is of another format or damaged: the engine check then has nothing to run on)."""
    path = directory / VALIDATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") not in READABLE:
            return None
        labels = {head: _labels_from_json(values) for head, values in record["labels"].items()}
        return EncodedData(
            record["input_ids"],
            labels,
            more_ids=record.get("more_ids") or _pairs_before(record),
            token_type_ids=record.get("token_type_ids"),
            more_types=record.get("more_types"),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("%s is unreadable (%s); engines are not checked against it", path, e)
        return None


def _pairs_before(record: dict[str, Any]) -> list[list[list[int]]] | None:
    """The second rows of a file written before examples could have several (`pair_ids`: one each)."""
    pairs = record.get("pair_ids")
    return None if pairs is None else [[ids] for ids in pairs]


def _labels_to_json(values: Any) -> Any:
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "biuf":
            raise TypeError(f"labels of dtype {values.dtype}")
        return {"dtype": str(values.dtype), "shape": list(values.shape), "values": values.ravel().tolist()}
    json.dumps(values)  # per-token lists and the like: a TypeError if JSON cannot hold them
    return {"list": values}


def _labels_from_json(stored: dict[str, Any]) -> Any:
    if "list" in stored:
        return stored["list"]
    return np.asarray(stored["values"], dtype=np.dtype(stored["dtype"])).reshape(stored["shape"])
