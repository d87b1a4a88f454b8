"""The layout of a headkit save on disk, and reading its manifest.

ship/save.py writes saves and ship/load.py restores them; what both of them, and the backbone
loader, need to know of a save's folders lives here, below all three: the file and folder names,
reading `heads.json` (`read_manifest`) and `training.json` (`read_training`), finding a save
(`find_save`) and telling whether a save's backbone/ holds weights (`holds_weights`: a LoRA
save's holds only its base's config). Loading a backbone from a save's backbone/ folder
(backbone/load.py) therefore needs nothing from ship/.
ship/save.py re-exports every name, so `from headkit.ship.save import MANIFEST` keeps working.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from headkit.errors import CheckpointError
from headkit.heads import storage

logger = logging.getLogger(__name__)

FORMAT = "headkit.heads"
FORMAT_VERSION = 2
MANIFEST = "heads.json"
HEADS_DIR = "heads"
WEIGHTING = "weighting.safetensors"
WEIGHTS = "heads.safetensors"  # format 1: every head's tensors in one file
BACKBONE_DIR = "backbone"
ADAPTER_DIR = "adapter"
# the facts of the run that trained the model (strategy, hyperparameters, examples and scores per
# head, data, base model: training/finish.py `card_info`), so a model loaded and saved again, or
# pushed, still has them for its card; plain JSON, absent from saves made by hand and older ones
TRAINING = "training.json"


def read_json_manifest(path: Path, expected_format: str) -> dict:
    """A JSON manifest whose "format" must be `expected_format`; damage is a CheckpointError."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is damaged") from e
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        raise CheckpointError(f'{path} is not a headkit manifest (expected "format": "{expected_format}")')
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and validate `heads.json`, of either format. "heads" maps each head to its config dict
    (read from its folder in format 2, whose listing is kept as "head_files")."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{Path(directory)} has no {MANIFEST}, so it is not a headkit head checkpoint "
            "(write one with headkit.save_heads(model, dir) or headkit.save(model, dir))"
        )
    manifest = read_json_manifest(path, FORMAT)
    heads = manifest.get("heads")
    if not isinstance(heads, dict) or not isinstance(manifest.get("backbone"), dict):
        raise CheckpointError(f'{path} lacks its "heads" or "backbone" section; the checkpoint is damaged')
    version = manifest.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version}, newer than this headkit understands ({FORMAT_VERSION}); "
            "upgrade headkit"
        )
    if version >= 2:
        manifest["head_files"] = {name: _listed(path, name, entry) for name, entry in heads.items()}
        manifest["heads"] = {
            name: storage.read_head_config(Path(directory) / entry["path"], entry["sha256"].get(storage.CONFIG))
            for name, entry in manifest["head_files"].items()
        }
    elif not all(isinstance(c, dict) for c in heads.values()):
        raise CheckpointError(f"{path} has a head whose config is not an object; the checkpoint is damaged")
    return manifest


def _listed(path: Path, name: str, entry: Any) -> dict:
    """A head's listing in a format-2 manifest, checked to name a folder inside the save."""
    folder = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(folder, str) or Path(folder).is_absolute() or ".." in Path(folder).parts:
        raise CheckpointError(f"{path} lists head {name!r} without a folder inside the save; the checkpoint is damaged")
    return {"tied": {}, "shared": {}, **entry, "sha256": entry.get("sha256") or {}}


def read_training(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The run facts a save keeps (`TRAINING`), or None when it has none. They only describe the
    model (its card), so a damaged file is warned about and left out, not a reason to refuse the load."""
    path = Path(directory) / TRAINING
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        logger.warning(f"warning: {path} is not valid JSON ({e}); the model's training facts are left out")
        return None
    if not isinstance(facts, dict):
        logger.warning(f"warning: {path} does not hold an object; the model's training facts are left out")
        return None
    return facts


def holds_weights(directory: str | os.PathLike) -> bool:
    """Whether a checkpoint folder holds weight files transformers loads (a LoRA save's backbone/
    holds only its base's config)."""
    from headkit.hub import CHECKPOINT_WEIGHTS

    return any((Path(directory) / name).is_file() for name in CHECKPOINT_WEIGHTS)


def find_save(path: str | os.PathLike, with_backbone: bool = True) -> Path | None:
    """The headkit save at `path` or, for a training run, at `path/model`; None if there is none."""
    for candidate in (Path(path), Path(path) / "model"):
        if (candidate / MANIFEST).is_file() and (not with_backbone or (candidate / BACKBONE_DIR).is_dir()):
            return candidate
    return None
