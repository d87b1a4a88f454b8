"""What a training run holds: where it stands (saved with every checkpoint), what it returns, and
what the loop builds once (`Run`) and per phase (`PhaseRun`) for every step to read."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headkit.data.streaming import StreamedData

if TYPE_CHECKING:
    from headkit.data.batching import LengthGroupedBatches
    from headkit.data.encode import PreparedData
    from headkit.data.streaming import CachedExamples
    from headkit.model import MultiHeadModel
    from headkit.training.config import TrainConfig
    from headkit.training.evaluate import Evaluation
    from headkit.training.features import FeatureCache
    from headkit.training.strategies import Phase, Strategy


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
    # [training, validation] examples the run read (a stream's training data: None); a resume on other
    # data is refused (checkpoints written before the field have [])
    examples: list[int | None] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The fields, not copied: the checkpoint writes them as JSON at once (`dataclasses.asdict`
        deep-copied the growing per-step losses at every checkpoint)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


Batcher = Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclass
class Run:
    """What `fit` builds once and every step of the loop reads."""

    config: TrainConfig
    strategy: Strategy
    accelerator: Any  # accelerate.Accelerator
    model: MultiHeadModel
    data: PreparedData
    directory: Path
    pad_id: int
    make_batch: Batcher
    make_eval_batch: Batcher | None
    make_cached_batch: Batcher | None = None  # a cached phase's batches, labels without inputs (None: make_batch)
    caches: dict[str, FeatureCache] = field(default_factory=dict)
    cached_train: CachedExamples | None = None  # a stream's examples, indexed like caches["train"]
    # resumed from a checkpoint older than the best epoch saved (best.json): that epoch's number, so
    # that its replay counts as the improvement it was (training/loop.py)
    replayed_best_epoch: int | None = None
    # heads on a backbone that never trains keep their own best epochs (training/head_best.py):
    # head -> {"epoch", "score"} so far; None: one best epoch for the whole model
    head_best: dict[str, dict] | None = None

    @property
    def streamed(self) -> bool:
        """The training data is a stream (no length, read as it passes)."""
        return isinstance(self.data.train, StreamedData)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def checkpoint_dir(self) -> Path:
        return self.directory / "checkpoint"


@dataclass
class PhaseRun:
    """The objects one phase trains with (rebuilt per phase: what trains changes between phases)."""

    phase: Phase
    wrapped: Any  # what trains (the model, or its heads on cached features) as accelerate prepared it
    optimizer: torch.optim.Optimizer
    sampler: LengthGroupedBatches | None  # the batch order (None: a stream's own); accelerate shards its batches
    loader: Any
    scheduler: Any
    rng_pending: bool  # resumed: restore the RNG state at the right moment of the first epoch
    trainable: list[torch.nn.Parameter] = field(default_factory=list)  # what gradient clipping sees
    max_steps: int | None = None  # this phase's optimizer steps when max_steps sets them (else its epochs)
    last_batches: int | None = None  # max_steps: the batches of the phase's last epoch (None: all)
