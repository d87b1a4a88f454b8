"""The training recipe: run directory -> data -> model -> the strategy's loop -> best model + report.

Reads top to bottom (torchtune style): `train` prepares everything once and hands it to the
loop (`loop.fit`, or few-shot's two phases), then `finish_run` scores, saves and reports. Runs
unchanged under `accelerate launch` on several processes; only the main process writes files.

    RUN/config.yaml        the resolved config; --resume refuses a different one
    RUN/checkpoint/        last training state (every `save_every` steps and each epoch)
    RUN/best.safetensors   trainable weights of the best epoch so far
    RUN/model/             the final model (best epoch): backbone/ + heads.json + heads/NAME/
    RUN/metrics.json       per-head metrics, losses, parameter counts, timings
    RUN/*.png              loss curves per head, confusion matrix per classification head
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from headkit._fs import atomic_write_bytes, write_failed
from headkit.backbone import input_limit, load_processor
from headkit.data.tasks import PreparedData, prepare
from headkit.errors import CheckpointError, HeadkitError
from headkit.model import MultiHeadModel
from headkit.training.class_weights import with_class_weights
from headkit.training.config import TrainConfig, check_ranges
from headkit.training.distributed import main_process_prints, process_state
from headkit.training.fewshot import CONTRASTIVE_FILE, fewshot_heads
from headkit.training.finish import finish_run
from headkit.training.loop import fit
from headkit.training.state import TrainResult, TrainState
from headkit.training.strategies import parse_strategy

logger = logging.getLogger(__name__)


def prepare_run_dir(config: TrainConfig) -> Path:
    """Create or re-open the run directory; never silently mix two different runs."""
    run = Path(config.output_dir)
    saved = run / "config.yaml"
    if run.exists() and not run.is_dir():
        raise HeadkitError(f"--output_dir {run} is a file, not a directory; choose another --output_dir")
    if config.resume and not saved.is_file():
        raise CheckpointError(f"--resume: {run} holds no run to continue; drop --resume to start one there")
    if saved.is_file() and config.resume:
        previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
        current = config.identity()
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if diff:
            details = "; ".join(f"{k}: was {previous.get(k)!r}, now {current.get(k)!r}" for k in diff[:5])
            raise CheckpointError(
                f"--resume: {run} holds a run with a different configuration ({details}); "
                "resume with the same settings, or choose another --output_dir"
            )
        return run
    if saved.is_file() and not config.overwrite:
        raise HeadkitError(
            f"{run} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --output_dir"
        )
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(run, e) from e
    atomic_write_bytes(saved, yaml.safe_dump(config.identity(), sort_keys=True).encode("utf-8"))
    for stale in ("checkpoint", "best.safetensors", "best.json", CONTRASTIVE_FILE):
        path = run / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return run


def quiet_if_asked(config: TrainConfig) -> None:
    """--no_progress also silences transformers' own loading and saving bars (CI logs, scripts)."""
    if not config.progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()


def train(config: TrainConfig, sources: dict[str, Any] | None = None) -> TrainResult:
    """Run a whole training recipe and return the best model with its validation metrics."""
    from accelerate.utils import set_seed

    quiet_if_asked(config)
    check_ranges(config)
    state = process_state()
    strategy = parse_strategy(config.strategy)
    with main_process_prints(state):
        if state.is_main_process:
            prepare_run_dir(config)  # fail before any expensive work if the directory holds another run
        processor = load_processor(config.model, trust_remote_code=config.trust_remote_code)
        max_length = input_limit(config.model, processor, config.max_length, config.trust_remote_code)
        data = prepare(config.all_tasks(), processor, max_length, config.val_fraction, config.seed, sources=sources)
        heads = with_class_weights(config.class_weights, data)
        if strategy.closed_form:  # solved heads read unit vectors: configured so before they are built
            heads = fewshot_heads(heads)
        set_seed(config.seed)
        model = MultiHeadModel.on_backbone(
            config.model,
            heads,
            weighting=config.weighting,
            trust_remote_code=config.trust_remote_code,
            processor=processor,
        )
        model.max_length = max_length
        if strategy.closed_form:
            return fit_fewshot(config, model, processor, data)
        return fit(config, model, processor, data)


def fit_fewshot(config: TrainConfig, model: MultiHeadModel, processor: Any, data: PreparedData) -> TrainResult:
    """strategy fewshot: contrastive pairs, then heads solved on frozen features (see fewshot.py).
    Under several processes each step's pairs are shared out (setfit recipe: `--batch_size` pairs
    per process per step)."""
    from headkit.training.fewshot import run_fewshot

    started = time.perf_counter()
    state = process_state()
    ignored = [f"--{k}" for k in ("class_weights", "report_to") if getattr(config, k) != "none"]
    if ignored:
        logger.warning(f"note: strategy fewshot does not use {', '.join(ignored)} (heads are solved in closed form)")
    model.to(state.device)
    result = run_fewshot(
        model,
        data.train,
        data.head_types,
        Path(config.output_dir),
        recipe=config.fewshot_recipe,
        steps=config.fewshot_steps,
        iterations=config.fewshot_iterations,
        tuned_layers=config.fewshot_tuned_layers,
        batch_size=config.batch_size,
        lr=config.backbone_lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        pad_id=getattr(processor, "pad_token_id", None) or 0,
        resume=config.resume,
        progress=config.progress and state.is_main_process,
        shard=(state.process_index, state.num_processes),
    )
    record = TrainState(steps=result.pop("steps"), extra={"fewshot": result})
    return finish_run(config, model, processor, data, record, started, None, main=state.is_main_process)
