"""What a training run holds: where it stands (saved with every checkpoint) and what it returns."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headkit.model import MultiHeadModel
    from headkit.training.evaluate import Evaluation


@dataclass
class TrainResult:
    """What training returns: the trained model (the best epoch's weights), its validation metrics
    (the dict metrics.json holds), the full validation record, and the run directory (None when
    the run kept nothing on disk: `headkit.Trainer` without an output_dir)."""

    model: MultiHeadModel
    metrics: dict[str, Any]
    evaluation: Evaluation | None = None
    run_dir: Path | None = None


@dataclass
class TrainState:
    """Where a run stands; saved with every checkpoint and restored by --resume."""

    phase: int = 0  # index into the strategy's phases
    epoch: int = 0  # epochs finished in this phase
    batches_done: int = 0  # batches finished in this epoch
    global_step: int = 0  # optimizer steps over the whole run
    best: list[float] = field(default_factory=lambda: [-math.inf, -math.inf])  # (objective, -val loss)
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    steps: list[dict[str, Any]] = field(default_factory=list)  # per-step losses per head
    epochs: list[dict[str, Any]] = field(default_factory=list)  # per-epoch validation records
    backbone_modified: bool = False  # some phase trained the backbone
    extra: dict[str, Any] = field(default_factory=dict)  # recipe-specific results (few-shot timings)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
