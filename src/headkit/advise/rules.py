"""The strategy advisor: facts about the data and the hardware in, a plan out.

`headkit advise` reads a labelled file and answers "which adaptation strategy, and what are the
steps?" for the team we design for: a few hundred labels and little compute. It gathers facts
(`read_facts`, `detect_hardware`), times one training step of each kind on this machine with the
user's own texts (`measure_rates`), turns that into a cost per candidate strategy
(`estimate_costs`), and applies a small rule table (`choose`, a pure function, each rule tested):

====  =========================================================  ==================================
rule  when                                                       plan (first that fits the budget)
====  =========================================================  ==================================
T     token tags (a list of words and one tag per word a row)     full, fewshot, frozen
1     few labels: fewer than 16 examples in some class or label,  fewshot, frozen (its head solved
      or classes under 500 labels with fewer than 100 in some     by logistic/ridge regression)
      class (regression: fewer than 100 labelled rows)
2     plenty of labels (500 or more) and a GPU                    full, partial:K (bottom half
                                                                  frozen), lora
3     500 or more labels, no GPU (little compute)                 full, lora, frozen
4     under 500 labels (and not few)                              full, frozen
D     a clear domain shift (10% or more of the words are split    continued MLM pretraining on that
      into 3+ pieces by the backbone's tokenizer) and 1,000 or    text first, when it fits the budget
      more unlabelled texts                                       with the main step
====  =========================================================  ==================================

Why these rules: 16 per class is where SetFit-style training stops beating a frozen backbone by
much in the SetFit paper and in `benchmarks/fewshot.py`; on 24 reviews fewshot scored 0.586
against 0.575 for a solved head on frozen features, 0.490 for LoRA (`benchmarks/advise_plans.py`).
Against full fine-tuning it holds further: on the development split of `benchmarks/small_data.py`
(Rotten Tomatoes, means of 3 seeds) few-shot scored 0.703 against 0.673 at 64 reviews per class,
in a quarter of its time or less, and tied at 200 (0.720 against 0.719): classes under 500 labels go to
few-shot below 100 per class, a line between the two sizes measured.
Above that, full fine-tuning at its recipe (at least 250 optimizer steps at a backbone rate of
1e-4, strategy_defaults.py) beat the frozen probe on the development split of
`benchmarks/small_data.py`: 0.720 against 0.670 on 128 reviews, 0.760 against 0.714 on 1,000.
(At its old 3 epochs, 36 steps on 400 reviews, fine-tuning lost to the probe; a few optimizer
steps are what made small data look frozen's.) A tagger needs its backbone tuned more still:
entity F1 on 100 / 400 tweets was 0.242 / 0.406 fine-tuned, 0.249 / 0.298 with few-shot token
pairs (at 2-4x the time), 0.088 / 0.191 frozen, and LoRA at its old 3 epochs learned nothing
(at least 250 steps with the heads at 1e-2, its recipe now: 0.198 / 0.353, means of 3 seeds).
The cost of every candidate is measured on this machine; the first one that fits the budget wins.
The 10% fragmentation line comes from the shipped data: 3-7% of the words in movie reviews,
BBC news and tweets are split into 3+ MiniLM word pieces, against 35% in clinical text.

Several heads trained together (several label columns) get one plan: the head that needs the most
of the backbone decides it (a tagger, else one with very few labels, else the one with the fewest
labels), and the run is costed over the rows labelled for any head, which is what it trains on
(`facts.run_facts`: every head reads the same backbone pass). Sentence pairs (`text_pair`) are
counted and timed as training encodes them, both texts in one sequence; the rules read their
labels as any other head's.

If no candidate fits the budget the advisor refuses and says what the cheapest one would need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from headkit.advise.facts import CLASSES, DataFacts, Hardware
from headkit.errors import HeadkitError
from headkit.heads import head_class

FEW_PER_LABEL = 16  # rule 1: very few examples of some class or label
FEW_PER_CLASS = 100  # rule 1 for classes under PLENTY labels: few-shot beat full at 64 per class, tied at 200


FEW_REGRESSION = 100  # rule 1 for regression


PLENTY = 500  # rule 2


SHIFT_SHARE = 0.10  # rule D: share of words split into 3+ pieces


SHIFT_UNLABELLED = 1000  # rule D: unlabelled texts needed to make pretraining worth it


RULES = {
    "T": "token tags: full fine-tuning, else few-shot, else frozen",
    "1": "few labels (fewer than 16 in some class or label; classes under 500 labels: fewer than 100 in some "
    "class; regression: fewer than 100 rows): few-shot, else frozen",
    "2": "500+ labels and a GPU: full, else partial, else LoRA",
    "3": "500+ labels, no GPU: full, else LoRA, else frozen",
    "4": "under 500 labels: full (at least 250 steps), else frozen",
    "D": "domain shift (10%+ of words split into 3+ pieces) and 1,000+ unlabelled texts: continued pretraining first",
}


@dataclass
class Plan:
    rule: str
    strategy: str
    pretrain: bool
    reasons: list[str]
    costs: dict[str, float]  # strategy -> estimated seconds on this machine
    budget_s: float
    commands: list[str] = field(default_factory=list)
    run: DataFacts | None = None  # several heads: the run's own facts (`facts.run_facts`), which it is costed by


def _few_labels(facts: DataFacts) -> bool:
    if not facts.class_counts:  # a regression target
        return facts.labelled < FEW_REGRESSION
    if facts.min_per_class < FEW_PER_LABEL:
        return True
    return facts.task_type == CLASSES and facts.labelled < PLENTY and facts.min_per_class < FEW_PER_CLASS


def _rule(facts: DataFacts, hardware: Hardware) -> tuple[str, list[str], list[str]]:
    """The rule that applies (module docstring), its reason and its candidates in order."""
    if head_class(facts.task_type).per_token:
        reason = (
            f"token tags ({facts.labelled} sentences): a per-token head needs the backbone tuned; on tweets "
            "fine-tuning beat few-shot's token pairs at a fraction of their cost and frozen features by far"
        )
        return "T", [reason], ["full", "fewshot", "frozen"]
    if _few_labels(facts):
        what = (
            f"{facts.labelled} labelled rows"
            if not facts.class_counts
            else f"{facts.min_per_class} in the rarest {head_class(facts.task_type).codec.class_noun}"
        )
        reason = f"few labels ({what}): contrastive pairs multiply the signal in each example"
        return "1", [reason], ["fewshot", "frozen"]
    if facts.labelled >= PLENTY and hardware.device == "cuda":
        reason = f"{facts.labelled} labelled examples and a GPU ({hardware.name}): enough to move every weight"
        return "2", [reason], ["full", "partial", "lora"]
    if facts.labelled >= PLENTY:
        reason = f"{facts.labelled} labelled examples, no GPU: fine-tuning where it fits the budget, else fewer weights"
        return "3", [reason], ["full", "lora", "frozen"]
    reason = (
        f"{facts.labelled} labelled examples (under {PLENTY}, no class or label few): fine-tuning's 250 steps beat "
        "a head on the frozen backbone's cached features, which costs the least when fine-tuning does not fit"
    )
    return "4", [reason], ["full", "frozen"]


def deciding_head(heads: list[DataFacts]) -> DataFacts:
    """Of several heads trained on one backbone, the one whose needs decide the plan: a tagger
    (its backbone must be tuned), else one with very few labels, else the one with the fewest."""
    taggers = [f for f in heads if head_class(f.task_type).per_token]
    few = sorted((f for f in heads if _few_labels(f)), key=lambda f: f.labelled)
    return (taggers or few or sorted(heads, key=lambda f: f.labelled))[0]


def choose(
    facts: DataFacts | list[DataFacts],
    hardware: Hardware,
    costs: dict[str, float],
    budget_minutes: float,
    run: DataFacts | None = None,
) -> Plan:
    """Apply the rule table (module docstring) to the facts, one head's or several heads' trained
    in one run (the head `deciding_head` picks applies the rules; `run`: the run's own facts,
    `facts.run_facts`, for its unlabelled text and lengths); pure, so each rule is testable."""
    heads = facts if isinstance(facts, list) else [facts]
    facts = deciding_head(heads)
    whole = run or facts
    budget = budget_minutes * 60
    rule, reasons, candidates = _rule(facts, hardware)
    if len(heads) > 1:
        reasons.insert(
            0,
            f"{len(heads)} heads ({', '.join(f.label for f in heads)}) train together on one backbone: the plan "
            f"follows '{facts.label}', the head that needs the most of it",
        )
    # continued pretraining reads plain text, which a tagger's word lists are not (yet)
    tags = any(head_class(f.task_type).per_token for f in heads)
    shifted = whole.fragmented_share >= SHIFT_SHARE and whole.unlabelled >= SHIFT_UNLABELLED
    pretrain = shifted and "pretrain" in costs and not tags
    first = costs.get("pretrain", 0.0) if pretrain else 0.0
    if pretrain and first + min(costs[c] for c in candidates) > budget:
        reasons.append(
            f"domain shift ({whole.fragmented_share:.0%} of words split into 3+ pieces) and {whole.unlabelled:,} "
            f"unlabelled texts, but continued pretraining (~{_minutes(first)}) does not fit the budget with the rest"
        )
        pretrain, first = False, 0.0
    elif pretrain:
        reasons.append(
            f"domain shift: {whole.fragmented_share:.0%} of words are split into 3+ pieces (shipped English text: "
            f"3-7%), and {whole.unlabelled:,} unlabelled texts are there to adapt on: continued MLM pretraining first"
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
    for head in heads:  # (a tagger reports entity F1)
        if head.class_counts and head.imbalance >= 5 and not head_class(head.task_type).per_token:
            where = f" in '{head.label}'" if len(heads) > 1 else ""
            reasons.append(f"classes are imbalanced{where} ({head.imbalance:.0f}:1): watch f1_macro, not only accuracy")
    if whole.truncated_share > 0.2:
        what = "text pairs" if whole.text_pair else "texts"
        reasons.append(f"{whole.truncated_share:.0%} of {what} are longer than the token limit and will be cut")
    if strategy == "partial":
        strategy = "partial:K"
    return Plan(rule, strategy, pretrain, reasons, costs, budget, run=run)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
