"""A head saved as its own folder, as a sentence-transformers module is: `config.json` (the head
config) beside `model.safetensors` (the head's own tensors, fitted buffers included).

A head can hold tensors it does not own: an LM head's decoder that *is* the backbone's input
embeddings, or a seq2seq head's output layer that is its own decoder's input embeddings. Such a
tensor is stored once, under its owner, and the head's listing in the save's manifest records it
by name (`tied`: head tensor -> backbone tensor; `shared`: head tensor -> the head tensor it is),
so loading re-ties it by name rather than trusting that construction happened to tie it the same
way. Backbone names are the base model's (a PEFT wrapper's prefix left out), so a head saved on a
LoRA backbone and one saved on its merged base name the same tensor.

Every file is written atomically; the caller writes the manifest last, with each file's sha256.
Imports nothing from headkit but its file helpers and errors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import SafetensorError
from torch import Tensor, nn

from headkit._fs import atomic_write_bytes
from headkit._typing import Backbone
from headkit.errors import CheckpointError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def base_model(backbone: Backbone) -> nn.Module:
    """The model under a PEFT wrapper (whose tensor names carry its prefix), else the backbone."""
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def _tensor_key(t: Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


def split_state(head: nn.Module, backbone: Backbone) -> tuple[dict[str, Tensor], dict[str, str], dict[str, str]]:
    """(the tensors the head stores, its tensors that are the backbone's by backbone name, its second
    names for one of its own tensors by the first name) in state-dict order."""
    base, owners = base_model(backbone), dict[tuple, str]()
    for name, t in [*base.named_parameters(remove_duplicate=False), *base.named_buffers(remove_duplicate=False)]:
        if t.numel():
            owners.setdefault(_tensor_key(t), name)
    state: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    shared: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, t in head.state_dict(keep_vars=True).items():
        key = _tensor_key(t) if t.numel() else None
        if key in owners:
            tied[name] = owners[key]
        elif key in first:
            shared[name] = first[key]
        else:
            if key is not None:
                first[key] = name
            state[name] = t
    return state, tied, shared


def save_head(head: nn.Module, config: dict[str, Any], folder: Path, backbone: Backbone) -> dict[str, Any]:
    """Write `folder/model.safetensors` and `folder/config.json`; returns the head's manifest listing."""
    state, tied, shared = split_state(head, backbone)
    weights = safetensors.torch.save({k: v.detach().contiguous().cpu() for k, v in state.items()})
    text = (json.dumps(config, indent=2) + "\n").encode("utf-8")
    atomic_write_bytes(folder / WEIGHTS, weights)
    atomic_write_bytes(folder / CONFIG, text)
    return {"tied": tied, "shared": shared, "sha256": {WEIGHTS: sha256(weights), CONFIG: sha256(text)}}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_head_config(folder: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """A head folder's config as a dict; missing, damaged, or not the file the manifest vouches
    for (`expected_sha256`): CheckpointError."""
    data = _read_checked(folder / CONFIG, expected_sha256)
    try:
        config = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG} is not valid JSON ({e}); the file is damaged") from e
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise CheckpointError(f'{folder / CONFIG} is not a head config (no "type"); the file is damaged')
    return config


def read_weights(path: Path, expected_sha256: str | None, manifest: str = "heads.json") -> dict[str, Tensor]:
    """A safetensors file's tensors, after checking it is the one `manifest` vouches for."""
    data = _read_checked(path, expected_sha256, manifest)
    try:
        return safetensors.torch.load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is damaged") from e


def _read_checked(path: Path, expected_sha256: str | None, manifest: str = "heads.json") -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the head checkpoint is incomplete")
    data = path.read_bytes()
    if expected_sha256 and sha256(data) != expected_sha256:
        raise CheckpointError(
            f"{path} does not match the checksum in {manifest}: the file is corrupt, truncated, or "
            "from another save; restore the files from the same save"
        )
    return data


def load_head(
    head: nn.Module,
    state: dict[str, Tensor],
    backbone: Backbone,
    tied: dict[str, str] | None = None,
    shared: dict[str, str] | None = None,
    source: str = "",
) -> None:
    """Fill a freshly built head with its saved `state`: first re-tie the tensors the listing names
    (to the backbone's, or to the head's own), then check the stored tensors are exactly those the
    head stores (a mismatch is a CheckpointError naming `source`), then load them."""
    for name, owner in (tied or {}).items():
        _retie(head, name, _tensor(base_model(backbone), owner, f"the backbone (tied {name}; {source})"))
    for name, first in (shared or {}).items():
        _retie(head, name, _tensor(head, first, f"the head ({source})"))
    expected, _, _ = split_state(head, backbone)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(f"{source} does not fit its head: missing {missing[:5]}, unexpected {extra[:5]}")
    head.load_state_dict(state, strict=False)  # the tied and shared names are the tensors just loaded


def _tensor(module: nn.Module, name: str, where: str) -> Tensor:
    owner_name, _, leaf = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        owner = None
    found: Tensor | None = None if owner is None else owner._parameters.get(leaf)
    if found is None and owner is not None:
        found = owner._buffers.get(leaf)
    if found is None:
        raise CheckpointError(f"the save ties a tensor to {name}, which {where} does not have")
    return found


def _retie(head: nn.Module, name: str, tensor: Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = head.get_submodule(owner_name)
    if leaf in owner._parameters and isinstance(tensor, nn.Parameter):
        owner._parameters[leaf] = tensor
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:
        raise CheckpointError(f"the save ties the head's {name} to another tensor, but the head has no such tensor")
