"""Head-only checkpoints and full saves, written atomically, read without pickle.

A head checkpoint is two files, like a sentence-transformers module:
    heads.json          format version, head configs (with label maps), loss weighting,
                        the backbone fingerprint, and the sha256 of the weights file
    heads.safetensors   head (and learned weighting) parameters, tied weights left out
Loading them (`load_heads`, `load`) builds a MultiHeadModel, so it lives in headkit.model.
A full save is the same directory plus `backbone/` (`save_pretrained`, safetensors, and the
tokenizer or image processor) and, for LoRA models, `adapter/` (peft's adapter files).
Each file is written to a temporary name and renamed into
place; a full save is built in a temporary directory and swapped in, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from headkit._fs import atomic_write_bytes, atomic_write_json, staged_dir
from headkit.backbone.fingerprint import differing_weights, fingerprint
from headkit.errors import CheckpointError, FingerprintMismatchError

logger = logging.getLogger(__name__)

FORMAT = "headkit.heads"
FORMAT_VERSION = 1
MANIFEST = "heads.json"
WEIGHTS = "heads.safetensors"
BACKBONE_DIR = "backbone"
ADAPTER_DIR = "adapter"


def head_state(model: Any) -> dict:
    """The tensors a head checkpoint holds: heads and learned loss weights, tied weights left out."""
    tied = model.tied_parameter_names()
    state, seen = {}, set()
    for k, v in model.heads.state_dict().items():
        if k in tied or (v.numel() and (v.data_ptr(), v.shape) in seen):
            continue  # the backbone's tensors, and a second name for one tensor (a decoder's tied output)
        seen.add((v.data_ptr(), v.shape))
        state[f"heads.{k}"] = v
    state.update({f"weighting.{k}": v for k, v in model.weighting.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_heads(model: Any, directory: str | os.PathLike) -> Path:
    """Write `heads.json` + `heads.safetensors` for the model's heads into `directory`."""
    directory = Path(directory)
    weights = safetensors.torch.save(head_state(model))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": {
            **fingerprint(model.backbone),
            "name_or_path": model.backbone.config.name_or_path,
            "pooling": model.adapter.default_pooling,  # what `auto` pooling resolves to for new heads on this backbone
        },
        "weighting": model.weighting.method,
        "heads": {name: config.to_dict() for name, config in model.head_configs.items()},
        "max_length": model.max_length,  # the token limit it was trained with: predict/evaluate/serve's default
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    # Weights first, then the manifest that vouches for them: a crash in between leaves a
    # manifest whose checksum no longer matches, which `load_heads` reports.
    atomic_write_bytes(directory / WEIGHTS, weights)
    atomic_write_json(directory / MANIFEST, manifest)
    return directory


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
    """Read and validate `heads.json`."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{Path(directory)} has no {MANIFEST}, so it is not a headkit head checkpoint "
            "(write one with headkit.save_heads(model, dir) or headkit.save(model, dir))"
        )
    manifest = read_json_manifest(path, FORMAT)
    if not isinstance(manifest.get("heads"), dict) or not isinstance(manifest.get("backbone"), dict):
        raise CheckpointError(f'{path} lacks its "heads" or "backbone" section; the checkpoint is damaged')
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {manifest['format_version']}, newer than this headkit "
            f"understands ({FORMAT_VERSION}); upgrade headkit"
        )
    return manifest


def check_fingerprint(saved: dict, backbone: nn.Module, allow_other_weights: bool = False) -> None:
    """Refuse a backbone whose structure differs from the one the heads were trained on, and one
    of the same structure with other weights (the pretrained checkpoint under heads trained with
    a tuned backbone, or another fine-tune of it): the heads would predict garbage without a word.
    `allow_other_weights` loads them onto other weights anyway, with a warning (saves made before
    the weights were fingerprinted are checked by structure only)."""
    current = fingerprint(backbone)
    keys = ("model_type", "hidden_size", "vocab_size", "structure_sha256")
    if any(saved.get(k) != current[k] for k in keys):
        rows = "\n".join(f"  {k:17} saved={saved.get(k)!s:40} this backbone={current[k]}" for k in keys)
        raise FingerprintMismatchError(
            f"these heads were trained on a different backbone ({saved.get('name_or_path')}):\n{rows}\n"
            "load them onto the backbone they were trained on, or train new heads for this one"
        )
    recorded = saved.get("weights_sample_sha256")
    if recorded is None or recorded == current["weights_sample_sha256"]:
        return
    why = other_weights(saved, current)
    if not allow_other_weights:
        raise FingerprintMismatchError(
            f"{why}. Load the full save (headkit.load), which carries its backbone, or pass "
            "allow_other_weights=True to use them on this backbone anyway"
        )
    logger.warning(f"warning: {why}; loading them anyway (allow_other_weights), so predictions may be wrong")


def other_weights(saved: dict, current: dict) -> str:
    """Why a backbone of the right structure is refused, naming the weights that differ and the
    likely cause: training, weights the checkpoint lacks (initialised at load), or a dtype change."""
    names = differing_weights(saved, current)
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    why = (
        f"these heads were trained on a backbone with other weights than this one (same architecture as "
        f"{saved.get('name_or_path')}; {len(names)} of {len(current['weights_samples'])} tensors differ: {shown})"
    )
    if names and all(".pooler." in f".{n}" for n in names):
        why += (
            "; only its pooler differs, which a checkpoint without one gets initialised at every load: "
            "load the backbone with headkit.load_backbone, which initialises it the same way each time"
        )
    elif "float16" in {saved.get("dtype"), current["dtype"]} and saved.get("dtype") != current["dtype"]:
        why += f"; saved in {saved.get('dtype')}, loaded in {current['dtype']}: load it in {saved.get('dtype')}"
    return why


def read_weights(path: Path, expected_sha256: str | None) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the head checkpoint is incomplete")
    data = path.read_bytes()
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CheckpointError(
            f"{path} does not match the checksum in {MANIFEST}: the file is corrupt, truncated, or "
            "from another save; restore both files from the same save"
        )
    try:
        return safetensors.torch.load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is damaged") from e


def save(model: Any, directory: str | os.PathLike, processor: Any = None, card: dict | None = None) -> Path:
    """Full save: `backbone/` (save_pretrained + processor), the heads and a model card
    (README.md; `card`: what a training run knows, see ship/card.py), swapped in atomically."""
    from headkit.ship.card import model_card

    directory = Path(directory)
    with staged_dir(directory) as staging:
        _save_backbone(model.backbone, staging)
        if processor is not None:
            processor.save_pretrained(staging / BACKBONE_DIR)
        save_heads(model, staging)
        card = dict(card or {})
        text = model_card(model, card, repo_id=card.pop("repo_id", None))
        atomic_write_bytes(staging / "README.md", text.encode("utf-8"))
    return directory


def _save_backbone(backbone: nn.Module, staging: Path) -> None:
    """Plain backbones save as they are; a LoRA backbone saves its clean base weights to
    backbone/ and its adapter to adapter/ (peft's own format), so loading is exact."""
    if not hasattr(backbone, "peft_config"):
        backbone.save_pretrained(staging / BACKBONE_DIR, safe_serialization=True)
        return
    base = backbone.get_base_model()
    clean = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(staging / BACKBONE_DIR, state_dict=clean, safe_serialization=True)
    backbone.save_pretrained(staging / ADAPTER_DIR, safe_serialization=True)


def find_save(path: str | os.PathLike, with_backbone: bool = True) -> Path | None:
    """The headkit save at `path` or, for a training run, at `path/model`; None if there is none."""
    for candidate in (Path(path), Path(path) / "model"):
        if (candidate / MANIFEST).is_file() and (not with_backbone or (candidate / BACKBONE_DIR).is_dir()):
            return candidate
    return None


def describe_heads(directory: str | os.PathLike) -> dict[str, dict[str, Any]] | None:
    """The heads of a headkit save or run (type, pooling, labels, parameters), or None if it is not one.

    Parameter counts come from the safetensors header, so no weights are loaded.
    """
    from safetensors import safe_open

    directory = find_save(directory, with_backbone=False)
    if directory is None:
        return None
    manifest = read_manifest(directory)
    sizes: dict[str, int] = {}
    with safe_open(directory / WEIGHTS, "pt") as f:
        for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            if key.startswith("heads."):
                head = key.split(".")[1]
                sizes[head] = sizes.get(head, 0) + int(torch.tensor(f.get_slice(key).get_shape()).prod())
    return {
        name: {
            "type": config["type"],
            "pooling": config.get("pooling"),
            "labels": config.get("labels", []),
            "params": sizes.get(name, 0),
            "tied_to_embeddings": bool(config.get("tie_embeddings", False)),
            "loss_weight": config.get("loss_weight", 1.0),
        }
        for name, config in manifest["heads"].items()
    }
