"""Heads loaded onto, and taken off, a running server's backbone (the /admin routes).

A head save (`headkit.save_heads`, or a run's or full save's heads) is read and checked against the
served backbone's fingerprint before anything changes: heads trained on other weights, another
architecture or a shape that does not fit are refused with the reason, and the server keeps
answering as before. The change itself happens between two batches (under the batcher's lock), so
the batch in progress finishes with the heads it started with and the next batch sees the new set;
a request still waiting for a head that was unloaded gets a 409 saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from headkit.errors import CheckpointError, HeadConfigError, UsageError
from headkit.heads import config_from_dict
from headkit.save_layout import find_save
from headkit.ship.load import head_tensors, load_head_weights, read_save


class SaveNotFound(CheckpointError):
    """No head save under the name given (HTTP 404)."""


class HeadClash(HeadConfigError):
    """A head of that name is served already (HTTP 409)."""


def save_in(heads_dir: Path, name: str) -> Path:
    """The head save `name` (a folder inside `heads_dir`); a name that leads outside it is refused,
    so an admin request can never make the server read an arbitrary path."""
    path = (heads_dir / name).resolve()
    if not path.is_relative_to(heads_dir) or os.path.isabs(name):
        raise UsageError(f"'{name}' is not a folder inside the server's heads folder")
    found = find_save(path, with_backbone=False)
    if found is None:
        raise SaveNotFound(f"no head save (heads.json) in '{name}' inside the server's heads folder")
    return found


def read_heads(model: Any, directory: Path, names: list[str] | None) -> tuple[dict, dict[str, dict]]:
    """The manifest of the save in `directory` and the tensors of its heads `names` (None: all),
    after checking they fit `model`'s backbone and do not clash with its heads. Nothing changes yet."""
    manifest = read_save(directory, model.backbone)  # FingerprintMismatchError: other weights or architecture
    if "head_files" not in manifest:
        raise CheckpointError(f"{directory} is an older save (format 1); save its heads again to load them here")
    available = list(manifest["heads"])
    names = names or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise HeadConfigError(f"the save holds heads {available}, not {unknown}")
    check_free(model, names)
    return manifest, {name: head_tensors(directory, manifest, name) for name in names}


def check_free(model: Any, names: Iterable[str]) -> None:
    """Raise `HeadClash` when the model already has a head of one of these names."""
    taken = sorted(set(names) & set(model.heads))
    if taken:
        raise HeadClash(f"the server already has head(s) {taken}; unload them first")


def add_heads(model: Any, directory: Path, manifest: dict, states: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    """Build the heads on the model and fill them (call it between batches); all or none are added."""
    added = []
    try:
        for name, state in states.items():
            # add_head refuses a config that does not fit (input size, pooling, the encoding heads share)
            model.add_head(name, config_from_dict(manifest["heads"][name]))
            added.append(name)
            load_head_weights(model, directory, manifest, name, state)
            model.heads[name].eval().requires_grad_(False)
    except Exception:
        for name in added:
            model.remove_head(name)
        raise
    return added


def describe(config: dict[str, Any]) -> dict[str, Any]:
    """A head, from its config in a manifest, as /metadata lists it."""
    return {"type": config["type"], "labels": config.get("labels", []), "pooling": config.get("pooling")}
