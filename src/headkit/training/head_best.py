"""Each head's own best epoch, where heads are independent: several heads on a backbone no phase trains.

On a frozen backbone a head's outputs depend on its own weights and the backbone's fixed features
only, so the model that puts every head at its own best validation epoch scores, head by head,
exactly as each did at that epoch. One epoch for all (the mean of the heads' primary metrics)
costs the heads whose best came at another: an embedding head still improving at epoch 25 kept a
topic head at its epoch 25 although its validation accuracy peaked earlier. When the backbone
trains (partial, full, LoRA, lp-ft's fine-tuning) the heads read features that change with every
epoch and one epoch is the only consistent choice; `metric_for_best_model` also asks for one.

    RUN/best_heads.safetensors   each head's weights and buffers at its best epoch so far
    RUN/best_heads.json          head -> {"epoch", "score"} (resume reads the scores to beat)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch
import torch

from headkit._fs import atomic_write_json
from headkit.training.checkpoint import _copy_into, _cpu, _write_tensors, persistent_buffers
from headkit.training.evaluate import signed

if TYPE_CHECKING:
    from headkit.model import MultiHeadModel
    from headkit.training.state import Run

HEADS_TENSORS = "best_heads.safetensors"
HEADS_JSON = "best_heads.json"


def selects_per_head(run: Run) -> bool:
    """Whether this run keeps each head's own best epoch (see the module docstring); multi-head
    runs of every other kind keep one epoch, chosen by `metric_for_best_model` (default: the mean
    of the heads' primary metrics)."""
    return (
        run.strategy.backbone == "none"
        and len(run.model.heads) > 1
        and run.config.metric_for_best_model is None
        and len(run.data.val) > 0
    )


def head_score(record: dict, model: MultiHeadModel, head: str) -> list[float] | None:
    """What ranks a head's epochs: its primary metric (higher is better), then its validation loss
    (lower is better), as `epoch_score` ranks the model's; None where the split did not score it."""
    primary = model.heads[head].scoring.primary
    value = record.get("scores", {}).get(head, {}).get(primary)
    if value is None:
        return None
    return [signed(model, head, primary, value), -record.get("val_losses", {}).get(head, 0.0)]


def saved_head_scores(directory: Path) -> dict[str, dict]:
    """The heads' best epochs and scores saved so far in `directory` (resume continues from them)."""
    path = directory / HEADS_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def head_tensors(model: MultiHeadModel, head: str) -> dict[str, torch.Tensor]:
    """A head's parameters and persistent buffers (a tied weight is the frozen backbone's: left out)."""
    prefix = f"heads.{head}."
    tied = {f"heads.{n}" for n in model.tied_parameter_names()}
    tensors: dict[str, torch.Tensor] = {
        n: p for n, p in model.named_parameters() if n.startswith(prefix) and n not in tied
    }
    tensors.update({n: b for n, b in persistent_buffers(model).items() if n.startswith(prefix)})
    return tensors


def keep_improved_heads(run: Run, record: dict) -> list[str]:
    """Save the heads whose score at this epoch beats their best so far (`run.head_best`, which
    every process updates alike); returns their names. A resumed run replaying a head's best epoch
    counts it as the improvement it was, as `end_epoch` does for the model's."""
    best, model = run.head_best, run.model
    assert best is not None  # only called where selects_per_head
    improved = []
    for head in model.heads:
        score = head_score(record, model, head)
        kept = best.get(head)
        if score is None:
            continue
        replayed = kept is not None and score == kept["score"] and record["epoch"] == kept["epoch"]
        if kept is not None and not (score > kept["score"] or replayed):
            continue
        best[head] = {"epoch": record["epoch"], "score": score}
        improved.append(head)
    if improved and run.main:
        path = run.directory / HEADS_TENSORS
        tensors = safetensors.torch.load_file(path) if path.is_file() else {}
        for head in improved:
            prefix = f"heads.{head}."
            tensors = {n: t for n, t in tensors.items() if not n.startswith(prefix)}
            tensors.update({n: _cpu(t) for n, t in head_tensors(model, head).items()})
        _write_tensors(path, tensors)
        atomic_write_json(run.directory / HEADS_JSON, best)
    return improved


def restore_head_bests(
    directory: Path, model: MultiHeadModel, saved: dict[str, dict], model_epoch: int | None
) -> dict[str, int | None]:
    """Put every head saved in `directory` back at its best epoch (`saved`: the run's
    `head_best`, as best_heads.json holds it); returns head -> the epoch each head is from: a head
    the validation split never scored (no labelled rows) stays at the model's best epoch
    (`model_epoch`, which `restore_best` restored)."""
    path = directory / HEADS_TENSORS
    if path.is_file():
        targets = {n: t for head in model.heads for n, t in head_tensors(model, head).items()}
        _copy_into(targets, safetensors.torch.load_file(path), directory, "head tensors")
    return {head: saved[head]["epoch"] if head in saved else model_epoch for head in model.heads}


def resumed_without_head_bests(directory: Path) -> bool:
    """A run resumed from a checkpoint written before heads kept their own epochs (best.json but
    no best_heads.json): it goes on with one epoch for all, rather than forget the epochs before."""
    from headkit.training.checkpoint import BEST_JSON

    return (directory / BEST_JSON).is_file() and not (directory / HEADS_JSON).is_file()
