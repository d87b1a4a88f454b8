"""The training loop: phases of epochs over prepared data, with checkpoints, resume and the best epoch.

Reads top to bottom (torchtune's recipes, litgpt's setup -> fit):

    fit(config, model, processor, data)
      setup            accelerator (trackers: tracking.py), gradient checkpointing, LoRA, device, the
                       TrainState (state.py: fresh, or where a checkpoint left it)
      claim_run_dir    config.yaml written only now that the inputs checked out (run_dir.py)
      for each phase   (strategy data: frozen -> heads; lp-ft -> probe, finetune; else -> train)
        start_phase    which weights train, cached features, optimizer, loader, scheduler; resume
                       (the features and the loader: phase_data.py)
        train_epoch    the steps: forward, backward, clipping, optimizer, scheduler, periodic checkpoints
                       (each epoch's batches: phase_data.py)
        end_epoch      validate, keep the best epoch, count bad epochs, checkpoint
      the best epoch's weights restored -> finish_run (finish.py: final evaluation, save, report)

Runs unchanged under `accelerate launch` on several processes: the model, optimizer and loader
go through `Accelerator.prepare`, and only the main process writes files. What `fit` builds once
(`Run`) and per phase (`PhaseRun`) is defined in state.py.

`max_steps` (transformers' meaning: optimizer steps, overriding epochs) sets the length of the
strategy's main phase (the one `epochs` sets; lp-ft's probe keeps `lp_epochs`): it runs the epochs
the steps need, the last one cut short. Streamed training data (`data/streaming.py`: a
`datasets.IterableDataset`) has no length: a phase that runs the backbone over it needs
`max_steps` and trains them as one "epoch" (re-reading the stream as often as needed; validation
at its end); a cached phase first caches the stream's features in one pass (`stream_features`),
then trains its epochs over the cache as usual.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from headkit._fs import recover_dir
from headkit.data.batching import collate, model_inputs
from headkit.data.tasks import PreparedData
from headkit.devices import _mps_available
from headkit.errors import CheckpointError, HeadkitError
from headkit.heads.base import zero_loss
from headkit.model import MultiHeadModel
from headkit.training import tracking
from headkit.training.checkpoint import (
    epoch_score,
    load_train_state,
    restore_best,
    restore_rng_state,
    save_best,
    save_train_state,
    saved_best,
)
from headkit.training.config import TrainConfig
from headkit.training.distributed import check_distributed
from headkit.training.evaluate import check_metric, evaluate
from headkit.training.features import features_needed
from headkit.training.finish import finish_run
from headkit.training.head_best import (
    keep_improved_heads,
    restore_head_bests,
    resumed_without_head_bests,
    saved_head_scores,
    selects_per_head,
)
from headkit.training.phase_data import cache_features, check_stream, epoch_batches, phase_loader
from headkit.training.run_dir import claim_run_dir
from headkit.training.state import Batcher, PhaseRun, Run, TrainResult, TrainState
from headkit.training.strategies import (
    Phase,
    apply_lora,
    count_parameters,
    enable_gradient_checkpointing,
    make_optimizer,
    parse_strategy,
)

logger = logging.getLogger(__name__)


def fit(
    config: TrainConfig,
    model: MultiHeadModel,
    processor: Any,
    data: PreparedData,
    make_batch: Batcher | None = None,
    make_eval_batch: Batcher | None = None,
) -> TrainResult:
    """Phases of epochs over `data`, checkpoints, resume, and the best model (a `TrainResult`).

    `make_batch` turns a list of examples into a batch (default: dynamic padding with the
    examples' labels); continued pretraining passes one that masks tokens on the fly, and a
    deterministic `make_eval_batch` for validation.
    """
    started = time.perf_counter()
    run = setup(config, model, processor, data, make_batch, make_eval_batch)
    phases = run.strategy.phases(config)
    for phase in phases:  # partial:K past the layer count, no layer stack, nothing to train: refused now
        set_trainable(run, phase)
    if run.main:  # everything the run reads checked out: now the directory is this run's (run_dir.py)
        claim_run_dir(config)
    state, resuming = initial_state(run)
    state.examples = example_counts(run)
    if selects_per_head(run) and not (resuming and resumed_without_head_bests(run.directory)):
        run.head_best = saved_head_scores(run.directory) if resuming else {}  # each head keeps its best epoch
    for index, phase in enumerate(phases):
        if resuming and index < _saved_phase(run):
            continue
        main = index == len(phases) - 1  # the `epochs` phase, which max_steps and min_steps set
        steps = (getattr(config, "max_steps", None), getattr(config, "min_steps", 0)) if main else (None, 0)
        current, state = start_phase(run, phase, index, state, resuming, *steps)
        resuming = False
        while state.epoch < current.phase.epochs:
            seconds = train_epoch(run, current, state)
            end_epoch(run, current, state, seconds)
        if current.rng_pending:  # resumed at this phase's end (lp-ft's probe): the next phase draws from here
            restore_rng_state(run.checkpoint_dir)
        state.phase, state.epoch, state.batches_done = index + 1, 0, 0
    run.accelerator.wait_for_everyone()
    tracking.finish_tracking(run.accelerator)
    model = run.model
    best = restore_best(run.directory, model, config, state.backbone_modified)
    head_epochs = {}
    if run.head_best is not None:
        head_epochs = restore_head_bests(run.directory, model, run.head_best, best.get("epoch"))
    # a backbone no phase trained gives the features cached for validation: the final scores read
    # them instead of running the backbone over the split again. Pooled features are cached in
    # fp32, as the backbone gives them; per-token ones in bf16, so per-token heads are scored live
    exact = not state.backbone_modified and not features_needed(model)[1]
    val_cache = run.caches.get("val") if exact else None
    # the final scores in the run's mixed precision: when only a cached phase ran, accelerate
    # wrapped just the heads, and the heads (or a backbone pass) would run in fp32
    with run.accelerator.autocast():
        return finish_run(
            config,
            model,
            processor,
            data,
            state,
            started,
            best.get("epoch"),
            run.main,
            make_eval_batch,
            val_cache,
            head_epochs,
        )


# ----------------------------------------------------------------------------- setup


def release_accelerator_state(mixed_precision: str, cpu: bool) -> None:
    """accelerate keeps one AcceleratorState per process and refuses an Accelerator of another
    precision or device after it ("restart your runtime"): a notebook's second run in bf16 after
    one in fp32 would fail. A state set up otherwise is reset, as transformers' TrainingArguments
    resets it for each Trainer; the process state (devices, process group) is kept."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if not state:
        return
    other_device = cpu and getattr(state.get("device"), "type", "cpu") != "cpu"
    if state.get("_mixed_precision", mixed_precision) != mixed_precision or other_device:
        AcceleratorState._reset_state()


def setup(
    config: TrainConfig,
    model: MultiHeadModel,
    processor: Any,
    data: PreparedData,
    make_batch: Batcher | None,
    make_eval_batch: Batcher | None,
) -> Run:
    """The accelerator (precision, gradient accumulation), LoRA adapters, the device, the batcher."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    strategy = parse_strategy(config.strategy)
    check_metric(model, config.metric_for_best_model)
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    tracked = config.report_to != "none"
    release_accelerator_state(mixed, force_cpu())
    accelerator = Accelerator(
        cpu=force_cpu(),
        mixed_precision=mixed,
        gradient_accumulation_steps=config.grad_accum,
        # a head without labels in a batch (or its learned loss weight) takes no part in that
        # step's loss: DDP must not wait for gradients that never come
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with=config.report_to if tracked else None,
        project_config=ProjectConfiguration(config.output_dir, logging_dir=str(Path(config.output_dir) / "logs")),
    )
    check_distributed(accelerator)
    if tracked:
        tracking.start_tracking(accelerator, config)
    if accelerator.is_main_process and accelerator.num_processes > 1:
        logger.info(
            f"distributed: {accelerator.num_processes} processes ({accelerator.distributed_type.value}); "
            f"{config.batch_size} examples per process per step, {config.batch_size * accelerator.num_processes} "
            "in all; rank 0 writes the run directory"
        )
    pad_id = getattr(processor, "pad_token_id", None) or 0  # image processors have none
    cached_batch = None  # a recipe's own batches (masking, ...) are its business in cached phases too
    if make_batch is None:
        make_batch = functools.partial(collate, pad_id=pad_id, head_types=data.head_types, widths=data.widths)
        cached_batch = functools.partial(make_batch, inputs=False)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model.backbone, strategy)
    if strategy.adapters:
        assert config.lora_dropout is not None  # TrainConfig.__post_init__ filled the strategy's default
        model.backbone = apply_lora(  # type: ignore[misc]  # MultiHeadModel.__setattr__ hands it to the adapter
            model.backbone, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets
        )
    run = Run(
        config, strategy, accelerator, model, data, Path(config.output_dir), pad_id, make_batch, make_eval_batch,
        cached_batch,
    )  # fmt: skip
    if run.streamed:
        check_stream(run)
    model.to(accelerator.device)
    return run


def force_cpu() -> bool:
    """Whether to tell accelerate `cpu=True`: only when there is neither CUDA nor Apple's MPS.

    Without the flag accelerate picks CUDA, else MPS, else the CPU by itself, but several CPU
    processes form a gloo group only when told so; saying it whenever CUDA was absent also kept
    Apple silicon training on the CPU while inference ran on MPS.
    """
    return not (torch.cuda.is_available() or _mps_available())


def initial_state(run: Run) -> tuple[TrainState, bool]:
    """A fresh state, and whether a checkpoint to resume from exists (its state loads per phase)."""
    if run.config.resume and run.main:
        recover_dir(run.checkpoint_dir)  # a kill mid-swap leaves the previous checkpoint set aside
    run.accelerator.wait_for_everyone()
    return TrainState(), bool(run.config.resume and (run.checkpoint_dir / "state.json").is_file())


def example_counts(run: Run) -> list[int | None]:
    """[training, validation] examples as this run reads them (a stream has no length)."""
    return [None if run.streamed else len(run.data.train), len(run.data.val)]


def check_same_data(run: Run, state: TrainState) -> None:
    """Refuse to resume on other data than the checkpoint's: its batch positions and best epoch
    belong to that split (a file edited since, or rows an earlier version kept that training now
    leaves out, give another one)."""
    now = example_counts(run)
    if state.examples and state.examples != now:
        raise CheckpointError(
            f"{run.checkpoint_dir} was written for {state.examples[0]} training and {state.examples[1]} validation "
            f"examples; the data gives {now[0]} and {now[1]} now (changed since?): resume on the same data, or "
            "train afresh with --overwrite"
        )
    state.examples = now


def _saved_phase(run: Run) -> int:
    return json.loads((run.checkpoint_dir / "state.json").read_text())["progress"]["phase"]


def set_trainable(run: Run, phase: Phase) -> tuple[int, int]:
    """Set what trains in `phase` and return (trainable, total) parameters; refuse a phase in which
    nothing would train. `fit` calls it for every phase before the run directory is claimed."""
    run.strategy.set_trainable(run.model, phase)
    trainable, total = count_parameters(run.model)
    if trainable == 0:  # e.g. a seq2seq head that is an encoder-decoder's own (tied) decoder, backbone frozen
        raise HeadkitError(
            f"nothing trains in phase '{phase.name}' of strategy {run.strategy.name}: every weight of the heads "
            "is a frozen backbone weight; use --strategy full, partial:K or lora"
        )
    return trainable, total


def start_phase(
    run: Run,
    phase: Phase,
    index: int,
    state: TrainState,
    resuming: bool,
    max_steps: int | None = None,
    min_steps: int | None = 0,
) -> tuple[PhaseRun, TrainState]:
    """Set what trains, build the optimizer, loader and scheduler, and resume or reset progress.
    `max_steps` / `min_steps`: the phase's optimizer steps, exactly / at least (the returned
    PhaseRun's phase has the epochs they need)."""
    config, accelerator, model = run.config, run.accelerator, run.model
    trainable, total = set_trainable(run, phase)
    if run.main:
        logger.info(
            f"phase '{phase.name}' ({run.strategy.name}): {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / total:.2f}%)"
        )
    if phase.cached and "train" not in run.caches:
        cache_features(run)
    phase, sampler, loader, last_batches = phase_loader(run, phase, max_steps, min_steps)
    optimizer = make_optimizer(model, config, run.strategy)
    # a cached phase never runs the backbone: DDP wraps only the heads and loss weighting that train
    trains = model.trainable_top() if phase.cached else model
    wrapped, optimizer, loader = accelerator.prepare(trains, optimizer, loader)
    total_steps = max_steps or max(1, math.ceil(len(loader) / config.grad_accum) * phase.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    if resuming:
        saved = load_train_state(run.checkpoint_dir, model, optimizer, scheduler)
        state = TrainState.from_dict(saved)
        check_same_data(run, state)
        best = saved_best(run.directory)  # saved after the checkpoint, when its epochs are written every few
        if best is not None and best[1] > state.best:
            state.best, run.replayed_best_epoch = best[1], best[0]
        if run.main:
            logger.info(
                f"resumed from {run.checkpoint_dir}: phase {state.phase + 1}, epoch {state.epoch + 1}, "
                f"{state.batches_done} batches into it"
            )
    else:
        state.phase, state.epoch, state.batches_done, state.bad_epochs = index, 0, 0, 0
    if not phase.frozen:
        state.backbone_modified = True
    trained = [p for p in wrapped.parameters() if p.requires_grad]
    return PhaseRun(
        phase, wrapped, optimizer, sampler, loader, scheduler, resuming, trained, max_steps, last_batches
    ), state


# ----------------------------------------------------------------------------- one epoch


def train_epoch(run: Run, current: PhaseRun, state: TrainState) -> float:
    """The steps of one epoch, from where the state says it stands (a resumed run skips batches).
    Returns the seconds it took."""
    accelerator, phase, wrapped = run.accelerator, current.phase, current.wrapped
    epoch_started = time.perf_counter()
    iterator, skip = epoch_batches(run, current, state)
    steps_before = state.global_step  # a stream's steps are counted from here (its runs do not resume)
    wrapped.train()
    run.model.train()  # a cached phase trains a wrapper of the heads alone: the model's own flag follows
    if phase.frozen:  # a frozen feature extractor: no dropout, same features every epoch
        run.model.backbone.eval()
    streamed = current.sampler is None
    bar = tqdm(
        total=current.max_steps * run.config.grad_accum if streamed else len(current.loader),  # type: ignore[operator]  # a stream has max_steps
        initial=skip,
        desc=f"{phase.name} {state.epoch + 1}/{phase.epochs}",
        disable=not (run.config.progress and run.main),
        leave=False,
    )
    for batch in iterator:
        out, grad_norm = _step(run, current, batch)
        state.batches_done += 1
        bar.update(1)
        if accelerator.sync_gradients:
            current.scheduler.step()
            state.global_step += 1
            losses = {k: round(v.detach().item(), 5) for k, v in out.losses.items()}
            record = {"step": state.global_step, "losses": losses}
            if grad_norm is not None:
                record["grad_norm"] = round(grad_norm, 5)
            state.steps.append(record)
            if run.config.report_to != "none":
                lr = current.scheduler.get_last_lr()[-1]
                tracking.log_step(accelerator, losses, lr, grad_norm, state.global_step)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            if run.config.save_every and state.global_step % run.config.save_every == 0:
                checkpoint(run, current, state)
            if _done(current, state, steps_before):
                break
    bar.close()
    return round(time.perf_counter() - epoch_started, 3)


def _done(current: PhaseRun, state: TrainState, steps_before: int) -> bool:
    """Whether max_steps ends the phase here: a stream after its steps, other data after the
    batches of the last epoch that the steps need."""
    if current.sampler is None:
        return state.global_step - steps_before >= (current.max_steps or 0)
    last = state.epoch == current.phase.epochs - 1
    return current.last_batches is not None and last and state.batches_done >= current.last_batches


def _step(run: Run, current: PhaseRun, batch: dict[str, Any]) -> tuple[Any, float | None]:
    """Forward (on cached features when the phase has them), backward, gradient clipping at the
    end of an accumulation, optimizer step. Returns the output and the gradient norm before
    clipping (None: not clipped this micro-step)."""
    accelerator, wrapped = run.accelerator, current.wrapped
    with accelerator.accumulate(wrapped):
        if current.phase.cached:
            features = run.caches["train"].batch(batch["index"].cpu()).to(accelerator.device)
            out = wrapped(features, labels=batch["labels"])
        else:
            out = wrapped(labels=batch["labels"], **model_inputs(batch))
        loss = out.loss
        if accelerator.num_processes > 1:
            # DDP waits for a gradient of every head whose output the forward returned; a head with
            # no labels in this process's batch gets a zero one (another process may have labels)
            loss = loss + sum((zero_loss(o) for h, o in out.outputs.items() if h not in out.losses), start=0.0)
        accelerator.backward(loss)
        grad_norm = None
        if accelerator.sync_gradients and run.config.max_grad_norm:
            grad_norm = float(accelerator.clip_grad_norm_(current.trainable, run.config.max_grad_norm))
        current.optimizer.step()
        current.optimizer.zero_grad(set_to_none=True)
    return out, grad_norm


# ----------------------------------------------------------------------------- end of epoch


def end_epoch(run: Run, current: PhaseRun, state: TrainState, train_seconds: float) -> None:
    """Validate, keep the best epoch's weights, count epochs without improvement, checkpoint."""
    phase, data = current.phase, run.data
    model = run.model
    record: dict[str, Any] = {
        "phase": phase.name,
        "epoch": len(state.epochs) + 1,
        "train_seconds": train_seconds,
    }
    if len(data.val):
        cache = run.caches.get("val") if phase.cached else None
        assert run.config.batch_size is not None  # TrainConfig.__post_init__ filled the strategy's default
        # no per-class reports: the final evaluation's are enough, and one per small epoch costs more than it
        ev = evaluate(model, data.val, run.pad_id, run.config.batch_size, cache, run.make_eval_batch, reports=False)
        record.update(
            val_losses=ev.losses, scores=ev.scores, objective=ev.objective(model, run.config.metric_for_best_model)
        )
        if run.config.report_to != "none":
            tracking.log_validation(run.accelerator, ev.scores, ev.losses, state.global_step)
    score = epoch_score(record)  # a better metric, or the same at a lower validation loss
    replayed = record["epoch"] == run.replayed_best_epoch and score == state.best  # resumed: its replay
    improved = not len(data.val) or score > state.best or replayed
    # heads that keep their own best epochs (saved before best.json: a resume that finds best.json
    # without them is one from before heads kept theirs): an epoch is bad when it improved none
    per_head = run.head_best is not None and "scores" in record
    heads_improved = keep_improved_heads(run, record) if per_head else []
    if improved:
        state.best = score
        if run.main:
            save_best(run.directory, model, state.backbone_modified, record)
    state.bad_epochs = 0 if (heads_improved if per_head else improved) else state.bad_epochs + 1
    state.epochs.append(record)
    if run.main and "scores" in record:
        shown = ", ".join(
            f"{h}: {model.heads[h].scoring.primary} {s.get(model.heads[h].scoring.primary, 0):.4f}"
            + (" *" if h in heads_improved else "")
            for h, s in record["scores"].items()
        )
        mark = " *" if improved and not per_head else ""  # per head: each head's own mark
        logger.info(f"{phase.name} epoch {state.epoch + 1}/{phase.epochs}: {shown}{mark}")
    state.epoch, state.batches_done = state.epoch + 1, 0
    stop = run.config.patience and state.bad_epochs >= run.config.patience and state.epoch >= phase.min_epochs
    if stop:
        state.epoch = phase.epochs
    if state.epoch >= phase.epochs or state.epoch % phase.checkpoint_every == 0:
        checkpoint(run, current, state)
    if stop and run.main:
        logger.info(f"early stopping: no improvement for {run.config.patience} epochs")


# ----------------------------------------------------------------------------- files


def checkpoint(run: Run, current: PhaseRun, state: TrainState) -> None:
    """The resumable state (main process only; every process waits for it)."""
    run.accelerator.wait_for_everyone()
    if run.main:
        model = run.model
        save_train_state(run.checkpoint_dir, model, current.optimizer, current.scheduler, state.as_dict())
