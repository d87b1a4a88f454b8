"""`headkit advise`: facts -> measured costs -> the rule table -> a plan, the commands that carry it
out, and --run to carry it out (see rules.py for the table and why)."""

from __future__ import annotations

from typing import Any

from headkit.advise.costs import PRETRAIN_EPOCHS, estimate_costs, measure_rates
from headkit.advise.facts import DataFacts, Hardware, as_texts, detect_hardware, read_facts
from headkit.advise.rules import Plan, choose
from headkit.data.files import column_values
from headkit.data.readers import read_rows
from headkit.data.taskspec import DEFAULT_HEAD_TYPE
from headkit.errors import UsageError
from headkit.heads import head_class


def head_spec(facts: DataFacts) -> str:
    """NAME:COLUMN[:TYPE] for the printed commands (the type only where it is not the default)."""
    name = head_class(facts.task_type).codec.suggested_name
    return f"{name}:{facts.label}" + ("" if facts.task_type == DEFAULT_HEAD_TYPE else f":{facts.task_type}")


def train_options(plan: Plan) -> dict[str, Any]:
    """The TrainConfig fields of the plan's training step (the printed command has the same).
    Each strategy brings its own recipe (training/strategies.py), so the strategy alone says it."""
    if plan.strategy == "frozen" and plan.rule == "1":  # a handful of labels: solve the head instead (logistic /
        # ridge regression on L2-normalised frozen features = fewshot without pairs): on 24 reviews 0.575 held out,
        # a gradient-trained head 0.476, below the majority class (benchmarks/advise_plans.py)
        return {"strategy": "fewshot", "fewshot_steps": 0}
    return {"strategy": plan.strategy}


def plan_commands(plan: Plan, facts: DataFacts, model: str, output_dir: str, unlabelled: list[str]) -> list[str]:
    """The plan as the exact `headkit` commands, in order."""
    commands, backbone = [], model
    if plan.pretrain:
        commands.append(
            f"headkit pretrain --model {model} --corpus {' '.join([facts.source, *unlabelled])} "
            f"--text_column {facts.text} "
            f"--epochs {PRETRAIN_EPOCHS} --output_dir {output_dir}-pretrain"
        )
        backbone = f"{output_dir}-pretrain"
    options = " ".join(f"--{k} {v}" for k, v in train_options(plan).items())
    head = head_spec(facts)
    name = head.split(":")[0]
    return [
        *commands,
        f"headkit train --model {backbone} --data {facts.source} --text_column {facts.text} --head {head} {options} "
        f"--output_dir {output_dir}",
        f"headkit evaluate {output_dir} --data YOUR_TEST_FILE --text_column {facts.text} --head {name}:{facts.label}",
        f'headkit predict {output_dir} --text "a new example"',
    ]


def run_plan(
    plan: Plan,
    facts: DataFacts,
    model: str,
    output_dir: str,
    unlabelled: list[str],
    overwrite: bool = False,
    progress: bool = True,
):
    """Carry the plan out with the library calls behind its commands; returns the TrainResult."""
    from headkit.training.pretrain import PretrainConfig, pretrain
    from headkit.training.recipe import TrainConfig, train

    backbone = model
    if plan.pretrain:
        pretrain(
            PretrainConfig(
                model=model,
                corpus=[facts.source, *unlabelled],
                text_column=facts.text,
                epochs=PRETRAIN_EPOCHS,
                output_dir=f"{output_dir}-pretrain",
                overwrite=overwrite,
                progress=progress,
            )
        )
        backbone = f"{output_dir}-pretrain"
    config = TrainConfig(
        model=backbone,
        data=facts.source,
        text_column=facts.text,
        head=[head_spec(facts)],
        output_dir=output_dir,
        overwrite=overwrite,
        progress=progress,
        **train_options(plan),
    )
    return train(config)


def advise(
    data: str,
    text: str = "text",
    label: str = "label",
    budget: float = 30.0,
    device: str = "auto",
    model: str = "minilm",
    max_length: int = 128,
    unlabelled: list[str] | None = None,
    output_dir: str = "runs/advised",
) -> tuple[DataFacts, Hardware, Plan]:
    """Facts, hardware, measured costs and the rule table -> the plan with its commands."""
    from headkit.backbone import load_config, load_processor

    if budget <= 0:
        raise UsageError(f"--budget must be above 0 minutes, got {budget:g}")
    tokenizer = load_processor(model)
    rows = read_rows(data)
    facts = read_facts(data, text, label, tokenizer, max_length, unlabelled, rows=rows)
    hardware = detect_hardware(device)
    texts = as_texts(column_values(rows, text, data))
    rates = measure_rates(model, texts, tokenizer, hardware, max_length)
    costs = estimate_costs(facts, rates)
    plan = choose(facts, hardware, costs, budget)
    if plan.strategy == "partial:K":  # freeze the bottom half of this backbone's layers
        n_layers = int(getattr(load_config(model), "num_hidden_layers", 2))
        plan.strategy = f"partial:{max(1, n_layers // 2)}"
    plan.commands = plan_commands(plan, facts, model, output_dir, list(unlabelled or []))
    return facts, hardware, plan
