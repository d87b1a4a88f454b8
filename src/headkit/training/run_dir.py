"""The run directory: checked first, claimed only when training is about to start.

Two steps, so that a run whose inputs are wrong leaves nothing behind. `check_run_dir` reads and
never writes: it runs before any expensive work and refuses a directory that holds another run
(or, for --resume, one with a different configuration). `claim_run_dir` writes `config.yaml`
and clears what a replaced run left; the loop calls it once everything the run reads has checked
out (the model loaded, the data read and encoded, the heads built, the metric, LoRA and trackers
set up). A wrong `--data` or label column therefore leaves `--output_dir` as it was (absent,
empty, or still holding the previous run when --overwrite was given), and the corrected rerun
is not refused as "already holds a run".

Under several processes only the main process calls either; the others wait for it at the loop's
first barrier before they look for a checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from headkit._fs import atomic_write_bytes, write_failed
from headkit.errors import CheckpointError, HeadkitError
from headkit.training.config import identity_value
from headkit.training.fewshot import CONTRASTIVE_FILE
from headkit.training.head_best import HEADS_JSON, HEADS_TENSORS

CONFIG_FILE = "config.yaml"
# what a previous run in the directory left that a new (not resumed) run must not read: its
# checkpoints, and what `--engine auto` measured on its model (ship/engines.py)
STALE = (
    "checkpoint",
    "best.safetensors",
    "best.json",
    HEADS_TENSORS,
    HEADS_JSON,
    CONTRASTIVE_FILE,
    "validation.json",
    "engines.json",
    "export-onnx",
)


def check_run_dir(config: Any) -> Path:
    """Refuse a run directory that would mix two runs; writes nothing.

    `config` is a TrainConfig (or one of its subclasses: pretraining, instruction tuning)."""
    run = Path(config.output_dir)
    saved = run / CONFIG_FILE
    if run.exists() and not run.is_dir():
        raise HeadkitError(f"--output_dir {run} is a file, not a directory; choose another --output_dir")
    if config.resume and not saved.is_file():
        raise CheckpointError(f"--resume: {run} holds no run to continue; drop --resume to start one there")
    if config.resume:
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        current = config.identity()
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if diff:
            details = "; ".join(
                f"{k}: was {identity_value(previous, k)!r}, now {identity_value(current, k)!r}" for k in diff[:5]
            )
            raise CheckpointError(
                f"--resume: {run} holds a run with a different configuration ({details}); "
                "resume with the same settings, or choose another --output_dir"
            )
    elif saved.is_file() and not config.overwrite:
        raise HeadkitError(
            f"{run} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --output_dir"
        )
    return run


def claim_run_dir(config: Any) -> Path:
    """Make `config.output_dir` this run's: check it again, write config.yaml (what --resume
    compares against) and remove a replaced run's checkpoint and best weights. A resumed run
    keeps everything."""
    run = check_run_dir(config)
    if config.resume:
        return run
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(run, e) from e
    atomic_write_bytes(run / CONFIG_FILE, yaml.safe_dump(config.identity(), sort_keys=True).encode("utf-8"))
    for stale in STALE:
        path = run / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return run
