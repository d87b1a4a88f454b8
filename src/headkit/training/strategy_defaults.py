"""Each strategy's name and the option defaults its recipe brings, without torch.

TrainConfig fills its unset fields from here when it is made, and the CLI lists the names in
--help: both run before any model is loaded, so this module imports nothing heavy. What a strategy
trains, and how, is strategies.py.
"""

from __future__ import annotations

from typing import Any, Literal

FixedStrategy = Literal["frozen", "full", "lora", "lp-ft", "fewshot"]  # and partial:K
STRATEGY_NAMES = ("frozen", "partial:K", "full", "lora", "lp-ft", "fewshot")


# The options a good recipe sets differently per strategy. A TrainConfig field left unset (None)
# takes its strategy's value here, else the general one; `headkit advise` runs exactly these.
GENERAL_DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "min_steps": 0,
    "batch_size": 32,
    "lr": 1e-3,
    "val_fraction": 0.1,
    "patience": 3,
    "backbone_lr": 3e-5,
    "fewshot_recipe": "all-pairs",
    "fewshot_steps": "auto",  # fewshot_auto_steps
    "fewshot_iterations": 20,
    "lora_lr": 5e-4,
    "lora_dropout": 0.0,
    "lora_targets": None,  # peft's choice for the model type
}


def fewshot_auto_steps(examples: int) -> int:
    """fewshot_steps "auto": one all-pairs step per 4 labelled examples, at least 10, at most 40.

    Measured with steps of 64 examples, the top half tuned (benchmarks/fewshot_defaults.py,
    paired against setfit; the recipe since has steps of 32, see docs/benchmarks/few-shot.md): 10 steps suffice at 8 per
    class (16 and 40 examples), and BBC at 64 per class scores as well at 10 as at 40; Rotten
    Tomatoes at 64 per class (128 examples) was 3.7 points under setfit at 10 steps, 0.6 at 40:
    a harder task for the pretrained features needs the steps that more labels allow."""
    return min(40, max(10, -(-examples // 4)))


STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    # a linear probe on cached features: many cheap epochs at a higher rate, kept to the end
    # (early stopping on a small validation split stops it too soon)
    "frozen": {"epochs": 30, "lr": 1e-2, "patience": 0},
    # steps of 32 examples and every pair among them, the top two thirds of the backbone tuned
    # (fewshot.tuned_from) at 2e-4: chosen on a development split (benchmarks/fewshot_dev.py; steps
    # of 64 with the top half tuned were 1.2-1.8 points lower on Rotten Tomatoes, 0.4 on BBC, and
    # 1.6x the time at 64 per class) and compared with SetFit on the test rows (fewshot_defaults.py:
    # accuracy within noise of the old recipe, 0.07x setfit's time at 64 per class where it took
    # 0.12x); with a handful of labels every one trains
    "fewshot": {"batch_size": 32, "backbone_lr": 2e-4, "val_fraction": 0.0},
    # adapters on every linear layer at 1e-3: 0.3 points below full fine-tuning on Rotten Tomatoes
    # with 1.5% of the weights training, where query/value at 5e-4 was 3.8 below (lora_vs_full.py);
    # no dropout (the general default): +0.5 point, 15% less training memory, 21% faster than 0.1.
    # At least 250 optimizer steps, as full, with the heads at 1e-2: at 3 epochs a tagger on 100 or 400
    # tweets learned nothing (development F1 0.006 / 0.000) and 128 reviews scored 0.614; with 250 steps
    # a head at 1e-3 collapsed to "no entity" on 2 of 6 tagging runs (F1 0.000 at 100 tweets, seed 2;
    # at 400, seed 0), at 1e-2 never: tweet NER 0.198 / 0.353 (means over seeds 0-2), reviews 0.726 /
    # 0.786 at 64 / 500 per class (seed 0), against 0.156 / 0.238 and 0.706 / 0.776 at 1e-3
    # (benchmarks/small_data.py --split dev, all-MiniLM-L6-v2). The rate is for heads that start as new
    # layers, as frozen's is; head types built from pretrained modules (lm, seq2seq) keep their own
    # rate (HeadBase.pretrained_lr) unless --lr is set by hand.
    "lora": {"lora_lr": 1e-3, "lora_targets": ["all-linear"], "lr": 1e-2, "min_steps": 250},
    # every weight trained: at least 250 optimizer steps (small data gets more epochs, and early
    # stopping waits for them) at a backbone rate of 1e-4. At 3 epochs and 3e-5 a tagger on 100 or
    # 400 tweets learned nothing (entity F1 0.00-0.01), and 128 reviews scored 0.594, under the frozen
    # probe's 0.670. Chosen on the development split (benchmarks/small_data.py --split dev,
    # all-MiniLM-L6-v2): 250 steps at 1e-4 gave tweet NER F1 0.242 / 0.406 (100 / 400 tweets) and
    # reviews 0.720 / 0.760 (64 / 500 per class), against 0.000 / 0.317 and 0.594 / 0.746 at 3e-5 and
    # the old 3 epochs. A per-token head rate of 1e-2 was no better (0.193 / 0.394), so heads keep one.
    # Measured on a 6-layer backbone; a 12-layer base model is usually tuned at 2e-5 to 5e-5.
    "full": {"backbone_lr": 1e-4, "min_steps": 250},
    "partial": {"backbone_lr": 1e-4, "min_steps": 250},
}


def strategy_defaults(name: str) -> dict[str, Any]:
    """The defaults `--strategy NAME` brings (partial:K shares partial's)."""
    return {**GENERAL_DEFAULTS, **STRATEGY_DEFAULTS.get(name.split(":")[0], {})}
