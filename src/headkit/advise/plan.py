"""`headkit advise`: facts -> measured costs -> the rule table -> a plan, the commands that carry it
out, and --run to carry it out (see rules.py for the table and why)."""

from __future__ import annotations

import re
import shlex
from typing import Any

from headkit.advise.costs import PRETRAIN_EPOCHS, estimate_costs, measure_rates
from headkit.advise.facts import DataFacts, Hardware, as_texts, detect_hardware, read_facts, run_facts
from headkit.advise.rules import Plan, choose
from headkit.data.files import SEQUENCE_TYPES, column_values
from headkit.data.readers import read_rows
from headkit.data.taskspec import DEFAULT_HEAD_TYPE
from headkit.errors import DataError, UsageError
from headkit.heads import HEAD_NAME, head_class


def head_names(heads: list[DataFacts]) -> list[str]:
    """The heads' names in the printed commands: one head's type's usual name; several heads their
    label columns' (ASCII identifiers, as head names must be, made distinct)."""
    if len(heads) == 1:
        return [head_class(heads[0].task_type).codec.suggested_name]
    names: list[str] = []
    for facts in heads:
        base = re.sub(r"[^A-Za-z0-9_]+", "_", facts.label).strip("_") or "head"
        base = base if HEAD_NAME.match(base) else f"head_{base}"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def head_spec(facts: DataFacts, name: str | None = None) -> str:
    """NAME:COLUMN[:TYPE] for the printed commands (the type only where it is not the default)."""
    name = name or head_names([facts])[0]
    return f"{name}:{facts.label}" + ("" if facts.task_type == DEFAULT_HEAD_TYPE else f":{facts.task_type}")


def train_options(plan: Plan) -> dict[str, Any]:
    """The TrainConfig fields of the plan's training step (the printed command has the same).
    Each strategy brings its own recipe (training/strategies.py), so the strategy alone says it."""
    if plan.strategy == "frozen" and plan.rule == "1":  # a handful of labels: solve the head instead (logistic /
        # ridge regression on L2-normalised frozen features = fewshot without pairs): on 24 reviews 0.575 held out,
        # a gradient-trained head 0.476, below the majority class (benchmarks/advise_plans.py)
        return {"strategy": "fewshot", "fewshot_steps": 0}
    return {"strategy": plan.strategy}


def plan_commands(
    plan: Plan, heads: DataFacts | list[DataFacts], model: str, output_dir: str, unlabelled: list[str]
) -> list[str]:
    """The plan as the exact `headkit` commands, in order (one run trains every head); names and
    paths quoted for the shell where they need it. `evaluate` reads the second texts from the
    columns the model trained on."""
    heads = heads if isinstance(heads, list) else [heads]
    facts, q = heads[0], shlex.quote
    commands, backbone = [], model
    if plan.pretrain:
        commands.append(
            f"headkit pretrain --model {q(model)} --corpus {' '.join(q(c) for c in [facts.source, *unlabelled])} "
            f"--text_column {q(facts.text)} --epochs {PRETRAIN_EPOCHS} --output_dir {q(output_dir + '-pretrain')}"
        )
        backbone = f"{output_dir}-pretrain"
    options = " ".join(f"--{k} {v}" for k, v in train_options(plan).items())
    pair = f" --text_pair {q(facts.text_pair)}" if facts.text_pair else ""
    names = head_names(heads)
    trained = " ".join(f"--head {q(head_spec(f, n))}" for f, n in zip(heads, names, strict=True))
    scored = " ".join(f"--head {q(n + ':' + f.label)}" for f, n in zip(heads, names, strict=True))
    text, out = q(facts.text), q(output_dir)
    return [
        *commands,
        f"headkit train --model {q(backbone)} --data {q(facts.source)} --text_column {text}{pair} {trained} "
        f"{options} --output_dir {out}",
        f"headkit evaluate {out} --data YOUR_TEST_FILE --text_column {text} {scored}",
        f'headkit predict {out} --text "a new example"' + (' --text_pair "its second text"' if facts.text_pair else ""),
    ]


def run_plan(
    plan: Plan,
    facts: DataFacts | list[DataFacts],
    model: str,
    output_dir: str,
    unlabelled: list[str],
    overwrite: bool = False,
    progress: bool = True,
):
    """Carry the plan out with the library calls behind its commands; returns the TrainResult."""
    from headkit.training.pretrain import PretrainConfig, pretrain
    from headkit.training.recipe import TrainConfig, train

    heads = facts if isinstance(facts, list) else [facts]
    facts, backbone = heads[0], model
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
        text_pair=facts.text_pair,
        head=[head_spec(f, n) for f, n in zip(heads, head_names(heads), strict=True)],
        output_dir=output_dir,
        overwrite=overwrite,
        progress=progress,
        **train_options(plan),
    )
    return train(config)


def check_sentence_labels_on_words(heads: list[DataFacts], texts: list[Any], data: str) -> None:
    """Refuse what training refuses: a label per row on word lists (`texts`, the text column's
    values) trains only beside a tagger of those words (which makes training read them as sentences)."""
    if any(head_class(f.task_type).per_token for f in heads):
        return
    facts = heads[0]
    if any(isinstance(v, SEQUENCE_TYPES) for v in texts):
        raise DataError(
            f"{data}: column '{facts.text}' holds lists of words; a label per row ('{facts.label}') trains on "
            "them only beside a tagger of those words (add its --label), else give a text column"
        )


def advise(
    data: str,
    text: str = "text",
    label: str | list[str] = "label",
    budget: float = 30.0,
    device: str = "auto",
    model: str = "minilm",
    max_length: int = 128,
    unlabelled: list[str] | None = None,
    output_dir: str = "runs/advised",
    text_pair: str | None = None,
) -> tuple[DataFacts | list[DataFacts], Hardware, Plan]:
    """Facts, hardware, measured costs and the rule table -> the plan with its commands.

    `label`: one label column, or several (a list: one head each, trained together in one run on
    one backbone; the facts come back as a list, one per head). `text_pair`: the column of each
    row's second text (sentence pairs)."""
    from headkit.backbone import load_config, load_processor

    if budget <= 0:
        raise UsageError(f"--budget must be above 0 minutes, got {budget:g}")
    labels = [label] if isinstance(label, str) else list(label)
    if not labels or len(set(labels)) < len(labels):
        raise UsageError(f"--label: name each label column once, got {labels}")
    tokenizer = load_processor(model)
    rows = read_rows(data)
    heads = [read_facts(data, text, lab, tokenizer, max_length, unlabelled, rows, text_pair) for lab in labels]
    firsts, seconds = column_values(rows, text, data), column_values(rows, text_pair, data) if text_pair else None
    check_sentence_labels_on_words(heads, firsts, data)
    hardware = detect_hardware(device)
    if seconds is None:
        texts, pairs = as_texts(firsts), None
    else:  # the rows with both texts, as training pairs them
        kept = [(t, s) for t, s in zip(firsts, seconds, strict=True) if as_texts([t]) and as_texts([s])]
        texts, pairs = [t for t, _ in kept], [s for _, s in kept]
    rates = measure_rates(model, texts, tokenizer, hardware, max_length, pairs)
    # every head reads the same backbone pass over the rows labelled for any of them
    run = run_facts(heads, rows, tokenizer, max_length, unlabelled)
    plan = choose(heads, hardware, estimate_costs(run, rates), budget, run if len(heads) > 1 else None)
    if plan.strategy == "partial:K":  # freeze the bottom half of this backbone's layers
        n_layers = int(getattr(load_config(model), "num_hidden_layers", 2))
        plan.strategy = f"partial:{max(1, n_layers // 2)}"
    plan.commands = plan_commands(plan, heads, model, output_dir, list(unlabelled or []))
    return (heads[0] if isinstance(label, str) else heads), hardware, plan
