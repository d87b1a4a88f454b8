"""The training recipe: data -> model -> strategy -> phases of epochs -> best model + report.

Reads top to bottom (torchtune style). Runs unchanged under `accelerate launch` on several
GPUs: the model, optimizer and data loader go through `Accelerator.prepare`, bf16 is used where
the hardware has it, and only the main process writes files.

    RUN/config.yaml        the resolved config; --resume refuses a different one
    RUN/checkpoint/        last training state (every `save_every` steps and each epoch)
    RUN/best.safetensors   trainable weights of the best epoch so far
    RUN/model/             the final model (best epoch): backbone/ + heads.json + heads.safetensors
    RUN/metrics.json       per-head metrics, losses, parameter counts, timings
    RUN/*.png              loss curves per head, confusion matrix per classification head
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from headkit.backbone import input_limit, load_backbone, load_processor
from headkit.checkpoint import load_train_state, restore_rng_state, save_train_state
from headkit.config import TrainConfig, check_ranges
from headkit.data import LengthGroupedBatches, collate, model_inputs
from headkit.errors import CheckpointError, HeadkitError
from headkit.evaluate import Evaluation, evaluate
from headkit.features import FeatureCache, cached_features, weights_digest
from headkit.fewshot import CONTRASTIVE_FILE
from headkit.io import atomic_write_bytes, atomic_write_json, recover_dir, save, write_failed
from headkit.model import MultiHeadModel
from headkit.report import print_summary, write_report
from headkit.strategies import (
    Strategy,
    adamw,
    apply_lora,
    count_parameters,
    freeze_bottom,
    parse_strategy,
    set_backbone_trainable,
)
from headkit.tasks import PreparedData, prepare


@dataclass
class Phase:
    name: str
    epochs: int
    cached: bool  # heads on cached backbone features (the backbone never runs)
    frozen: bool = False  # the backbone does not train (and runs in eval mode when not cached)


@dataclass
class TrainResult:
    run_dir: Path
    model: MultiHeadModel
    evaluation: Evaluation | None
    metrics: dict[str, Any]


def plan_phases(strategy: Strategy, config: TrainConfig) -> list[Phase]:
    if strategy.name == "frozen":
        return [Phase("heads", config.epochs, cached=config.feature_cache, frozen=True)]
    if strategy.name == "lp-ft":
        return [
            Phase("probe", config.lp_epochs, cached=config.feature_cache, frozen=True),
            Phase("finetune", config.epochs, cached=False),
        ]
    return [Phase("train", config.epochs, cached=False)]


def set_trainable(model: MultiHeadModel, strategy: Strategy, phase: Phase) -> None:
    """Which weights train in this phase: the heads, then the backbone's rule.

    The backbone's rule is applied last on purpose: a head tied to the input embeddings (an LM
    decoder) shares that tensor with the backbone, and must stay frozen whenever the backbone
    is (frozen, partial, LoRA).
    """
    for p in [*model.heads.parameters(), *model.weighting.parameters()]:
        p.requires_grad_(True)
    if phase.frozen:
        set_backbone_trainable(model.backbone, False)
    elif strategy.name in ("full", "lp-ft"):
        set_backbone_trainable(model.backbone, True)
    elif strategy.name == "partial":
        set_backbone_trainable(model.backbone, True)
        freeze_bottom(model.backbone, strategy.frozen_layers)
    elif strategy.name == "lora":  # only the adapters train inside the backbone
        for name, p in model.backbone.named_parameters():
            p.requires_grad_("lora_" in name)


def make_optimizer(model: MultiHeadModel, config: TrainConfig, strategy: Strategy) -> torch.optim.AdamW:
    head_ids = {id(p) for p in [*model.heads.parameters(), *model.weighting.parameters()]}
    backbone_lr = config.lora_lr if strategy.name == "lora" else config.backbone_lr
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for p in {id(p): p for p in model.parameters()}.values():
        if not p.requires_grad:
            continue
        lr = config.lr if id(p) in head_ids else backbone_lr
        decay = config.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in sorted(groups.items())]
    return adamw(params)


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


def _features(model, data, pad_id, config, accelerator, digest: str) -> FeatureCache:
    poolings = {h.config.pooling for h in model.heads.values() if not h.per_token}
    need_tokens = any(h.per_token for h in model.heads.values())
    with accelerator.main_process_first():
        cache, hit = cached_features(
            model,
            data,
            poolings,
            need_tokens,
            batch_size=64,
            pad_id=pad_id,
            progress=config.progress and accelerator.is_main_process,
            backbone_digest=digest,
        )
    if accelerator.is_main_process:
        print(f"backbone features for {len(data)} examples: {'reused from cache' if hit else 'computed and cached'}")
    return cache


def _to_device(cache_batch, device):
    hidden, mask, pooled = cache_batch
    return (
        hidden.to(device) if hidden is not None else None,
        mask.to(device),
        {k: v.to(device) for k, v in pooled.items()},
    )


def _save_best(run: Path, model: MultiHeadModel, backbone_modified: bool, epoch_record: dict) -> None:
    keep = {n: p for n, p in model.named_parameters() if n.startswith(("heads.", "weighting."))}
    if backbone_modified:
        keep.update({n: p for n, p in model.named_parameters() if n.startswith("backbone.")})
    tied = {f"heads.{n}" for n in model.tied_parameter_names()}
    tensors = {n: p.detach().cpu().contiguous() for n, p in keep.items() if n not in tied}
    atomic_write_bytes(run / "best.safetensors", safetensors.torch.save(tensors))
    atomic_write_json(run / "best.json", {"backbone_modified": backbone_modified, **epoch_record})


def _restore_best(run: Path, model: MultiHeadModel, config: TrainConfig, backbone_modified: bool) -> dict:
    info = json.loads((run / "best.json").read_text(encoding="utf-8"))
    if backbone_modified and not info["backbone_modified"]:
        # the best epoch came before the backbone was touched (lp-ft probe): use pristine weights
        pristine = load_backbone(config.model, trust_remote_code=config.trust_remote_code)
        model.backbone.load_state_dict(pristine.state_dict(), strict=False)
    state = safetensors.torch.load_file(run / "best.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    return info


def _checkpoint(accelerator, directory: Path, wrapped, optimizer, scheduler, progress: dict) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_train_state(directory, accelerator.unwrap_model(wrapped), optimizer, scheduler, progress)


def quiet_if_asked(config: TrainConfig) -> None:
    """--no_progress also silences transformers' own loading and saving bars (CI logs, scripts)."""
    if not config.progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()


def train(config: TrainConfig, sources: dict[str, Any] | None = None) -> TrainResult:
    """Run a whole training recipe and return the best model with its validation metrics."""
    from accelerate import PartialState
    from accelerate.utils import set_seed

    quiet_if_asked(config)
    check_ranges(config)
    if PartialState().is_main_process:
        prepare_run_dir(config)  # fail before any expensive work if the directory holds another run
    tokenizer = load_processor(config.model, trust_remote_code=config.trust_remote_code)
    max_length = input_limit(config.model, tokenizer, config.max_length, config.trust_remote_code)
    data = prepare(config.all_tasks(), tokenizer, max_length, config.val_fraction, config.seed, sources=sources)
    set_seed(config.seed)
    model = MultiHeadModel.from_pretrained(
        config.model, data.heads, weighting=config.weighting, trust_remote_code=config.trust_remote_code
    )
    if parse_strategy(config.strategy).name == "fewshot":
        return fit_fewshot(config, model, tokenizer, data)
    return fit(config, model, tokenizer, data)


def fit(
    config: TrainConfig,
    model: MultiHeadModel,
    tokenizer: Any,
    data: PreparedData,
    make_batch: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    make_eval_batch: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> TrainResult:
    """The training loop proper: phases of epochs over `data`, checkpoints, resume, best model.

    `make_batch` turns a list of examples into a batch (default: dynamic padding with the
    examples' labels); continued pretraining passes one that masks tokens on the fly, and a
    deterministic `make_eval_batch` for validation.
    """
    from accelerate import Accelerator

    started = time.perf_counter()
    strategy = parse_strategy(config.strategy)
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=config.grad_accum)
    main = accelerator.is_main_process
    if main and accelerator.num_processes > 1:
        print(f"distributed: {accelerator.num_processes} processes ({accelerator.distributed_type.value})")
    run = Path(config.output_dir)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0  # image processors have none
    if make_batch is None:
        make_batch = functools.partial(collate, pad_id=pad_id, head_types=data.head_types, widths=data.widths)
    if strategy.name == "lora":
        model.backbone = apply_lora(
            model.backbone, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets
        )
    model.to(accelerator.device)

    # --- resume bookkeeping
    progress: dict[str, Any] = {
        "phase": 0,
        "epoch": 0,
        "batches_done": 0,
        "global_step": 0,
        "best": [-math.inf, -math.inf],  # (objective, -validation loss), compared in that order
        "bad_epochs": 0,
        "steps": [],
        "epochs": [],
        "backbone_modified": False,
    }
    resume_dir = run / "checkpoint"
    if config.resume and main:
        recover_dir(resume_dir)  # a kill mid-swap leaves the previous checkpoint set aside
    accelerator.wait_for_everyone()
    resuming = config.resume and (resume_dir / "state.json").is_file()

    phases = plan_phases(strategy, config)
    caches: dict[str, FeatureCache] = {}
    for phase_index, phase in enumerate(phases):
        if resuming and phase_index < json.loads((resume_dir / "state.json").read_text())["progress"]["phase"]:
            continue
        set_trainable(model, strategy, phase)
        trainable, total = count_parameters(model)
        if main:
            print(
                f"phase '{phase.name}' ({strategy.name}): {trainable:,} trainable of {total:,} parameters "
                f"({100 * trainable / total:.2f}%)"
            )
        if phase.cached and "train" not in caches:
            digest = weights_digest(model.backbone)  # hashed once for both datasets
            caches["train"] = _features(model, data.train, pad_id, config, accelerator, digest)
            if len(data.val):
                caches["val"] = _features(model, data.val, pad_id, config, accelerator, digest)
        sampler = LengthGroupedBatches(data.train.lengths(), config.batch_size, seed=config.seed)
        loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=make_batch)
        optimizer = make_optimizer(model, config, strategy)
        wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
        total_steps = max(1, steps_per_epoch * phase.epochs)
        scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
        if resuming:
            progress = load_train_state(resume_dir, accelerator.unwrap_model(wrapped), optimizer, scheduler)
            resuming, rng_pending = False, True
            if main:
                print(
                    f"resumed from {resume_dir}: phase {progress['phase'] + 1}, epoch {progress['epoch'] + 1}, "
                    f"{progress['batches_done']} batches into it"
                )
        else:
            rng_pending = False
            progress.update(phase=phase_index, epoch=0, batches_done=0, bad_epochs=0)
        if not phase.frozen:
            progress["backbone_modified"] = True

        while progress["epoch"] < phase.epochs:
            epoch = progress["epoch"]
            # accelerate's loaders call set_epoch(their own pass count) on every iteration, so the
            # epoch is set on the loader itself: a resumed run then sees the same batch order.
            loader.set_epoch(epoch)
            skip = progress["batches_done"]
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            if skip:
                batches.set_epoch(epoch)
            if rng_pending and not skip:  # resumed at an epoch boundary: restore before the iterator's draw
                restore_rng_state(resume_dir)
                rng_pending = False
            iterator = iter(batches)
            if rng_pending:  # resumed mid-epoch: the saved state already includes the loader's draw,
                first = next(iterator, None)  # which happens lazily, at the first batch
                iterator = itertools.chain([] if first is None else [first], iterator)
                restore_rng_state(resume_dir)
                rng_pending = False
            wrapped.train()
            if phase.frozen:  # a frozen feature extractor: no dropout, same features every epoch
                accelerator.unwrap_model(wrapped).backbone.eval()
            epoch_started = time.perf_counter()
            bar = tqdm(
                total=len(loader),
                initial=skip,
                desc=f"{phase.name} {epoch + 1}/{phase.epochs}",
                disable=not (config.progress and main),
                leave=False,
            )
            for batch in iterator:
                with accelerator.accumulate(wrapped):
                    if phase.cached:
                        out = wrapped(
                            labels=batch["labels"],
                            features=_to_device(caches["train"].batch(batch["index"].cpu()), accelerator.device),
                        )
                    else:
                        out = wrapped(labels=batch["labels"], **model_inputs(batch))
                    accelerator.backward(out.loss)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                progress["batches_done"] += 1
                bar.update(1)
                if accelerator.sync_gradients:
                    scheduler.step()
                    progress["global_step"] += 1
                    losses = {k: round(v.detach().item(), 5) for k, v in out.losses.items()}
                    progress["steps"].append({"step": progress["global_step"], "losses": losses})
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                    if config.save_every and progress["global_step"] % config.save_every == 0:
                        _checkpoint(accelerator, resume_dir, wrapped, optimizer, scheduler, progress)
            bar.close()
            # --- end of epoch: validate, keep the best, maybe stop early
            unwrapped = accelerator.unwrap_model(wrapped)
            record: dict[str, Any] = {
                "phase": phase.name,
                "epoch": len(progress["epochs"]) + 1,
                "train_seconds": round(time.perf_counter() - epoch_started, 3),
            }
            if len(data.val):
                ev = evaluate(
                    unwrapped,
                    data.val,
                    pad_id,
                    batch_size=config.batch_size,
                    cache=caches.get("val") if phase.cached else None,
                    make_batch=make_eval_batch,
                )
                record.update(val_losses=ev.losses, scores=ev.scores, objective=ev.objective(unwrapped))
            # Better metric, or the same metric at a lower loss: accuracy on a small validation set
            # moves in coarse steps and plateaus while the loss still falls, so loss breaks ties.
            score = [record.get("objective", 0.0), -sum(record.get("val_losses", {}).values())]
            improved = not len(data.val) or score > progress["best"]
            if improved:
                progress["best"], progress["bad_epochs"] = score, 0
                if main:
                    _save_best(run, unwrapped, progress["backbone_modified"], record)
            else:
                progress["bad_epochs"] += 1
            progress["epochs"].append(record)
            if main and "scores" in record:
                shown = ", ".join(
                    f"{h}: {unwrapped.heads[h].primary_metric} {s.get(unwrapped.heads[h].primary_metric, 0):.4f}"
                    for h, s in record["scores"].items()
                )
                print(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: {shown}{' *' if improved else ''}")
            progress.update(epoch=epoch + 1, batches_done=0)
            stop = config.patience and progress["bad_epochs"] >= config.patience
            if stop:
                progress["epoch"] = phase.epochs
            _checkpoint(accelerator, resume_dir, wrapped, optimizer, scheduler, progress)
            if stop and main:
                print(f"early stopping: no improvement for {config.patience} epochs")
        progress.update(phase=phase_index + 1, epoch=0, batches_done=0)

    # --- the best model, its final evaluation, the report
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(wrapped)
    best = _restore_best(run, model, config, progress["backbone_modified"])
    return finish_run(config, model, tokenizer, data, progress, started, best.get("epoch"), main, make_eval_batch)


def finish_run(
    config: TrainConfig,
    model: MultiHeadModel,
    tokenizer: Any,
    data: PreparedData,
    progress: dict[str, Any],
    started: float,
    best_epoch: int | None,
    main: bool = True,
    make_eval_batch: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> TrainResult:
    """Score the final model on the validation split, save it, and write the report."""
    run = Path(config.output_dir)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    evaluation = (
        evaluate(model, data.val, pad_id, config.batch_size, make_batch=make_eval_batch) if len(data.val) else None
    )
    metrics = {
        "strategy": config.strategy,
        "best_epoch": best_epoch,
        "heads": evaluation.scores if evaluation else {},
        "val_losses": evaluation.losses if evaluation else {},
        "trainable_params": count_parameters(model)[0],
        "total_params": count_parameters(model)[1],
        "train_examples": len(data.train),
        "val_examples": len(data.val),
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": progress["epochs"],
        **progress.get("extra", {}),
    }
    if main:
        save(model, run / "model", processor=tokenizer)
        write_report(run, model, evaluation, progress, metrics)
        print_summary(model, evaluation, metrics)
    return TrainResult(run, model, evaluation, metrics)


def fit_fewshot(config: TrainConfig, model: MultiHeadModel, tokenizer: Any, data: PreparedData) -> TrainResult:
    """strategy fewshot: contrastive pairs, then heads solved on frozen features (see fewshot.py).

    Runs in one process: a few hundred examples do not need several GPUs.
    """
    from headkit.fewshot import run_fewshot

    started = time.perf_counter()
    if torch.cuda.is_available():
        model.to("cuda")
    result = run_fewshot(
        model,
        data.train,
        data.head_types,
        Path(config.output_dir),
        iterations=config.fewshot_iterations,
        batch_size=config.batch_size,
        lr=config.backbone_lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        pad_id=getattr(tokenizer, "pad_token_id", None) or 0,
        resume=config.resume,
        progress=config.progress,
    )
    steps = result.pop("steps")
    progress = {"steps": steps, "epochs": [], "extra": {"fewshot": result}}
    return finish_run(config, model, tokenizer, data, progress, started, None)
