"""Experiment tracking (`report_to`): accelerate's trackers, fed by the training loop.

Scalars: `train/loss/HEAD`, `train/lr`, `train/grad_norm` per optimizer step and `val/HEAD/METRIC`,
`val/HEAD/loss` per epoch, at the global step. TensorBoard writes under RUN/logs/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headkit.errors import HeadkitError
from headkit.extras import EXTRAS, require
from headkit.training.config import TrainConfig


def start_tracking(accelerator: Any, config: TrainConfig) -> None:
    """Open the experiment trackers (report_to) with the run's settings as hyperparameters."""
    if config.report_to in EXTRAS:
        require(config.report_to, f"--report_to {config.report_to}")
    hyperparameters = {
        k: v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in config.identity().items()
        if k != "tasks" and v is not None
    }
    try:
        accelerator.init_trackers(Path(config.output_dir).name or "headkit", config=hyperparameters)
    except (ImportError, ModuleNotFoundError, RuntimeError, ValueError) as e:
        raise HeadkitError(f"--report_to {config.report_to}: the tracker could not start ({e})") from e
    if accelerator.is_main_process and not accelerator.trackers:
        raise HeadkitError(
            f"--report_to {config.report_to}: accelerate found no tracker of that kind installed "
            "(tensorboard: pip install tensorboard)"
        )


def log_step(accelerator: Any, losses: dict[str, float], lr: float, grad_norm: float | None, step: int) -> None:
    scalars = {f"train/loss/{k}": v for k, v in losses.items()} | {"train/lr": lr}
    accelerator.log(scalars | ({"train/grad_norm": grad_norm} if grad_norm is not None else {}), step=step)


def log_validation(accelerator: Any, scores: dict[str, dict[str, float]], losses: dict[str, float], step: int) -> None:
    scalars = {f"val/{h}/{m}": v for h, s in scores.items() for m, v in s.items()}
    accelerator.log(scalars | {f"val/{h}/loss": v for h, v in losses.items()}, step=step)


def finish_tracking(accelerator: Any) -> None:
    """Flush and close the trackers (not accelerate's end_training(): it also ends the process group)."""
    for tracker in accelerator.trackers:
        tracker.finish()
