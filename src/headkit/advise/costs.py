"""Measured costs: one training step of each kind, timed on this machine with the user's own
texts, turned into an estimated time per candidate strategy."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from headkit.advise.facts import DataFacts, Hardware
from headkit.heads import head_class
from headkit.training.fewshot import TOKEN_PAIR_BATCH
from headkit.training.strategy_defaults import fewshot_auto_steps, strategy_defaults

MEASURE_TEXTS = 16  # texts timed per kind of step

# the recipes the plan's commands run (each strategy's own defaults, `epochs` below), which the
# estimates assume; continued pretraining, one pass over the corpus
PRETRAIN_EPOCHS = 1
FEWSHOT_BATCH = strategy_defaults("fewshot")["batch_size"]
FEWSHOT_ITERATIONS = strategy_defaults("fewshot")["fewshot_iterations"]


@dataclass
class Rates:
    """Measured seconds per token on this machine, for each kind of step."""

    forward: float  # no-grad forward (feature extraction, evaluation)
    full: float  # forward + backward + AdamW over every weight
    lora: float  # forward + backward + AdamW over LoRA adapters


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


def measure_rates(
    model: str,
    texts: list[str],
    tokenizer,
    hardware: Hardware,
    max_length: int = 128,
    pairs: list[str] | None = None,
) -> Rates:
    """Time a forward pass, a full training step and a LoRA step on a batch of the user's texts
    (`pairs`: each text's second text, encoded with it as training encodes sentence pairs).

    A few seconds on a CPU; the costs of every strategy are scaled from these per-token times.
    """
    from headkit.backbone import load_backbone
    from headkit.training.strategies import adamw, apply_lora

    rng = np.random.default_rng(0)
    chosen = rng.choice(len(texts), size=min(MEASURE_TEXTS, len(texts)), replace=False)
    second = [pairs[i] for i in chosen] if pairs is not None else None
    batch = tokenizer(
        [texts[i] for i in chosen], second, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    batch = {k: v.to(hardware.device) for k, v in batch.items()}
    # per position computed, padding included: the timed batch pads 16 random texts to the longest,
    # training batches are length-grouped and pad little, so per real token would overestimate ~1.7x
    tokens = int(batch["input_ids"].numel())
    # transformers' decorated PreTrainedModel.to types its first argument as the model
    backbone = load_backbone(model).to(hardware.device)  # type: ignore[arg-type]

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
    lora_model = apply_lora(backbone, target_modules=strategy_defaults("lora")["lora_targets"])  # the recipe's
    lora = _time(step(lora_model, adamw([p for p in lora_model.parameters() if p.requires_grad], lr=1e-6)))
    return Rates(forward / tokens, full / tokens, lora / tokens)


def epochs(facts: DataFacts, strategy: str, val_fraction: float) -> int:
    """The epochs a strategy's recipe runs on this data: its `epochs`, or more where they would be
    fewer than its `min_steps` optimizer steps (small data: training/phase_data.py)."""
    recipe = strategy_defaults(strategy)
    per_epoch = math.ceil(max(1, round(facts.labelled * (1 - val_fraction))) / recipe["batch_size"])
    return max(recipe["epochs"], math.ceil(recipe["min_steps"] / per_epoch))


def fewshot_texts(facts: DataFacts) -> int:
    """Texts the few-shot contrastive phase embeds, costed as full steps (an upper bound: the bottom
    third of the layers skips its backward). All-pairs steps embed min(batch, labelled) texts each;
    a tagger's pairs are tokens, 2 per sentence and iteration (an anchor token with one of its tag
    and one of another), TOKEN_PAIR_BATCH pairs to a step, so a step embeds up to 3 sentences per
    anchor (training/fewshot.py): far more texts than a classifier's."""
    if head_class(facts.task_type).per_token:
        steps = math.ceil(2 * FEWSHOT_ITERATIONS * facts.labelled / TOKEN_PAIR_BATCH)
        return steps * min(3 * TOKEN_PAIR_BATCH // 2, facts.labelled)
    return fewshot_auto_steps(facts.labelled) * min(FEWSHOT_BATCH, facts.labelled)


def estimate_costs(facts: DataFacts, rates: Rates, val_fraction: float = 0.1) -> dict[str, float]:
    """Seconds per candidate strategy: tokens to process x the measured seconds per token.

    Training epochs see (1 - val_fraction) of the rows and evaluate the rest; partial is
    costed as full (an upper bound: its frozen bottom layers skip only part of the backward).
    """
    n_tokens = facts.labelled_tokens
    train_tokens, val_tokens = n_tokens * (1 - val_fraction), n_tokens * val_fraction
    per_example = n_tokens / max(1, facts.labelled)
    costs = {
        "frozen": n_tokens * rates.forward,  # features once; head epochs on the cache take seconds
        "fewshot": fewshot_texts(facts) * per_example * rates.full + n_tokens * rates.forward,
        "lora": epochs(facts, "lora", val_fraction) * (train_tokens * rates.lora + val_tokens * rates.forward),
        "partial": epochs(facts, "partial", val_fraction) * (train_tokens * rates.full + val_tokens * rates.forward),
        "full": epochs(facts, "full", val_fraction) * (train_tokens * rates.full + val_tokens * rates.forward),
    }
    if facts.unlabelled_tokens:
        costs["pretrain"] = PRETRAIN_EPOCHS * facts.unlabelled_tokens * rates.full
    return {k: round(v, 1) for k, v in costs.items()}
