"""The training recipe: run directory -> data -> model -> the strategy's loop -> best model + report.

Reads top to bottom (torchtune style): `run_recipe` prepares everything once (the data, then the
model: built on a backbone, or one given to train further) and hands it to the loop (`loop.fit`,
or few-shot's two phases), then `finish_run` scores, saves and reports. The CLI (`train`) and
`headkit.Trainer` both run it. Runs unchanged under `accelerate launch` on several processes;
only the main process writes files.

    RUN/config.yaml        the resolved config; --resume refuses a different one. Written only once
                           the inputs checked out (run_dir.py): a run with a wrong --data or label
                           column leaves no claim, and its corrected rerun is not refused
    RUN/checkpoint/        last training state (every `save_every` steps and each epoch)
    RUN/best.safetensors   trainable weights of the best epoch so far
    RUN/model/             the final model (best epoch): backbone/ + heads.json + heads/NAME/
    RUN/metrics.json       per-head metrics, losses, parameter counts, timings
    RUN/*.png              loss curves per head, confusion matrix per classification head
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from headkit.backbone import input_limit, load_config, load_processor, max_input_tokens
from headkit.backbone_outputs import is_causal
from headkit.data.tasks import PreparedData, TaskSpec, prepare, reads_stream
from headkit.errors import HeadkitError
from headkit.heads import HeadConfig, head_class
from headkit.model import MultiHeadModel
from headkit.training.class_weights import with_class_weights
from headkit.training.config import TrainConfig, check_ranges
from headkit.training.distributed import main_process_prints, process_state
from headkit.training.fewshot import fewshot_heads
from headkit.training.finish import finish_run
from headkit.training.loop import fit
from headkit.training.run_dir import check_run_dir, claim_run_dir
from headkit.training.state import TrainResult, TrainState
from headkit.training.strategies import parse_strategy

logger = logging.getLogger(__name__)


def train(config: TrainConfig, sources: dict[str, Any] | None = None) -> TrainResult:
    """Run a whole training recipe and return the best model with its validation metrics.

    `sources` maps a task's `data` (or `eval_data`) string to an in-memory dataset."""
    return run_recipe(config, sources)


def run_recipe(
    config: TrainConfig,
    sources: dict[str, Any] | None = None,
    model: MultiHeadModel | None = None,
    configs: dict[str, HeadConfig] | None = None,
) -> TrainResult:
    """The one flow every run takes (the CLI's and `headkit.Trainer`'s): the run directory, then
    data -> model -> the strategy's loop -> finish.

    `model`: train this model (its backbone and heads, each head keeping its label map) and add
    the tasks' other heads to it; None builds one on `config.model`. A task for one of its heads
    must have the head's type. `configs`: heads given as configs (the task of the same name says
    where their labels are): built with every setting they hold, their labels (if any) as the
    label map, else the data's."""
    from accelerate.utils import set_seed

    check_ranges(config)
    state = process_state()
    strategy = parse_strategy(config.strategy)
    with main_process_prints(state):
        if state.is_main_process:
            check_run_dir(config)  # fail before any expensive work if the directory holds another run
        tasks = config.all_tasks()
        if strategy.closed_form and reads_stream(tasks, sources):
            raise HeadkitError(
                "strategy fewshot solves its heads on every labelled example at once, which a stream "
                "(datasets.IterableDataset, hf:...?streaming) cannot give: load the data without streaming"
            )
        if model is not None:
            check_kept_heads(model, tasks)
            tasks = [with_kept_options(model, t) for t in tasks]
            processor = model._processor()
            if processor is None:
                raise HeadkitError(
                    "the model has no tokenizer or image processor to read the data with (none was given and "
                    "none is saved beside its backbone): call model.set_processor(processor) first"
                )
            max_length = max_input_tokens(model.backbone.config, processor, config.max_length)
            causal = is_causal(model.backbone.config)
        else:
            processor = load_processor(config.model, trust_remote_code=config.trust_remote_code)
            max_length = input_limit(config.model, processor, config.max_length, config.trust_remote_code)
            causal = is_causal(load_config(config.model, trust_remote_code=config.trust_remote_code))
        configs = configs or {}
        maps = {n: list(c.labels) for n, c in configs.items() if c.labels}
        maps.update({t.name: list(model.heads[t.name].config.labels) for t in tasks if model and t.name in model.heads})
        assert config.val_fraction is not None  # TrainConfig.__post_init__ filled the strategy's default
        fraction, seed = config.val_fraction, config.seed
        data = prepare(
            tasks, processor, max_length, fraction, seed, label_maps=maps, sources=sources, causal=causal,
            labelled_only=True,
        )  # fmt: skip
        data.heads.update({n: dataclasses.replace(c, labels=data.heads[n].labels) for n, c in configs.items()})
        heads = with_class_weights(config.class_weights, data)
        if strategy.closed_form:  # solved heads read unit vectors: configured so before they are built
            heads = fewshot_heads(heads)
        set_seed(config.seed)
        if model is None:
            model = MultiHeadModel.on_backbone(
                config.model,
                heads,
                weighting=config.weighting,
                trust_remote_code=config.trust_remote_code,
                processor=processor,
            )
        else:
            add_heads(model, heads, data.heads, {t.name: t.options for t in tasks})
        model.max_length = max_length
        model.training_facts = None  # an earlier run's no longer describe it; this run's are set when it finishes
        model.columns = {t.name: read_columns(t) for t in tasks}
        if strategy.closed_form:
            return fit_fewshot(config, model, processor, data)
        return fit(config, model, processor, data)


def read_columns(task: TaskSpec) -> dict[str, str | None]:
    """The columns a task's head reads (kept on the model: what `evaluate` reads by default)."""
    label = head_class(task.type).codec.label_column(task.label)
    return {"label": label, "text": task.text, "text_pair": task.text_pair}


def check_kept_heads(model: MultiHeadModel, tasks: list[TaskSpec]) -> None:
    """A task for a head the model already has must be of that head's type (its weights and label
    map train on); a head of another type needs a name of its own."""
    for task in tasks:
        kind = model.heads[task.name].config.type if task.name in model.heads else task.type
        if kind != task.type:
            raise HeadkitError(
                f"head '{task.name}': the model's head is a {kind} head, the task asks for a "
                f"{task.type} head; give the new head another name, or model.remove_head('{task.name}') first"
            )


def with_kept_options(model: MultiHeadModel, task: TaskSpec) -> TaskSpec:
    """A task for a head the model has: its data read with the head's own settings (a span head's
    windows' overlap) unless the task's options change them."""
    if task.name not in model.heads:
        return task
    return dataclasses.replace(task, options={**model.heads[task.name].config.task_options(), **task.options})


def add_heads(
    model: MultiHeadModel,
    heads: dict[str, HeadConfig],
    prepared: dict[str, HeadConfig],
    options: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Add the run's new heads to `model`; a head it has keeps its weights, with what the run sets
    on top of the data's config (class weights, few-shot's unit vectors, its task's `options`) set
    on it too. Every changed head is taken off before any is put back, so heads that must agree
    (span heads' windows) can change together."""
    rebuilt = {}
    for name, config in heads.items():
        if name not in model.heads:
            continue
        base = prepared[name]
        changed = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(base, f.name)
        }
        kept = model.heads[name].config
        changed.update({k: v for k, v in (options or {}).get(name, {}).items() if getattr(kept, k) != v})
        if changed:  # configs are values: a new head with the new settings and the trained weights
            rebuilt[name] = (dataclasses.replace(kept, **changed), model.heads[name].state_dict())
    weighting = model.weighting.state_dict()
    for name in rebuilt:
        model.remove_head(name)
    for name, (config, weights) in rebuilt.items():
        model.add_head(name, config)
        model.heads[name].load_state_dict(weights)
    if rebuilt:
        model.weighting.load_state_dict(weighting)
    for name, config in heads.items():
        if name not in model.heads:
            model.add_head(name, config)


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
    for name in data.heads:  # the heads as built, a head the model already had included
        fewshot = model.heads[name].fewshot
        assert fewshot is not None  # fewshot_heads refused head types without a few-shot part
        fewshot.check(model.heads[name].config)
    model.to(state.device)
    # TrainConfig.__post_init__ filled these with the strategy's defaults
    assert config.fewshot_recipe is not None and config.fewshot_steps is not None
    assert config.fewshot_iterations is not None and config.batch_size is not None and config.backbone_lr is not None
    if state.is_main_process:
        claim_run_dir(config)  # the inputs checked out: the run directory is this run's from here on
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
