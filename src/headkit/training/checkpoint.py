"""Resumable training state, without pickle: safetensors for tensors, JSON for everything else.

    checkpoint/state.safetensors   trainable parameters, optimizer moments, RNG state
    checkpoint/state.json          progress (phase, epoch, step), history, scheduler, optimizer
                                   hyper-parameters

The directory is staged under a temporary name and swapped in, so a kill at any moment (even
mid-save) leaves the previous checkpoint loadable. Beside it, RUN/best.safetensors + best.json
hold the trainable weights of the best epoch so far (save_best / restore_best).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from torch import nn

from headkit._fs import atomic_write_bytes, atomic_write_json, staged_dir
from headkit.backbone import load_backbone
from headkit.errors import CheckpointError

if TYPE_CHECKING:
    from headkit.model import MultiHeadModel
    from headkit.training.config import TrainConfig

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def save_train_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, progress: dict[str, Any]
) -> None:
    """Write the trainable parameters, optimizer, scheduler, RNG and progress atomically."""
    tensors = {f"model.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {
        "progress": _jsonable(progress),
        "param_groups": _jsonable(opt_state["param_groups"]),
        "scheduler": _jsonable(scheduler.state_dict()),
    }
    with staged_dir(directory) as staging:  # the previous checkpoint stays whole until the swap
        atomic_write_bytes(staging / STATE_TENSORS, safetensors.torch.save(tensors))
        atomic_write_json(staging / STATE_JSON, meta)


def load_train_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict:
    """Restore what `save_train_state` wrote; returns the saved progress dict."""
    try:
        tensors = safetensors.torch.load_file(directory / STATE_TENSORS)
        meta = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    except Exception as e:
        raise CheckpointError(
            f"the checkpoint in {directory} cannot be read ({e}); start again without --resume"
        ) from e
    params = dict(model.named_parameters())
    saved = {k[len("model.") :] for k in tensors if k.startswith("model.")}
    if not saved <= set(params):
        raise CheckpointError(f"{directory} holds parameters this model lacks: {sorted(saved - set(params))[:5]}")
    with torch.no_grad():
        for name in saved:
            params[name].copy_(tensors[f"model.{name}"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
    return meta["progress"]


def restore_rng_state(directory: Path) -> None:
    """Put the random number generators back where they were at the checkpoint.

    Kept apart from `load_train_state` because *when* matters: creating a DataLoader iterator
    draws from the global generator, so the trainer restores after that draw when resuming
    mid-epoch (the saved state already includes it) and before it at an epoch boundary.
    """
    tensors = safetensors.torch.load_file(directory / STATE_TENSORS)
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_best(directory: Path, model: MultiHeadModel, backbone_modified: bool, epoch_record: dict) -> None:
    """The trainable weights of the best epoch so far (the backbone's too once it has trained)."""
    keep = {n: p for n, p in model.named_parameters() if n.startswith(("heads.", "weighting."))}
    if backbone_modified:
        keep.update({n: p for n, p in model.named_parameters() if n.startswith("backbone.")})
    tied = {f"heads.{n}" for n in model.tied_parameter_names()}
    tensors = {n: p.detach().cpu().contiguous() for n, p in keep.items() if n not in tied}
    atomic_write_bytes(directory / "best.safetensors", safetensors.torch.save(tensors))
    atomic_write_json(directory / "best.json", {"backbone_modified": backbone_modified, **epoch_record})


def restore_best(directory: Path, model: MultiHeadModel, config: TrainConfig, backbone_modified: bool) -> dict:
    """Put the best epoch's weights back into `model`; returns that epoch's record."""
    info = json.loads((directory / "best.json").read_text(encoding="utf-8"))
    if backbone_modified and not info["backbone_modified"]:
        # the best epoch came before the backbone was touched (lp-ft probe): use pristine weights
        pristine = load_backbone(config.model, trust_remote_code=config.trust_remote_code)
        model.backbone.load_state_dict(pristine.state_dict(), strict=False)
    state = safetensors.torch.load_file(directory / "best.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    return info
