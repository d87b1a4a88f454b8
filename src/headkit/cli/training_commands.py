"""The `headkit` commands that fit a model: train, continued pretraining, instruction tuning,
and advise (which plans training and can run it). Plain functions like commands.py's: their
parameters and docstrings become flags and help."""

from __future__ import annotations

from typing import Literal

from headkit.cli import render
from headkit.training.config import PretrainConfig, SFTConfig, TrainConfig


def train(config: TrainConfig) -> None:
    """Train heads on a backbone with one adaptation strategy (frozen, partial:K, full, lora, lp-ft, fewshot).

    Args:
        config: see TrainConfig; give a YAML file with --config, flags, or both (flags win).
    """
    from headkit.training.recipe import train as run_training

    run_training(config)


def pretrain(config: PretrainConfig) -> None:
    """Continue pretraining (MLM or CLM) on your own text: domain adaptation before fine-tuning.

    Args:
        config: see PretrainConfig; give a YAML file with --config, flags, or both.
    """
    from headkit.training.pretrain import pretrain as run_pretraining

    run_pretraining(config)


def sft(config: SFTConfig) -> None:
    """Instruction-tune a causal LM on prompt -> response data (chat template, loss on responses only).

    Args:
        config: see SFTConfig; give a YAML file with --config, flags, or both.
    """
    from headkit.training.sft import sft as run_sft

    run_sft(config)


def advise(
    data: str | None = None,
    text_column: str = "text",
    label: list[str] | None = None,
    text_pair: str | None = None,
    budget: float = 30.0,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    model: str = "minilm",
    max_length: int = 128,
    unlabelled: list[str] | None = None,
    output_dir: str = "runs/advised",
    run: bool = False,
    overwrite: bool = False,
) -> None:
    """Recommend an adaptation strategy for your data and hardware, with its steps; --run does them.

    Args:
        data: the labelled file (CSV/JSONL/Parquet) or a built-in dataset; rows with an empty
            label count as unlabelled text.
        text_column: the text column (old spelling: --text).
        label: the label column (classes, label sets, numbers for regression, or tags per word);
            several (--label topic --label sentiment): one head each, planned as one run on one
            backbone. Default: label.
        text_pair: the column of each row's second text (sentence pairs: NLI, paraphrase, STS).
        budget: minutes of training you can spend on this machine.
        device: auto (a CUDA GPU if there is one), cpu or cuda.
        model: the backbone checkpoint directory or alias.
        max_length: token limit the plan trains with.
        unlabelled: more unlabelled text (files or built-in datasets, same text column), for
            continued pretraining when the data's vocabulary is far from the backbone's.
        output_dir: where the plan's run goes.
        run: carry the plan out now (pretraining if planned, then training).
        overwrite: with --run, replace an existing run in output_dir.
    """
    from headkit.advise.plan import advise as make_plan
    from headkit.advise.plan import run_plan
    from headkit.errors import DataOptionError

    if data is None:
        raise DataOptionError("advise needs --data: the labelled file or built-in dataset to plan for")
    labels = label or ["label"]
    facts, hardware, plan = make_plan(
        data,
        text_column,
        labels[0] if len(labels) == 1 else labels,
        budget,
        device,
        model,
        max_length,
        unlabelled,
        output_dir,
        text_pair,
    )
    render.advice(data, budget, facts, hardware, plan)
    if run:
        run_plan(plan, facts, model, output_dir, list(unlabelled or []), overwrite=overwrite)
        render.plan_done(output_dir, len(plan.commands))
