"""The strategy advisor: facts about the data and the hardware in, a plan out.

`headkit advise` reads a labelled file and answers "which adaptation strategy, and what are the
steps?" for the team we design for: a few hundred labels and little compute. It gathers facts
(`read_facts`, `detect_hardware`), times one training step of each kind on this machine with the
user's own texts (`measure_rates`), turns that into a cost per candidate strategy
(`estimate_costs`), and applies a small rule table (`choose`, a pure function, each rule tested):

====  =========================================================  ==================================
rule  when                                                       plan (first that fits the budget)
====  =========================================================  ==================================
1     very few labels: fewer than 16 examples in some class       fewshot, frozen (its head solved
      (multilabel: with some label; regression: fewer than 100    by logistic/ridge regression)
      labelled rows)
2     plenty of labels (500 or more) and a GPU                    full, partial:K (bottom half
                                                                  frozen), lora
3     500 or more labels, no GPU (little compute)                 lora, frozen
4     under 500 labels (and not very few)                         frozen
D     a clear domain shift (10% or more of the words are split    continued MLM pretraining on that
      into 3+ pieces by the backbone's tokenizer) and 1,000 or    text first, when it fits the budget
      more unlabelled texts                                       with the main step
====  =========================================================  ==================================

Why these thresholds: 16 per class is where SetFit-style training stops beating a frozen
backbone by much in the SetFit paper and in `benchmarks/fewshot.py`; at 500+ labels full
fine-tuning has enough signal to move all weights without overfitting, if a GPU makes it cheap.
Under 500 labels the frozen backbone wins outright: on 400 Rotten Tomatoes reviews LoRA (3
epochs, 36 optimizer steps) reached 0.564 held-out accuracy, the advised frozen head (30 epochs
at lr 0.01 on cached features, 3 s) 0.687; on 2,000 LoRA wins, 0.761 to 0.724; on 24, fewshot
0.586 against 0.575 for a solved head on frozen features, 0.490 for LoRA
(`benchmarks/advise_plans.py`, table in the README).
The 10% fragmentation line comes from the shipped data: 3-7% of the words in movie reviews,
BBC news and tweets are split into 3+ MiniLM word pieces, against 35% in clinical text.

If no candidate fits the budget the advisor refuses and says what the cheapest one would need.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headkit.data import SEQUENCE_TYPES, as_label_list, column_values, read_rows
from headkit.errors import DataError, HeadkitError

FEW_PER_CLASS = 16  # rule 1 for classification
FEW_REGRESSION = 100  # rule 1 for regression
PLENTY = 500  # rule 2
SHIFT_SHARE = 0.10  # rule D: share of words split into 3+ pieces
SHIFT_UNLABELLED = 1000  # rule D: unlabelled texts needed to make pretraining worth it
MEASURE_TEXTS = 16

# settings the plan's commands use, and the cost estimates assume
EPOCHS = {"frozen": 30, "lora": 3, "partial": 3, "full": 3, "pretrain": 1}
FEWSHOT_ITERATIONS = 20
FEWSHOT_PAIR_BATCH = 16

RULES = {
    "1": "very few labels (fewer than 16 in some class or label; regression: fewer than 100): few-shot, else frozen",
    "2": "500+ labels and a GPU: full, else partial, else LoRA",
    "3": "500+ labels, no GPU (little compute): LoRA, else frozen",
    "4": "under 500 labels: frozen (too few optimizer steps for LoRA or fine-tuning to beat it)",
    "D": "domain shift (10%+ of words split into 3+ pieces) and 1,000+ unlabelled texts: continued pretraining first",
}


@dataclass
class DataFacts:
    source: str
    text: str
    label: str
    task_type: str  # classification | multilabel | regression
    labelled: int
    class_counts: dict[str, int]  # examples per class (multilabel: per label); empty for regression
    tokens_median: float
    tokens_p95: float
    truncated_share: float  # labelled texts longer than max_length
    fragmented_share: float  # words split into 3+ pieces
    unlabelled: int  # texts without a label (rows with an empty label + --unlabelled)
    labelled_tokens: int
    unlabelled_tokens: int

    @property
    def n_classes(self) -> int:
        return len(self.class_counts)

    @property
    def min_per_class(self) -> int:
        return min(self.class_counts.values()) if self.class_counts else 0

    @property
    def imbalance(self) -> float:
        return max(self.class_counts.values()) / self.min_per_class if self.class_counts else 1.0


@dataclass
class Hardware:
    device: str  # cuda | cpu
    name: str
    cores: int
    memory_gb: float


@dataclass
class Rates:
    """Measured seconds per token on this machine, for each kind of step."""

    forward: float  # no-grad forward (feature extraction, evaluation)
    full: float  # forward + backward + AdamW over every weight
    lora: float  # forward + backward + AdamW over LoRA adapters


@dataclass
class Plan:
    rule: str
    strategy: str
    pretrain: bool
    reasons: list[str]
    costs: dict[str, float]  # strategy -> estimated seconds on this machine
    budget_s: float
    commands: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- facts

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def _texts(rows: list[dict[str, Any]], column: str, source: str) -> list[str]:
    values = column_values(rows, column, source)
    return [v for v in values if isinstance(v, str) and v.strip()]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value)


def _task_type(values: list[Any]) -> str:
    """Lists (or '|'-joined CSV cells) are label sets; numbers with a fraction (mean ratings:
    2.875) or many distinct whole values are a regression target; anything else is classes
    (whole numbers with few values, such as 1-5 stars or class ids)."""
    if any(isinstance(v, SEQUENCE_TYPES) or (isinstance(v, str) and "|" in v) for v in values):
        return "multilabel"
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return "classification"
    if any(not n.is_integer() for n in numbers if np.isfinite(n)):
        return "regression"
    return "regression" if len(set(numbers)) > max(20, len(numbers) // 4) else "classification"


def fragmented_share(texts: list[str], tokenizer, limit: int = 50_000) -> float:
    """Share of words the tokenizer splits into 3 or more pieces: a sign the backbone has not
    seen this vocabulary (a domain shift), cheap to compute and independent of labels."""
    words = [w for t in texts for w in WORD.findall(t)][:limit]
    if not words:
        return 0.0
    counts = Counter(words)
    pieces = {w: len(tokenizer.tokenize(w)) for w in counts}
    return sum(n for w, n in counts.items() if pieces[w] >= 3) / len(words)


def read_facts(
    data: str,
    text: str,
    label: str,
    tokenizer,
    max_length: int = 128,
    unlabelled: list[str] | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> DataFacts:
    """Everything the rules look at, from the user's file (and optional unlabelled text).

    `rows`: the file's rows when the caller has read them already.
    """
    rows = read_rows(data) if rows is None else rows
    if not rows:
        raise DataError(f"{data} holds no rows; advise needs labelled examples")
    values = column_values(rows, label, data)
    texts = column_values(rows, text, data)
    labelled = [(t, v) for t, v in zip(texts, values, strict=True) if not _is_missing(v)]
    if not labelled:
        raise DataError(f"column '{label}' of {data} has no labels; advise needs labelled examples")
    if any(isinstance(t, SEQUENCE_TYPES) for t, _ in labelled):
        raise DataError(
            f"column '{text}' of {data} holds lists of words (token-tagging data): advise profiles one label or "
            "label set per text, not tags per word; train the tagger directly, e.g. headkit train --head "
            f"tags:{label}:token-classification --strategy fewshot (few examples) or frozen"
        )
    bad = next((t for t, _ in labelled if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise DataError(f"text column '{text}' of {data} has an empty or non-text value: {bad!r}")
    label_values = [v for _, v in labelled]
    task_type = _task_type(label_values)
    counts: dict[str, int] = {}
    if task_type == "multilabel":  # examples that carry each label
        counts = dict(Counter(name for v in label_values for name in set(as_label_list(v))).most_common())
    elif task_type == "classification":
        counts = dict(Counter(str(v) for v in label_values).most_common())
        if len(counts) < 2:
            raise DataError(
                f"column '{label}' of {data} has a single class {list(counts)}; a classifier needs at least 2"
            )
    scarce = {c: n for c, n in counts.items() if n < 2}
    if scarce:
        raise DataError(
            f"class(es) {sorted(scarce)} of column '{label}' have a single example; every class needs at least 2 "
            "(few-shot training pairs each example with another of its class): label more, or drop the class"
        )
    labelled_texts = [t for t, _ in labelled]
    free = [t for t, v in zip(texts, values, strict=True) if _is_missing(v) and isinstance(t, str) and t.strip()]
    for source in unlabelled or []:
        free += _texts(read_rows(source), text, source)

    def token_counts(texts: list[str]) -> list[int]:  # full lengths; verbose=False: no too-long warning
        return [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]

    lengths = np.array(token_counts(labelled_texts))
    free_tokens = sum(token_counts(free[:20_000])) if free else 0
    if len(free) > 20_000:  # estimate the rest from the first 20,000
        free_tokens = round(free_tokens * len(free) / 20_000)
    return DataFacts(
        source=data,
        text=text,
        label=label,
        task_type=task_type,
        labelled=len(labelled),
        class_counts=counts,
        tokens_median=float(np.median(lengths)),
        tokens_p95=float(np.percentile(lengths, 95)),
        truncated_share=float(np.mean(lengths > max_length)),
        fragmented_share=fragmented_share(labelled_texts + free[:5000], tokenizer),
        unlabelled=len(free),
        labelled_tokens=int(np.minimum(lengths, max_length).sum()),
        unlabelled_tokens=int(free_tokens),
    )


def detect_hardware(device: str = "auto") -> Hardware:
    """The machine the plan will run on: a CUDA GPU if there is one (or asked for), else the CPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise HeadkitError(f"--device must be auto, cpu or cuda, not '{device}'")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device == "cuda" and not torch.cuda.is_available():
        raise HeadkitError("--device cuda, but torch sees no CUDA GPU here; use --device auto or cpu")
    if device != "cpu" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware("cuda", props.name, cores, props.total_memory / 2**30)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = 0.0
    return Hardware("cpu", f"CPU, {cores} cores", cores, memory)


# ----------------------------------------------------------------------------- measured costs


def _time(fn, repeats: int = 2) -> float:
    fn()  # warm-up: allocations, kernel selection, optimizer state
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def measure_rates(model: str, texts: list[str], tokenizer, hardware: Hardware, max_length: int = 128) -> Rates:
    """Time a forward pass, a full training step and a LoRA step on a batch of the user's texts.

    A few seconds on a CPU; the costs of every strategy are scaled from these per-token times.
    """
    from headkit.backbone import load_backbone
    from headkit.strategies import adamw, apply_lora

    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), size=min(MEASURE_TEXTS, len(texts)), replace=False)]
    batch = tokenizer(sample, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch = {k: v.to(hardware.device) for k, v in batch.items()}
    # per position computed, padding included: the timed batch pads 16 random texts to the longest,
    # training batches are length-grouped and pad little, so per real token would overestimate ~1.7x
    tokens = int(batch["input_ids"].numel())
    backbone = load_backbone(model).to(hardware.device)

    def step(module, optimizer):
        def run():
            module(**batch).last_hidden_state.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    with torch.no_grad():
        backbone.eval()
        forward = _time(lambda: backbone(**batch))
    backbone.train()
    full = _time(step(backbone, adamw(backbone.parameters(), lr=1e-6)))
    lora_model = apply_lora(backbone)
    lora = _time(step(lora_model, adamw([p for p in lora_model.parameters() if p.requires_grad], lr=1e-6)))
    return Rates(forward / tokens, full / tokens, lora / tokens)


def estimate_costs(facts: DataFacts, rates: Rates, val_fraction: float = 0.1) -> dict[str, float]:
    """Seconds per candidate strategy: tokens to process x the measured seconds per token.

    Training epochs see (1 - val_fraction) of the rows and evaluate the rest; partial is
    costed as full (an upper bound: its frozen bottom layers skip only part of the backward).
    """
    n_tokens = facts.labelled_tokens
    train_tokens, val_tokens = n_tokens * (1 - val_fraction), n_tokens * val_fraction
    per_example = n_tokens / max(1, facts.labelled)
    pairs = 2 * FEWSHOT_ITERATIONS * facts.labelled
    # distinct texts in a batch of pairs: an anchor's two pairs share a batch, so 1 anchor + 2 partners per 2 pairs
    texts_per_step = min(3 * FEWSHOT_PAIR_BATCH // 2, facts.labelled)
    costs = {
        "frozen": n_tokens * rates.forward,  # features once; head epochs on the cache take seconds
        "fewshot": pairs / FEWSHOT_PAIR_BATCH * texts_per_step * per_example * rates.full + n_tokens * rates.forward,
        "lora": EPOCHS["lora"] * (train_tokens * rates.lora + val_tokens * rates.forward),
        "partial": EPOCHS["partial"] * (train_tokens * rates.full + val_tokens * rates.forward),
        "full": EPOCHS["full"] * (train_tokens * rates.full + val_tokens * rates.forward),
    }
    if facts.unlabelled_tokens:
        costs["pretrain"] = EPOCHS["pretrain"] * facts.unlabelled_tokens * rates.full
    return {k: round(v, 1) for k, v in costs.items()}


# ----------------------------------------------------------------------------- the rules


def _few_labels(facts: DataFacts) -> bool:
    if facts.task_type == "regression":
        return facts.labelled < FEW_REGRESSION
    return facts.min_per_class < FEW_PER_CLASS


def choose(facts: DataFacts, hardware: Hardware, costs: dict[str, float], budget_minutes: float) -> Plan:
    """Apply the rule table (module docstring) to the facts; pure, so each rule is testable."""
    budget = budget_minutes * 60
    if _few_labels(facts):
        rule = "1"
        what = (
            f"{facts.labelled} labelled rows"
            if facts.task_type == "regression"
            else f"{facts.min_per_class} in the rarest {'label' if facts.task_type == 'multilabel' else 'class'}"
        )
        reasons = [f"very few labels ({what}): contrastive pairs multiply the signal in each example"]
        candidates = ["fewshot", "frozen"]
    elif facts.labelled >= PLENTY and hardware.device == "cuda":
        rule = "2"
        reasons = [f"{facts.labelled} labelled examples and a GPU ({hardware.name}): enough to move every weight"]
        candidates = ["full", "partial", "lora"]
    elif facts.labelled >= PLENTY:
        rule = "3"
        reasons = [f"{facts.labelled} labelled examples but no GPU: little compute, so train few parameters"]
        candidates = ["lora", "frozen"]
    else:
        rule = "4"
        reasons = [
            f"{facts.labelled} labelled examples (under {PLENTY}): too few optimizer steps for LoRA or fine-tuning to "
            "beat a head on the frozen backbone's cached features, which also costs the least"
        ]
        candidates = ["frozen"]
    pretrain = facts.fragmented_share >= SHIFT_SHARE and facts.unlabelled >= SHIFT_UNLABELLED and "pretrain" in costs
    first = costs.get("pretrain", 0.0) if pretrain else 0.0
    if pretrain and first + min(costs[c] for c in candidates) > budget:
        reasons.append(
            f"domain shift ({facts.fragmented_share:.0%} of words split into 3+ pieces) and {facts.unlabelled:,} "
            f"unlabelled texts, but continued pretraining (~{_minutes(first)}) does not fit the budget with the rest"
        )
        pretrain, first = False, 0.0
    elif pretrain:
        reasons.append(
            f"domain shift: {facts.fragmented_share:.0%} of words are split into 3+ pieces (shipped English text: "
            f"3-7%), and {facts.unlabelled:,} unlabelled texts are there to adapt on: continued MLM pretraining first"
        )
    fitting = [c for c in candidates if first + costs[c] <= budget]
    if not fitting:
        cheapest = min(costs, key=lambda k: costs[k] if k != "pretrain" else float("inf"))
        raise HeadkitError(
            f"a budget of {budget_minutes:g} min is too small for any strategy on this machine: the cheapest, "
            f"{cheapest}, needs ~{_minutes(costs[cheapest])} (measured here); give --budget "
            f"{max(1, int(np.ceil(costs[cheapest] / 60)))} or more, or fewer/shorter texts (--max_length)"
        )
    strategy = fitting[0]
    if strategy != candidates[0]:
        reasons.append(f"{candidates[0]} (~{_minutes(costs[candidates[0]])}) does not fit the budget; {strategy} does")
    else:
        reasons.append(f"{strategy} takes ~{_minutes(costs[strategy])} here, within the {budget_minutes:g} min budget")
    if rule == "1" and strategy == "frozen":
        reasons.append("frozen with a head solved by logistic (ridge) regression: fewshot with 0 contrastive pairs")
    if facts.class_counts and facts.imbalance >= 5:
        reasons.append(f"classes are imbalanced ({facts.imbalance:.0f}:1): watch f1_macro, not only accuracy")
    if facts.truncated_share > 0.2:
        reasons.append(f"{facts.truncated_share:.0%} of texts are longer than the token limit and will be cut")
    if strategy == "partial":
        strategy = "partial:K"
    return Plan(rule, strategy, pretrain, reasons, costs, budget)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# ----------------------------------------------------------------------------- commands and --run


def head_spec(facts: DataFacts) -> str:
    if facts.task_type == "classification":
        return f"label:{facts.label}"
    return f"labels:{facts.label}:multilabel" if facts.task_type == "multilabel" else f"score:{facts.label}:regression"


def train_options(plan: Plan) -> dict[str, Any]:
    """The TrainConfig fields of the plan's training step (the printed command has the same)."""
    strategy = plan.strategy
    if plan.strategy == "fewshot":
        return {
            "strategy": strategy,
            "fewshot_iterations": FEWSHOT_ITERATIONS,
            "batch_size": FEWSHOT_PAIR_BATCH,
            "val_fraction": 0.0,  # with a handful per class, every example trains
        }
    if plan.strategy == "frozen" and plan.rule == "1":  # a handful of labels: solve the head instead (logistic /
        # ridge regression on L2-normalised frozen features = fewshot without pairs): on 24 reviews 0.575 held out,
        # a gradient-trained head 0.476, below the majority class (benchmarks/advise_plans.py)
        return {"strategy": "fewshot", "fewshot_iterations": 0, "val_fraction": 0.0}
    if plan.strategy == "frozen":  # a linear probe on cached features: many cheap steps, no early stop on a
        return {"strategy": strategy, "epochs": EPOCHS["frozen"], "lr": 0.01, "patience": 0}  # tiny val split
    return {"strategy": strategy, "epochs": EPOCHS[strategy.split(":")[0]]}


def plan_commands(plan: Plan, facts: DataFacts, model: str, output_dir: str, unlabelled: list[str]) -> list[str]:
    """The plan as the exact `headkit` commands, in order."""
    commands, backbone = [], model
    if plan.pretrain:
        commands.append(
            f"headkit pretrain --model {model} --corpus {' '.join([facts.source, *unlabelled])} --text {facts.text} "
            f"--epochs {EPOCHS['pretrain']} --output_dir {output_dir}-pretrain"
        )
        backbone = f"{output_dir}-pretrain"
    options = " ".join(f"--{k} {v}" for k, v in train_options(plan).items())
    head = head_spec(facts)
    name = head.split(":")[0]
    return [
        *commands,
        f"headkit train --model {backbone} --data {facts.source} --text {facts.text} --head {head} {options} "
        f"--output_dir {output_dir}",
        f"headkit evaluate {output_dir} --data YOUR_TEST_FILE --text {facts.text} --head {name}:{facts.label}",
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
    from headkit.pretrain import PretrainConfig, pretrain
    from headkit.train import TrainConfig, train

    backbone = model
    if plan.pretrain:
        pretrain(
            PretrainConfig(
                model=model,
                corpus=[facts.source, *unlabelled],
                text=facts.text,
                epochs=EPOCHS["pretrain"],
                output_dir=f"{output_dir}-pretrain",
                overwrite=overwrite,
                progress=progress,
            )
        )
        backbone = f"{output_dir}-pretrain"
    config = TrainConfig(
        model=backbone,
        data=facts.source,
        text=facts.text,
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
        raise HeadkitError(f"--budget must be above 0 minutes, got {budget:g}")
    tokenizer = load_processor(model)
    rows = read_rows(data)
    facts = read_facts(data, text, label, tokenizer, max_length, unlabelled, rows=rows)
    hardware = detect_hardware(device)
    texts = [t for t in column_values(rows, text, data) if isinstance(t, str) and t.strip()]
    rates = measure_rates(model, texts, tokenizer, hardware, max_length)
    costs = estimate_costs(facts, rates)
    plan = choose(facts, hardware, costs, budget)
    if plan.strategy == "partial:K":  # freeze the bottom half of this backbone's layers
        n_layers = int(getattr(load_config(model), "num_hidden_layers", 2))
        plan.strategy = f"partial:{max(1, n_layers // 2)}"
    plan.commands = plan_commands(plan, facts, model, output_dir, list(unlabelled or []))
    return facts, hardware, plan
