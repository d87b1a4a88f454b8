"""Reading a save back (ship/save.py writes it): check that the heads fit the backbone, then fill a
freshly built model with the saved tensors, head by head.

Nothing here builds a MultiHeadModel, so headkit.model can call it without an import circle: the
model's `load_heads` reads the manifest through `read_save`, builds itself from the configs in it,
and hands itself to `restore`; `saved_backbone` loads a full save's backbone (and LoRA adapter):
from backbone/, or for a LoRA save that names its base model, that model fetched by its id and
checked against the digest of the weights the adapter was trained on (`saved_base`, which lives
in backbone/load.py with the helpers of backbone/named_base.py, since `load_backbone` of a save's
backbone/ folder goes through it too; re-exported here).
Both formats load: format 2 (a folder per head) and format 1 (one heads.safetensors).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from headkit._typing import Backbone
from headkit.backbone import resolve_model
from headkit.backbone.fingerprint import differing_weights, fingerprint
from headkit.backbone.load import saved_base
from headkit.backbone.named_base import base_name, check_base, named_base
from headkit.errors import CheckpointError, FingerprintMismatchError
from headkit.heads import storage
from headkit.save_layout import ADAPTER_DIR, BACKBONE_DIR, MANIFEST, WEIGHTS, holds_weights, read_manifest

__all__ = [  # saved_base, base_name and check_base live in backbone/ (load_backbone reads a LoRA save with them)
    "base_checkpoint",
    "base_name",
    "check_base",
    "check_fingerprint",
    "head_tensors",
    "load_head_weights",
    "other_weights",
    "read_save",
    "restore",
    "saved_backbone",
    "saved_base",
]

logger = logging.getLogger(__name__)


def read_save(directory: str | os.PathLike, backbone: Backbone, allow_other_weights: bool = False) -> dict:
    """The manifest of the heads saved in `directory` (`read_manifest`), after checking they fit
    `backbone`: the same architecture and the same weights as the one they were trained with."""
    manifest = read_manifest(directory)
    check_fingerprint(manifest["backbone"], backbone, allow_other_weights)
    return manifest


def restore(model: Any, directory: str | os.PathLike, manifest: dict) -> Any:
    """Fill `model` (built from the manifest's configs on the checked backbone) with the saved head
    tensors, re-tied by name, and the learned loss weights; returned in eval mode, as transformers'
    from_pretrained returns a model: no live dropout."""
    directory = Path(directory)
    if "head_files" not in manifest:
        _restore_format_1(model, directory, manifest)
    else:
        for name in manifest["head_files"]:
            load_head_weights(model, directory, manifest, name, head_tensors(directory, manifest, name))
        listed = manifest.get("weighting_state")
        path = directory / (listed["path"] if isinstance(listed, dict) else "")
        state = storage.read_weights(path, listed.get("sha256")) if isinstance(listed, dict) else {}
        _load_weighting(model, state, path)
    model.max_length = manifest.get("max_length")
    return model.eval()


def load_head_weights(model: Any, directory: Path, manifest: dict, name: str, state: dict[str, torch.Tensor]) -> None:
    """Fill head `name` of `model`, built from its config in a format-2 manifest, with `state`
    (`head_tensors`), tying what was tied to the backbone and to other heads again."""
    entry = manifest["head_files"][name]
    source = str(directory / entry["path"] / storage.WEIGHTS)
    storage.load_head(model.heads[name], state, model.backbone, entry["tied"], entry["shared"], source)


def head_tensors(directory: str | os.PathLike, manifest: dict, name: str) -> dict[str, torch.Tensor]:
    """The tensors stored for head `name` (named inside the head; tied ones not among them), from a
    save of either format: what a reader that needs one head's weights, not a model, reads."""
    directory = Path(directory)
    if "head_files" not in manifest:
        return _under(storage.read_weights(directory / WEIGHTS, manifest.get("weights_sha256")), f"heads.{name}.")
    entry = manifest["head_files"][name]
    return storage.read_weights(directory / entry["path"] / storage.WEIGHTS, entry["sha256"].get(storage.WEIGHTS))


def _restore_format_1(model: Any, directory: Path, manifest: dict) -> None:
    """One heads.safetensors with every head's tensors under `heads.NAME.` and the loss weights
    under `weighting.`; tied tensors were left out and are tied again by building the heads."""
    path = directory / WEIGHTS
    state = storage.read_weights(path, manifest.get("weights_sha256"))
    heads = {name: _under(state, f"heads.{name}.") for name in model.heads}
    weighting = _under(state, "weighting.")
    stray = len(state) - sum(map(len, heads.values())) - len(weighting)
    if stray:
        known = {f"heads.{n}.{k}" for n, s in heads.items() for k in s} | {f"weighting.{k}" for k in weighting}
        raise CheckpointError(f"{path} does not fit {MANIFEST}: unexpected {sorted(set(state) - known)[:5]}")
    for name, head_state in heads.items():
        head = model.heads[name]
        # format 1 kept fitted values (multi-label thresholds) in the head config, and the head built
        # from that config holds them in buffers format 1 did not store: those keep their built values
        buffers, (expected, _, _) = dict(head.named_buffers()), storage.split_state(head, model.backbone)
        head_state = {**{k: buffers[k] for k in expected if k in buffers and k not in head_state}, **head_state}
        storage.load_head(head, head_state, model.backbone, source=f"{path} (head {name})")
    _load_weighting(model, weighting, path)


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load_weighting(model: Any, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.weighting.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"the loss weights in {path} do not fit the weighting in {MANIFEST}: {e}") from e


def saved_backbone(
    directory: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> nn.Module:
    """The backbone of a full save: its base (`saved_base`), with its LoRA adapter when it has one."""
    directory = Path(directory)
    read_manifest(directory)  # fail on a non-checkpoint before loading a large backbone
    if not (directory / BACKBONE_DIR / "config.json").is_file():
        raise CheckpointError(
            f"{directory} has heads but no {BACKBONE_DIR}/ directory; it is a head-only checkpoint: "
            "load it with headkit.load_heads(dir, backbone)"
        )
    backbone: nn.Module = saved_base(directory, trust_remote_code=trust_remote_code, dtype=dtype)
    if (directory / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        try:
            with warnings.catch_warnings():  # peft 0.21 calls an API transformers 5 deprecated: not the user's to fix
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                backbone = PeftModel.from_pretrained(backbone, directory / ADAPTER_DIR)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise CheckpointError(f"the LoRA adapter in {directory / ADAPTER_DIR} could not be read ({e})") from e
    return backbone


def base_checkpoint(directory: str | os.PathLike) -> Path:
    """The folder holding the weights of a full save's base model: backbone/, or for a LoRA save
    that names its base, that checkpoint's folder (a hub id's cached snapshot, an alias's files).
    For loading the base with a class other than `AutoModel` (the causal-LM class that
    generates); it is not checked here: the backbone put over it (`load_backbone`) is."""
    from headkit.backbone.load import dequantised

    directory = Path(directory)
    folder = directory / BACKBONE_DIR
    base = None if holds_weights(folder) else named_base(directory)
    if not isinstance(base, dict):
        return folder
    source = resolve_model(base_name(base))
    return dequantised(source) if source.gguf_file else source.path


def check_fingerprint(saved: dict, backbone: Backbone, allow_other_weights: bool = False) -> None:
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
