"""Head-only checkpoints and full saves, written atomically, read without pickle.

A head checkpoint is laid out as a sentence-transformers model is, one folder per module:
    heads.json                  the manifest: format version, the backbone fingerprint, the loss
                                weighting (and its state file), and per head its folder, the
                                tensors it shares with the backbone or within itself (by name),
                                and the sha256 of each of its files
    heads/NAME/config.json      the head's config (with its label maps)
    heads/NAME/model.safetensors  its own tensors, tied ones left out (headkit.heads.storage)
    weighting.safetensors       the learned loss weights, when the weighting has any
    training.json               (full saves) the facts of the run that trained it, for its card
Format 1 (until issue 35) held every head's tensors in one heads.safetensors and the configs in
heads.json; `read_manifest` (headkit.save_layout, with the names above) reads both, and
ship/load.py restores both.
A full save is the same directory plus `backbone/` (`save_pretrained`, safetensors, and the
tokenizer or image processor) and, for LoRA models, `adapter/` (peft's adapter files). A LoRA
save keeps no copy of the base model it adapts: backbone/ holds its config and processor only,
and heads.json's "backbone" names the base ("base": its hub id, alias or path, the revision, and
a digest of its weights) as peft's adapter_config.json does (base_model_name_or_path, revision),
so loading fetches the base and checks it is the one the adapter was trained on. A base that
cannot be named again (built in memory, changed since it was loaded) is copied into backbone/ as
before, and so were the base weights of LoRA saves made before this: both layouts load.
Each file is written to a temporary name and renamed into place, the manifest last, so it only
vouches for files already in place; a full save is built in a temporary directory and swapped
in, so a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import safetensors.torch
import torch
from torch import nn

from headkit._fs import atomic_write_bytes, atomic_write_json, staged_dir
from headkit._typing import Backbone
from headkit.backbone.fingerprint import digest_of, fingerprint, weights_samples
from headkit.heads import storage
from headkit.heads.storage import read_weights
from headkit.save_layout import (
    ADAPTER_DIR,
    BACKBONE_DIR,
    FORMAT,
    FORMAT_VERSION,
    HEADS_DIR,
    MANIFEST,
    TRAINING,
    WEIGHTING,
    WEIGHTS,
    find_save,
    holds_weights,
    read_json_manifest,
    read_manifest,
    read_training,
)

logger = logging.getLogger(__name__)

# re-exported: ship/generate.py reads a format-1 save's weights through it, and the save's layout
# (names, manifest reading, find_save) lives in headkit.save_layout, below backbone/ and ship/
__all__ = [
    "ADAPTER_DIR",
    "BACKBONE_DIR",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADS_DIR",
    "MANIFEST",
    "TRAINING",
    "WEIGHTING",
    "WEIGHTS",
    "find_save",
    "holds_weights",
    "read_json_manifest",
    "read_manifest",
    "read_training",
    "read_weights",
]


def save_heads(model: Any, directory: str | os.PathLike) -> Path:
    """Write each head's folder, the learned loss weights and the manifest into `directory`."""
    return _save_heads(model, Path(directory))


def _save_heads(model: Any, directory: Path, base: dict | None = None) -> Path:
    """`save_heads`, with the base model a LoRA save names (`_save_backbone`) in the manifest."""
    listing = {}
    for name, head in model.heads.items():
        path = f"{HEADS_DIR}/{name}"
        config = model.head_configs[name].to_dict()
        listing[name] = {"path": path, **storage.save_head(head, config, directory / path, model.backbone)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": {
            **fingerprint(model.backbone),
            "name_or_path": model.backbone.config.name_or_path,
            "pooling": model.adapter.default_pooling,  # what `auto` pooling resolves to for new heads here
            **({"base": base} if base else {}),
        },
        "weighting": model.weighting.method,
        "heads": listing,
        "max_length": model.max_length,  # the token limit it was trained with: predict/evaluate/serve's default
    }
    weighting = {k: v.detach().contiguous().cpu() for k, v in model.weighting.state_dict().items()}
    if weighting:
        data = safetensors.torch.save(weighting)
        atomic_write_bytes(directory / WEIGHTING, data)
        manifest["weighting_state"] = {"path": WEIGHTING, "sha256": storage.sha256(data)}
    # the files first, then the manifest that vouches for them: a crash in between leaves a
    # manifest whose checksums no longer match, which loading reports
    atomic_write_json(directory / MANIFEST, manifest)
    _remove_stale(directory, listing, bool(weighting))
    return directory


def _remove_stale(directory: Path, listing: dict, weighted: bool) -> None:
    """What an earlier save in the same directory left that this one's manifest does not list:
    format 1's weights file, the weighting file, the folders of heads no longer there."""
    (directory / WEIGHTS).unlink(missing_ok=True)
    if not weighted:
        (directory / WEIGHTING).unlink(missing_ok=True)
    ours = {storage.CONFIG, storage.WEIGHTS}
    for folder in (directory / HEADS_DIR).iterdir() if (directory / HEADS_DIR).is_dir() else ():
        if folder.name not in listing and folder.is_dir() and {p.name for p in folder.iterdir()} <= ours:
            shutil.rmtree(folder)


def save(model: Any, directory: str | os.PathLike, processor: Any = None, card: dict | None = None) -> Path:
    """Full save: `backbone/` (save_pretrained, or for a LoRA model the base's config with
    `adapter/` beside it) with the processor (by default the one the model reads with, as
    `save_pretrained` keeps it), the heads, config.json (`model.config`) and a model card
    (README.md), swapped in atomically. The card describes the run that trained the model: the
    facts training left on it (`model.training_facts`, restored from a save's training.json),
    with `card` (the same keys, see ship/card.py; "repo_id": the repository it names) over them.
    training.json keeps those facts, so the model saved again or pushed keeps its card."""
    from headkit.ship.card import model_card

    if processor is None and hasattr(model, "_processor"):
        processor = model._processor()  # the tokenizer predict needs: a save without one cannot read text
    directory = Path(directory)
    with staged_dir(directory) as staging:
        base = _save_backbone(model.backbone, staging)
        if processor is not None:
            processor.save_pretrained(staging / BACKBONE_DIR)
        _save_heads(model, staging, base)
        if hasattr(model, "config"):  # config.json: the model described (MultiHeadConfig), its training columns
            model.config.save_pretrained(staging)
        facts = {**(getattr(model, "training_facts", None) or {}), **(card or {})}
        repo_id = facts.pop("repo_id", None)
        if facts:
            atomic_write_json(staging / TRAINING, facts, default=str)
        text = model_card(model, facts, repo_id=repo_id, processor=processor)
        atomic_write_bytes(staging / "README.md", text.encode("utf-8"))
    return directory


def _save_backbone(backbone: Backbone, staging: Path) -> dict | None:
    """Plain backbones (a merged LoRA one too) save as they are. A LoRA backbone saves peft's
    adapter to adapter/ and, in backbone/, only its base's config: the base is named (returned,
    for heads.json) and fetched again at load. Where it cannot be named, its clean base weights
    are saved to backbone/ instead, so the save still loads exactly."""
    if not hasattr(backbone, "peft_config"):
        backbone.save_pretrained(staging / BACKBONE_DIR, safe_serialization=True)
        return None
    base = backbone.get_base_model()
    state = base_state(base)
    samples = weights_samples_of(state)
    named, why = base_reference(base, digest_of(samples))
    backbone.save_pretrained(staging / ADAPTER_DIR, safe_serialization=True)
    if named is None:
        logger.warning(
            f"warning: this LoRA model's base weights are saved in full beside the adapter because {why}; "
            "a base loaded by name (headkit.load_backbone, a hub id, an alias or a folder) is named instead"
        )
        base.save_pretrained(staging / BACKBONE_DIR, state_dict=state, safe_serialization=True)
        return None
    base.config.save_pretrained(staging / BACKBONE_DIR)
    _name_base_in_adapter(staging / ADAPTER_DIR, named)
    return {
        **named,
        "model_type": base.config.model_type,
        "dtype": str(next((t.dtype for t in state.values() if t.is_floating_point()), "")).replace("torch.", ""),
        "weights_sample_sha256": digest_of(samples),
        "weights_samples": samples,
    }


ADAPTER_PARTS = ("lora_", ".modules_to_save.", "trainable_tokens_")  # peft's trained tensors, not the base's
WRAPPERS = (".base_layer", ".original_module", ".token_adapter")  # peft's wrappers around a base module


def base_state(base: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own weights under peft's wrappers, named as the unwrapped model names them:
    LoRA's matrices, modules_to_save copies and trainable-token deltas left out."""
    state = {}
    for name, tensor in base.state_dict().items():
        if any(part in name for part in ADAPTER_PARTS):
            continue
        for wrapper in WRAPPERS:
            name = name.replace(wrapper, "")
        state[name] = tensor
    return state


def weights_samples_of(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """`weights_samples` (the fingerprint's per-tensor digests) of a state dict: what a plain load
    of the base model gives, so the two compare."""
    return weights_samples(SimpleNamespace(state_dict=lambda: state))  # reads the state only


def base_reference(base: nn.Module, digest: str) -> tuple[dict | None, str]:
    """How a LoRA save names its base model (`{"name_or_path", "revision"}`), or None and why it
    cannot: `headkit.load_backbone` recorded where it read the base from and the digest of its
    weights then (a base changed since, or merged with another adapter, is not that checkpoint any
    more); a backbone loaded otherwise is named by its config's name_or_path, as peft names it."""
    from headkit.backbone.load import SOURCE, reference

    recorded = getattr(base, SOURCE, None)
    if recorded is not None:
        if recorded.get("name_or_path") is None:
            return None, recorded.get("why", "it was not loaded by name")
        if recorded.get("weights_sample_sha256") not in (None, digest):
            return None, f"its weights changed since they were loaded from {recorded['name_or_path']}"
        return {"name_or_path": recorded["name_or_path"], "revision": recorded.get("revision")}, ""
    name = getattr(base.config, "name_or_path", "") or ""
    named = reference(name)
    if named is None:
        return None, (
            f"its name_or_path {name!r} names no checkpoint that exists (a folder, a hub id or an alias)"
            if name
            else "it was built in memory (its config has no name_or_path)"
        )
    if named["revision"] is None:
        named["revision"] = getattr(base.config, "_commit_hash", None)
    return named, ""


def _name_base_in_adapter(adapter: Path, named: dict) -> None:
    """peft's adapter_config.json names the base as headkit does (base_model_name_or_path and
    revision), so peft's own `PeftModel.from_pretrained` users find the same base."""
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = named["name_or_path"]
    config["revision"] = named["revision"]
    atomic_write_json(path, config)


def describe_heads(directory: str | os.PathLike) -> dict[str, dict[str, Any]] | None:
    """The heads of a headkit save or run (type, pooling, labels, parameters), or None if it is not one.

    Parameter counts come from the safetensors headers, so no weights are loaded.
    """
    found = find_save(directory, with_backbone=False)
    if found is None:
        return None
    manifest = read_manifest(found)
    return {
        name: {
            "type": config["type"],
            "pooling": config.get("pooling"),
            "labels": config.get("labels", []),
            "params": size,
            "tied_to_embeddings": bool(config.get("tie_embeddings", False)),
            "loss_weight": config.get("loss_weight", 1.0),
        }
        for (name, config), size in zip(manifest["heads"].items(), _sizes(found, manifest), strict=True)
    }


def _sizes(directory: Path, manifest: dict) -> list[int]:
    """Each head's stored parameter count, read from the safetensors headers (either format)."""
    from safetensors import safe_open

    def count(path: Path, prefix: str = "") -> dict[str, int]:
        with safe_open(path, "pt") as f:
            keys = [k for k in f.keys() if k.startswith(prefix)]  # noqa: SIM118 (a safetensors handle)
            return {k[len(prefix) :]: int(torch.tensor(f.get_slice(k).get_shape()).prod()) for k in keys}

    if "head_files" in manifest:
        files = manifest["head_files"]
        return [sum(count(directory / files[name]["path"] / storage.WEIGHTS).values()) for name in manifest["heads"]]
    flat = count(directory / WEIGHTS, "heads.")
    return [sum(n for k, n in flat.items() if k.split(".")[0] == name) for name in manifest["heads"]]
