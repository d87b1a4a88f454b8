"""Streamed data: a `datasets.IterableDataset` (or `hf:...?streaming`) trains without being read
into memory.

A stream has no length and cannot be indexed, shuffled globally or split, so it trains the way
transformers' Trainer trains one: the number of optimizer steps is given (`max_steps`), rows are
encoded as they pass, and validation comes from a separate eval dataset.
"""

from __future__ import annotations

import sys
from typing import Any

from headkit.data.readers import parse_hf_spec
from headkit.errors import DataError, HeadkitError


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
    datasets = sys.modules.get("datasets")  # a datasets object means datasets is already imported
    return datasets is not None and isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict))


def prepare_stream(
    tasks: list[Any],
    processor: Any,
    max_length: int,
    seed: int,
    sources: dict[str, Any] | None,
    label_maps: dict[str, list[str]] | None,
) -> Any:
    """Encoded streamed training data and the head configs (see the module docstring)."""
    raise HeadkitError("training on a streamed dataset is not supported yet")
