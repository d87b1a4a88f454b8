"""Resumable training state, without pickle: safetensors for tensors, JSON for everything else.

    checkpoint/state.safetensors   trainable parameters, persistent buffers (BatchNorm statistics),
                                   optimizer moments, RNG state
    checkpoint/state.json          progress (phase, epoch, step), history, scheduler, optimizer
                                   hyper-parameters

The directory is staged under a temporary name and swapped in, so a kill at any moment (even
mid-save) leaves the previous checkpoint loadable. Beside it, RUN/best.safetensors + best.json
hold what can change of the best epoch so far (save_best / restore_best). Tensors are streamed to
a temporary file (safetensors' save_file) and renamed into place: no whole-file bytes in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from torch import nn

from headkit._fs import atomic_path, atomic_write_json, staged_dir
from headkit.backbone import load_backbone
from headkit.devices import _mps_available
from headkit.errors import CheckpointError

if TYPE_CHECKING:
    from headkit.model import MultiHeadModel
    from headkit.training.config import TrainConfig

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
BEST_TENSORS = "best.safetensors"
BEST_JSON = "best.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor safetensors can write: detached, on the CPU (no copy if already there), contiguous."""
    return tensor.detach().cpu().contiguous()


def persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers that are part of the model's state, by their `state_dict` names (live tensors).

    BatchNorm's running_mean, running_var and num_batches_tracked change in every training
    forward without being parameters: a checkpoint or best-epoch save of parameters alone gives
    a model with another epoch's statistics. Non-persistent buffers (rotary frequencies, causal
    masks, position ids) are rebuilt by the model itself and are left out, as `state_dict` does.
    A buffer shared by two modules appears once.
    """
    ids = {id(b) for b in model.buffers()}
    found: dict[int, tuple[str, torch.Tensor]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in ids:
            found.setdefault(id(tensor), (name, tensor))
    return dict(found.values())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Stream `tensors` to `path` atomically: save_file writes each tensor's memory straight to a
    temporary file beside `path` (safetensors.torch.save would first build the whole file as one
    bytes object, about as large again as the tensors), which is then fsynced and renamed."""
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, tmp)


def _copy_into(targets: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], source: Path, what: str) -> None:
    """Copy saved tensors into the model's live ones in place; `copy_` keeps each target's dtype
    and device (num_batches_tracked stays int64, a bf16 model stays bf16). Checkpoints written
    before the backbone moved into the model's adapter name its tensors `backbone.*`: they are
    read as `adapter.backbone.*`, so a run started on the earlier version resumes."""
    saved = {k if k in targets or f"adapter.{k}" not in targets else f"adapter.{k}": v for k, v in saved.items()}
    unknown = sorted(set(saved) - set(targets))
    if unknown:
        raise CheckpointError(f"{source} holds {what} this model lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in saved.items():
            targets[name].copy_(tensor)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_train_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, progress: dict[str, Any]
) -> None:
    """Write the trainable parameters, persistent buffers, optimizer, scheduler, RNG and progress
    atomically (frozen parameters are the pretrained checkpoint's, reloaded anyway)."""
    tensors = {f"model.{n}": _cpu(p) for n, p in model.named_parameters() if p.requires_grad}
    tensors.update({f"buffer.{n}": _cpu(b) for n, b in persistent_buffers(model).items()})
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = _cpu(torch.as_tensor(value))
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    if _mps_available():
        tensors["rng.mps"] = torch.mps.get_rng_state()
    meta = {
        "progress": _jsonable(progress),
        "param_groups": _jsonable(opt_state["param_groups"]),
        "scheduler": _jsonable(scheduler.state_dict()),
    }
    with staged_dir(directory) as staging:  # the previous checkpoint stays whole until the swap
        _write_tensors(staging / STATE_TENSORS, tensors)
        atomic_write_json(staging / STATE_JSON, meta)


def load_train_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict:
    """Restore what `save_train_state` wrote; returns the saved progress dict. A checkpoint from
    before buffers were saved loads too (its buffers stay as the model has them)."""
    try:
        tensors = safetensors.torch.load_file(directory / STATE_TENSORS)
        meta = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    except Exception as e:
        raise CheckpointError(
            f"the checkpoint in {directory} cannot be read ({e}); start again without --resume"
        ) from e
    _copy_into(dict(model.named_parameters()), _prefixed(tensors, "model."), directory, "parameters")
    _copy_into(persistent_buffers(model), _prefixed(tensors, "buffer."), directory, "buffers")
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
    if "rng.mps" in tensors and _mps_available():
        torch.mps.set_rng_state(tensors["rng.mps"])


def best_tensors(model: MultiHeadModel) -> dict[str, torch.Tensor]:
    """What can differ between the best epoch and the end of the run, so what `save_best` keeps.

    The heads and loss weights; every parameter that trains now (the backbone's under full or
    partial, only the adapters under LoRA: the frozen base weights never change and are not
    rewritten at every improving epoch); and every persistent buffer. Buffers change whenever
    their module runs in train mode, even with its parameters frozen (BatchNorm in a backbone
    under LoRA), and they are small (a few vectors per normalisation layer, under 1% of a CNN's
    weights), so all are kept rather than tracking which modules ran in train mode.

    A parameter frozen now did not change before this epoch unless it was a head (kept) and can
    change after it only if a later phase trains the backbone (lp-ft's probe, then fine-tuning):
    `restore_best` reloads the pristine backbone then. Head weights that are backbone tensors
    (tied embeddings) are saved under the backbone's name only.
    """
    tied = {f"heads.{n}" for n in model.tied_parameter_names()}
    tensors: dict[str, torch.Tensor] = {
        n: p
        for n, p in model.named_parameters()
        if (p.requires_grad or n.startswith(("heads.", "weighting."))) and n not in tied
    }
    tensors.update(persistent_buffers(model))
    return {n: _cpu(t) for n, t in tensors.items()}


def save_best(directory: Path, model: MultiHeadModel, backbone_modified: bool, epoch_record: dict) -> None:
    """What can change of the best epoch so far (`best_tensors`), and whether the backbone had
    trained by then (`restore_best` needs it)."""
    _write_tensors(directory / BEST_TENSORS, best_tensors(model))
    atomic_write_json(directory / BEST_JSON, {"backbone_modified": backbone_modified, **epoch_record})


def epoch_score(record: dict) -> list[float]:
    """What ranks epochs: the objective, then the validation loss (lower is better) to break ties:
    accuracy on a small validation set moves in coarse steps and plateaus while the loss falls."""
    return [record.get("objective", 0.0), -sum(record.get("val_losses", {}).values())]


def saved_best(directory: Path) -> tuple[int, list[float]] | None:
    """The best epoch saved in `directory` and its score (None: none yet); it may be later than
    the last checkpoint (checkpoints of many small epochs are written every few)."""
    path = directory / BEST_JSON
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record.get("epoch", 0), epoch_score(record)


def restore_best(directory: Path, model: MultiHeadModel, config: TrainConfig, backbone_modified: bool) -> dict:
    """Put the best epoch's weights and buffers back into `model`; returns that epoch's record.

    Reads the files of earlier versions too: every backbone parameter once it had trained, and no
    buffers (those stay as the last epoch left them)."""
    info = json.loads((directory / BEST_JSON).read_text(encoding="utf-8"))
    if backbone_modified and not info["backbone_modified"]:
        # the best epoch came before the backbone was touched (lp-ft probe): use pristine weights
        pristine = load_backbone(config.model, trust_remote_code=config.trust_remote_code)
        model.backbone.load_state_dict(pristine.state_dict(), strict=False)
    state = safetensors.torch.load_file(directory / BEST_TENSORS)
    _copy_into({**dict(model.named_parameters()), **persistent_buffers(model)}, state, directory, "tensors")
    return info
