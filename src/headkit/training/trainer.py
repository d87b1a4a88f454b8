"""`headkit.Trainer` / `headkit.train`: train heads from Python on data held in memory.

    result = headkit.train("minilm", {"sentiment": "label"}, train_dataset=ds["train"], eval_dataset=ds["test"])
    result.model.predict(["A gripping thriller."])

The trainer only translates what a Python user has in hand into what a run reads, then runs the
same recipe as the CLI (`recipe.run_recipe`: data -> model -> the strategy's loop -> finish):

    heads          {name: column | {TaskSpec fields} | TaskSpec | HeadConfig}  -> TaskSpecs
    datasets       Dataset, DatasetDict, IterableDataset, DataFrame, dict of lists, list of dicts
                   -> `sources` under the names "train_dataset" / "eval_dataset" (read_rows and
                   data/streaming.py read them)
    args           a TrainConfig, plus TrainConfig fields as keyword overrides
    model          a model id/alias/path (built on it), or a MultiHeadModel (trained further)

Without `output_dir` the run lives in a scratch directory (the loop's checkpoints and best epoch
need somewhere) that is deleted afterwards; nothing else is written and `run_dir` is None.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from headkit.data.readers import is_split_dict
from headkit.data.taskspec import DEFAULT_HEAD_TYPE, TaskSpec
from headkit.errors import DataError, HeadkitError
from headkit.heads import HeadConfig
from headkit.model import MultiHeadModel
from headkit.training.config import TrainConfig, check_ranges, strategy_filled
from headkit.training.state import TrainResult
from headkit.training.strategies import parse_strategy

TRAIN_KEY, EVAL_KEY = "train_dataset", "eval_dataset"  # the `data` names the tasks read them by
TASK_FIELDS = tuple(f.name for f in dataclasses.fields(TaskSpec) if f.name != "name")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
DEFAULT_OUTPUT_DIR = TrainConfig.__dataclass_fields__["output_dir"].default
DATA_KINDS = (
    "a datasets.Dataset, DatasetDict or IterableDataset, a pandas DataFrame, a dict of column lists, "
    "a list of row dicts, or a file / built-in dataset / hf: name"
)

HeadSpec = str | Mapping[str, Any] | TaskSpec | HeadConfig


class Trainer:
    """Train heads on a backbone (or further train a `MultiHeadModel`) on in-memory data.

    Args:
        model: a model id, alias or path (heads are built on its backbone), or a `MultiHeadModel`:
            that model trains (its backbone and existing heads, each keeping its label map, its
            labels read from the column it trained on, else the column named like the head) and
            the heads of `heads` are added to it.
        heads: head name -> a label column (a classification head); a dict of `TaskSpec` fields
            (`{"label": "tags", "type": "token-classification"}`); a `TaskSpec` (its `data` may
            be None: the trainer's datasets); or a `HeadConfig` (every setting it holds is kept;
            its labels, if given, are the label map; the label column is the head's name).
        train_dataset: the training data (see DATA_KINDS); a DatasetDict gives its "train" split,
            and its "validation" split validates when `eval_dataset` is None.
        eval_dataset: the validation data; None: the DatasetDict's validation split, else
            `val_fraction` of the training data is held out (seeded, stratified).
        args: a `TrainConfig` (strategy, epochs, learning rates ...); default: TrainConfig().
        **overrides: TrainConfig fields that replace those of `args` (`strategy="lora"`, `epochs=3`).
            A changed strategy brings its own defaults for what `args` left at the old one's.
            `output_dir` (a keyword, or set in `args`): keep the run directory there
            (checkpoints, model/, metrics.json, plots; `resume=True` continues it). Without it
            (`args.output_dir` left at TrainConfig's CLI default counts as without) nothing is
            left on disk and `run_dir` is None.
    """

    def __init__(
        self,
        model: str | os.PathLike | MultiHeadModel,
        heads: Mapping[str, HeadSpec] | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        args: TrainConfig | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(model, (str, os.PathLike, MultiHeadModel)):
            raise HeadkitError(
                f"model must be a model id, alias or path, or a MultiHeadModel; got {type(model).__name__}"
            )
        self.model = model
        if isinstance(model, MultiHeadModel) and model.max_length and "max_length" not in overrides and args is None:
            overrides = {**overrides, "max_length": model.max_length}  # trained further: at the limit it was trained at
        self.args, self.keeps_run = run_config(args, overrides)
        if isinstance(model, MultiHeadModel):
            check_given_model(model, self.args)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.heads = dict(heads or {})
        self.tasks, self.configs = head_tasks(self.heads, self.model, self.args)  # bad heads fail here, not later
        if not self.tasks and not self.args.all_tasks():
            raise HeadkitError("no heads to train: give heads={name: label_column, ...} or a MultiHeadModel with heads")

    def train(self) -> TrainResult:
        """Run the training and return the best model with its validation metrics
        (`TrainResult(model, metrics, evaluation, run_dir)`). `self.model` becomes the trained model."""
        from headkit.training.recipe import run_recipe

        sources, tasks = data_sources(self.tasks, self.train_dataset, self.eval_dataset)
        config = dataclasses.replace(self.args, tasks=[*self.args.tasks, *tasks])
        given = self.model if isinstance(self.model, MultiHeadModel) else None
        config.model = backbone_name(given) if given is not None else str(self.model)
        config.print_summary = config.progress  # type: ignore[misc]  # this run's own: a library run with progress=False prints nothing
        if self.keeps_run:
            result = run_recipe(config, sources, given, self.configs)
        else:
            with scratch_dir() as directory:
                config.output_dir = str(directory)
                config.keep_files = False  # type: ignore[misc]  # the scratch directory goes: write no model, report or plots there
                result = run_recipe(config, sources, given, self.configs)
        self.model = result.model.eval()  # as transformers' from_pretrained hands a model over: no live dropout
        return result


def train(
    model: str | os.PathLike | MultiHeadModel,
    heads: Mapping[str, HeadSpec] | None = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    args: TrainConfig | None = None,
    **overrides: Any,
) -> TrainResult:
    """`Trainer(model, heads, train_dataset, eval_dataset, args, **overrides).train()`: see Trainer."""
    return Trainer(model, heads, train_dataset, eval_dataset, args, **overrides).train()


# ----------------------------------------------------------------------------- the run's settings


def run_config(args: TrainConfig | None, overrides: dict[str, Any]) -> tuple[TrainConfig, bool]:
    """`args` with `overrides` applied, and whether the run directory is kept (an output_dir given).

    A TrainConfig fills what is unset from its strategy's defaults when it is made, so an override
    of the strategy would keep the old strategy's values: the fields that strategy filled and
    that still hold what it filled are unset again for the new strategy to fill; a value set by
    hand (when made, or changed since) stays, even one equal to the old strategy's. (A copy made
    with dataclasses.replace is a new config whose values were all given: they all stay.)"""
    if args is not None and not isinstance(args, TrainConfig):
        raise HeadkitError(f"args must be a headkit TrainConfig, got {type(args).__name__}")
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise HeadkitError(f"unknown training option(s) {unknown}; TrainConfig has {sorted(CONFIG_FIELDS)}")
    fields = {f: getattr(args, f) for f in CONFIG_FIELDS} if args is not None else {}
    for name, value in (strategy_filled(args) if args is not None else {}).items():
        if fields[name] == value:
            fields[name] = None
    keeps_run = "output_dir" in overrides or (args is not None and args.output_dir != DEFAULT_OUTPUT_DIR)
    try:
        config = TrainConfig(**{**fields, **overrides})
    except (TypeError, ValueError) as e:
        raise HeadkitError(f"training options: {e}") from e
    if overrides.get("output_dir") is None and "output_dir" in overrides:
        raise HeadkitError("output_dir=None: leave output_dir out to keep nothing on disk, or name a directory")
    parse_strategy(config.strategy)  # a bad strategy or range fails here, before any data is read
    check_ranges(config)
    if config.resume and not keeps_run:
        raise HeadkitError("resume=True continues the run in output_dir: name that output_dir")
    return config, keeps_run


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A directory for one run, deleted afterwards (also when the run fails); under several
    processes every one gets rank 0's, since they all read its checkpoints and best epoch."""
    from headkit.training.distributed import process_state

    state = process_state()
    path: list[Any] = [tempfile.mkdtemp(prefix="headkit-run-") if state.is_main_process else None]  # rank 0's, to all
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(path)
    try:
        yield Path(path[0])
        if state.num_processes > 1:  # no process still reads it when rank 0 deletes it
            state.wait_for_everyone()
    finally:
        if state.is_main_process:
            shutil.rmtree(path[0], ignore_errors=True)


def check_given_model(model: MultiHeadModel, config: TrainConfig) -> None:
    """Refuse what a given model cannot be trained further with: lp-ft's probe phase restarts the
    backbone from its checkpoint's weights (it would drop what this model learned since), and LoRA
    on a backbone that already carries LoRA adapters would wrap it twice."""
    if config.strategy == "lp-ft":
        raise HeadkitError(
            "strategy lp-ft reloads the backbone from its checkpoint when the probe phase wins, which would drop "
            "what this model has learned since: train it further with full, partial:K or lora, or start lp-ft "
            "from the checkpoint's id"
        )
    if config.strategy == "lora" and hasattr(model.backbone, "peft_config"):
        raise HeadkitError(
            "this model's backbone already carries LoRA adapters: train them further with strategy full "
            "(only what is trainable trains), or merge them first: model.backbone = model.backbone.merge_and_unload()"
        )


def backbone_name(model: MultiHeadModel) -> str:
    """Where a given model's backbone came from (the run's `model`: its card, and lp-ft's pristine reload)."""
    return str(getattr(model.backbone.config, "name_or_path", "") or "in-memory model")


# ----------------------------------------------------------------------------- heads


def head_tasks(
    heads: dict[str, HeadSpec], model: Any, config: TrainConfig
) -> tuple[list[TaskSpec], dict[str, HeadConfig]]:
    """Every head to train as a TaskSpec (data None: the trainer's datasets), and the heads given
    as configs. A given model's heads come first: each reads the columns it trained on (its
    `columns`), else a label column named like the head."""
    tasks: dict[str, TaskSpec] = {}
    configs: dict[str, HeadConfig] = {}
    existing = dict(model.heads.items()) if isinstance(model, MultiHeadModel) else {}
    columns = getattr(model, "columns", None) or {}
    for name, head in existing.items():
        read = columns.get(name) or {}
        tasks[name] = _task_for(name, head.config, config, label=read.get("label") or name)
        tasks[name] = dataclasses.replace(
            tasks[name], text=read.get("text") or tasks[name].text, text_pair=read.get("text_pair")
        )
    for name, spec in heads.items():
        if not isinstance(name, str):
            raise HeadkitError(f"head names are strings; got {name!r}")
        if isinstance(spec, str):  # a label column
            kept = tasks.get(name) if name in existing else None
            shorthand = TaskSpec(name, None, spec, config.text_column, DEFAULT_HEAD_TYPE, config.pooling)
            tasks[name] = dataclasses.replace(kept or shorthand, label=spec, layer=kept.layer if kept else config.layer)
        elif isinstance(spec, TaskSpec):
            if spec.name != name:
                raise HeadkitError(f"heads['{name}'] is a TaskSpec named '{spec.name}'; use the same name for both")
            tasks[name] = spec
        elif isinstance(spec, HeadConfig):
            if name in existing:
                raise HeadkitError(
                    f"the model already has a head '{name}'; give its label column (heads={{'{name}': 'COLUMN'}}) "
                    f"to train it, or replace it first with model.reset_head('{name}', config)"
                )
            tasks[name] = _task_for(name, spec, config, label=name)
            configs[name] = spec
        elif isinstance(spec, Mapping):
            tasks[name] = _task_from_fields(name, dict(spec), config, tasks.get(name) if name in existing else None)
        else:
            raise HeadkitError(
                f"heads['{name}'] is a {type(spec).__name__}; give a label column (str), a dict of TaskSpec "
                f"fields ({', '.join(TASK_FIELDS)}), a headkit.TaskSpec or a HeadConfig (headkit.head_config(...))"
            )
    return list(tasks.values()), configs


def _task_for(name: str, head: HeadConfig, config: TrainConfig, label: str) -> TaskSpec:
    """The task that trains a head of this config, its labels in column `label`."""
    return TaskSpec(
        name,
        None,
        label,
        config.text_column,
        head.type,
        head.pooling,
        loss_weight=head.loss_weight,
        dropout=head.dropout,
        layer=head.layer,
        options=head.task_options(),
    )


def _task_from_fields(name: str, fields: dict[str, Any], config: TrainConfig, kept: TaskSpec | None) -> TaskSpec:
    """{TaskSpec fields} -> a TaskSpec: what is not given as the model's head reads it (`kept`),
    else as the config's shorthands say (text, pooling, layer: as for the CLI's --head)."""
    if fields.get("name", name) != name:
        raise HeadkitError(f"heads['{name}'] names another head ('{fields['name']}'); drop 'name' or make them equal")
    fields.pop("name", None)
    unknown = sorted(set(fields) - set(TASK_FIELDS))
    if unknown:
        raise HeadkitError(f"heads['{name}']: unknown field(s) {unknown}; a head's task has {list(TASK_FIELDS)}")
    if kept is not None:
        return dataclasses.replace(kept, **fields)
    return TaskSpec(name, **{"text": config.text_column, "pooling": config.pooling, "layer": config.layer, **fields})


# ----------------------------------------------------------------------------- data


def data_sources(tasks: list[TaskSpec], train_dataset: Any, eval_dataset: Any) -> tuple[dict[str, Any], list[TaskSpec]]:
    """The datasets as `sources` for `prepare`, and the tasks pointed at them (those that name no data)."""
    needed = [t for t in tasks if t.data is None]
    if not needed:
        return {}, tasks
    if train_dataset is None:
        listed = ", ".join(t.name for t in needed)
        raise DataError(
            f"no train_dataset: heads {listed} read their labels from it; pass train_dataset=({DATA_KINDS})"
        )
    train, validation = _splits(train_dataset, TRAIN_KEY)
    if eval_dataset is not None:
        validation, _ = _splits(eval_dataset, EVAL_KEY)
    # a file or dataset name is the tasks' own `data` (read as the CLI reads it: image paths relative to
    # the file); an in-memory dataset goes into `sources` under the role's name
    sources: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in ((TRAIN_KEY, train), (EVAL_KEY, validation)):
        if isinstance(value, str):
            names[key] = value
        elif value is not None:
            sources[key] = value
            names[key] = key
    pointed = [
        t
        if t.data is not None
        else dataclasses.replace(t, data=names[TRAIN_KEY], eval_data=t.eval_data or names.get(EVAL_KEY))
        for t in tasks
    ]
    return sources, pointed


def _splits(dataset: Any, role: str) -> tuple[Any, Any]:
    """(the data to read, a validation split it brings): a DatasetDict gives its train split (as
    eval_dataset: its validation, else test split) and its validation split."""
    if is_split_dict(dataset):
        splits = list(dataset.keys())
        wanted = ["train"] if role == TRAIN_KEY else ["validation", "test"]
        found = next((s for s in wanted if s in splits), None)
        if found is None:
            raise DataError(
                f"{role} has the splits {splits} and none is {' or '.join(repr(s) for s in wanted)}; "
                f"pass one split ({role}=dataset['NAME'])"
            )
        validation = None
        if role == TRAIN_KEY and "validation" in splits:
            validation = _checked(dataset["validation"], f"{role}['validation']")
        return _checked(dataset[found], f"{role}['{found}']"), validation
    return _checked(dataset, role), None


def _checked(dataset: Any, role: str) -> Any:
    """A dataset of a kind the readers take, and not empty (a stream's length is unknown: its reader checks)."""
    if isinstance(dataset, (str, os.PathLike)):
        return str(dataset)
    datasets = sys.modules.get("datasets")
    pandas = sys.modules.get("pandas")
    if datasets is not None and isinstance(dataset, datasets.IterableDataset):
        return dataset
    known = (list, tuple, dict) + ((datasets.Dataset,) if datasets else ()) + ((pandas.DataFrame,) if pandas else ())
    if not isinstance(dataset, known):
        raise DataError(f"{role} is a {type(dataset).__name__}; give {DATA_KINDS}")
    if isinstance(dataset, dict):
        empty = not dataset or all(hasattr(v, "__len__") and len(v) == 0 for v in dataset.values())
    else:
        empty = len(dataset) == 0
    if empty:
        raise DataError(f"{role} is empty: it has no rows to train or validate on")
    return list(dataset) if isinstance(dataset, tuple) else dataset
