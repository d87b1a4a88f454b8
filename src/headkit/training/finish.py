"""The end of a run: the final validation scores (multi-label thresholds and question-answering null
thresholds tuned first), the saved model, metrics.json, plots and the summary. Shared by the loop
and few-shot training."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from headkit.data.batching import EncodedData
from headkit.data.tasks import PreparedData
from headkit.heads import HeadConfig, head_class
from headkit.model import MultiHeadModel
from headkit.ship.save import save
from headkit.training.config import TrainConfig
from headkit.training.evaluate import Evaluation, evaluate, score_heads
from headkit.training.features import FeatureCache
from headkit.training.null_threshold import settle_null_thresholds
from headkit.training.report import chance_notes, print_summary, probe_notes, write_report
from headkit.training.state import TrainResult, TrainState
from headkit.training.strategies import count_parameters, parse_strategy
from headkit.training.validation_set import save_validation_set

logger = logging.getLogger(__name__)


def finish_run(
    config: TrainConfig,
    model: MultiHeadModel,
    processor: Any,
    data: PreparedData,
    state: TrainState,
    started: float,
    best_epoch: int | None,
    main: bool = True,
    make_eval_batch: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    val_cache: FeatureCache | None = None,
    head_epochs: dict[str, int | None] | None = None,
) -> TrainResult:
    """Score the final model on the validation split (on `val_cache`, the backbone's features for
    it, where the run kept them), save it, and write the report. `head_epochs`: the epoch each head
    was taken from, where heads kept their own best epochs (training/head_best.py)."""
    run = Path(config.output_dir)
    pad_id = getattr(processor, "pad_token_id", None) or 0
    evaluation, thresholds = None, {}
    calibrated: dict[str, dict] = {}
    curves: dict[str, tuple] = {}  # head -> its (confidences, correct) before and after, for the reliability diagrams
    assert config.batch_size is not None  # TrainConfig.__post_init__ filled the strategy's default
    null_thresholds = settle_null_thresholds(model, processor, data, config)
    if len(data.val):
        evaluation = evaluate(model, data.val, pad_id, config.batch_size, val_cache, make_batch=make_eval_batch)
        if config.tune_thresholds:
            thresholds = calibrate(model, evaluation)
        if config.temperature_scaling:
            calibrated, before = scale_temperatures(model, evaluation)
        if calibrated:  # scored again as saved: losses and scores of the calibrated weights, as evaluate gives them
            evaluation = evaluate(model, data.val, pad_id, config.batch_size, val_cache, make_batch=make_eval_batch)
            curves = scored_as_saved(model, evaluation, calibrated, before)
        elif thresholds:  # the validation scores at the tuned thresholds (tuned on these same examples)
            evaluation = score_heads(model, evaluation)
        thresholds.update(null_thresholds)
    metrics = {
        "strategy": config.strategy,
        "best_epoch": best_epoch,
        **({"head_best_epochs": head_epochs} if head_epochs else {}),
        "metric_for_best_model": config.metric_for_best_model,
        "heads": evaluation.scores if evaluation else {},
        "per_class": evaluation.reports if evaluation else {},
        "thresholds": thresholds,
        "calibration": calibrated,
        "val_losses": evaluation.losses if evaluation else {},
        "trainable_params": count_parameters(model)[0],
        "total_params": count_parameters(model)[1],
        "train_examples": len(data.train),
        "val_examples": len(data.val),
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": state.epochs,
        **state.extra,
    }
    notes = chance_notes(model, evaluation) + probe_notes(state.epochs, best_epoch)
    if notes:
        metrics["notes"] = notes  # the summary shows them; without one, the log does
        for note in notes if main and not config.print_summary else ():
            logger.warning(note)
    # on the model, not only in this save: saving it again or pushing it writes the same card
    model.training_facts = card_info(config, data, metrics)
    if main and config.keep_files:
        with transformers_bars(config.progress):  # its "Writing model shards" bar
            save(model, run / "model", processor=processor)
        if make_eval_batch is None:  # (a run scored with batches of its own, e.g. masked, is checked on none)
            save_validation_set(run, data.val)  # what `--engine auto` checks other engines on (ship/engines.py)
        write_report(run, model, evaluation, state.steps, state.epochs, metrics, curves)
    if main and config.print_summary:
        print_summary(model, evaluation, metrics)
    return TrainResult(model, metrics, evaluation, run if config.keep_files else None)


@contextlib.contextmanager
def transformers_bars(shown: bool) -> Iterator[None]:
    """transformers' progress bars as the run's `progress` says, for this block only: the setting
    is the process's, and a run must not leave it changed (a notebook's later downloads)."""
    import transformers

    bars = transformers.utils.logging
    before = bars.is_progress_bar_enabled()
    if not shown:
        bars.disable_progress_bar()
    try:
        yield
    finally:
        if before and not shown:
            bars.enable_progress_bar()


def calibrate(model: MultiHeadModel, evaluation: Evaluation) -> dict[str, dict[str, float]]:
    """Let each head tune its decision settings on the validation predictions (multi-label heads:
    a threshold per label) and re-decide those predictions at them; the settings live in the
    head's buffers, so the saved model keeps them."""
    tuned = {}
    for name, head in model.heads.items():
        settings = head.scoring.calibrate(evaluation.predictions[name], evaluation.references[name])
        if settings:
            tuned[name] = settings
            logger.info(f"{name}: decision thresholds tuned on the validation split: {settings}")
    return tuned


def scored_as_saved(
    model: MultiHeadModel, evaluation: Evaluation, calibrated: dict[str, dict], before: dict[str, Any]
) -> dict[str, tuple]:
    """The calibrated heads' ECE and reliability after, from the saved weights' own validation
    predictions (under mixed precision these differ a little from the fit's rescaled ones); returns
    head -> (confidences, correct) before and after, for the reliability diagrams."""
    curves = {}
    for name, fit in calibrated.items():
        fit["ece_after"] = evaluation.scores[name].get("ece", fit["ece_after"])
        after = model.heads[name].scoring.confidences(evaluation.predictions[name], evaluation.references[name])
        curves[name] = (before[name], after)
        logger.info(
            f"{name}: softmax temperature {fit['temperature']:.3f} fitted on the validation split; "
            f"ECE {fit['ece_before']:.4f} -> {fit['ece_after']:.4f}"
        )
    return curves


def scale_temperatures(model: MultiHeadModel, evaluation: Evaluation) -> tuple[dict[str, dict], dict[str, Any]]:
    """Fit each classification head's softmax temperature on the validation predictions (folded
    into its weights, so the saved model keeps it) and re-decide those predictions at it; returns
    head -> {temperature, NLL and ECE before and after} and head -> (confidences, correct) before."""
    fitted, before = {}, {}
    for name, head in model.heads.items():
        untouched = head.scoring.confidences(evaluation.predictions[name], evaluation.references[name])
        settings = head.scoring.scale_temperature(evaluation.predictions[name], evaluation.references[name])
        if settings:
            fitted[name], before[name] = settings, untouched
    return fitted, before


# What the model card lists of a run's settings: those of the training loop, then those only some
# strategies read (below). Unset ones (None) are left out; the card gives the max_length the
# model reads (the setting capped at the backbone's limit) on its own line.
LOOP_SETTINGS = (
    "epochs", "max_steps", "min_steps", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_ratio",
    "max_grad_norm", "weighting", "class_weights", "patience", "metric_for_best_model", "val_fraction", "seed",
    "mixed_precision", "objective", "mlm_probability", "packing",
)  # fmt: skip
BACKBONE_SETTINGS = ("backbone_lr",)  # full, partial:K, lp-ft
LORA_SETTINGS = ("lora_lr", "lora_r", "lora_alpha", "lora_dropout", "lora_targets")
PROBE_SETTINGS = ("lp_epochs",)
FEWSHOT_SETTINGS = (
    "batch_size", "backbone_lr", "weight_decay", "val_fraction", "seed",
    "fewshot_recipe", "fewshot_steps", "fewshot_iterations", "fewshot_tuned_layers",
)  # fmt: skip


def card_info(config: TrainConfig, data: PreparedData, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the saved model's card (ship/card.py) says of this run: its metrics, the model and
    data it trained from, the settings its strategy read, and each head's labelled examples."""
    strategy = parse_strategy(config.strategy)
    if strategy.closed_form:  # fewshot: no epochs of gradient steps on the heads, which are solved
        names: tuple[str, ...] = FEWSHOT_SETTINGS
    else:
        names = LOOP_SETTINGS + (LORA_SETTINGS if strategy.adapters else ())
        names += BACKBONE_SETTINGS if strategy.backbone in ("all", "top") else ()
        names += PROBE_SETTINGS if strategy.probe_first else ()
    settings = {name: getattr(config, name, None) for name in names}
    splits = {"train": data.train, "validation": data.val}
    examples = {name: labelled_examples(split, data.heads) for name, split in splits.items() if len(split)}
    return {
        **metrics,
        "base_model": config.model,
        "data": sorted({str(t.data) for t in _tasks(config)}),
        "hyperparameters": {k: v for k, v in settings.items() if v is not None},
        "examples": {split: counts for split, counts in examples.items() if counts},
    }


def labelled_examples(split: Any, heads: dict[str, HeadConfig]) -> dict[str, int]:
    """Examples with a label per head (a language-model head learns from every example); {} for a
    stream, whose labels are only its first look's."""
    if not isinstance(split, EncodedData):
        return {}
    return {
        name: head_class(config.type).codec.count_labelled(split.labels[name]) if name in split.labels else len(split)
        for name, config in heads.items()
    }


def _tasks(config: TrainConfig) -> list[Any]:
    """The run's data sources as tasks (continued pretraining has a corpus instead)."""
    from headkit.data.tasks import TaskSpec

    corpus = getattr(config, "corpus", None)
    return [TaskSpec("lm", c) for c in corpus] if corpus else config.all_tasks()
