"""`class_weights`: loss weights for imbalanced labels, resolved once from the training split.

`auto` asks each head for its own inverse-frequency weights (heads/: single-label and tagging
heads use scikit-learn's "balanced" n / (k * count); multi-label heads BCE's negatives/positives);
a mapping {label: weight} sets named labels and leaves the rest at 1. The weights are resolved
into new head configs before the heads are built, so they are saved with the run (and a resumed
run must use the same ones).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from headkit.data.tasks import PreparedData
from headkit.errors import HeadkitError, UsageError
from headkit.heads import HeadConfig, head_class

logger = logging.getLogger(__name__)


def with_class_weights(setting: str | dict[str, float], data: PreparedData) -> dict[str, HeadConfig]:
    """The run's head configs, those with classes to weigh given their `class_weights` (new config
    objects; `data.heads` is left as it is)."""
    if setting in (None, "none"):
        return dict(data.heads)
    weighable = {}
    for name, config in data.heads.items():
        y = data.train.labels.get(name)
        if y is not None and head_class(config.type).codec.auto_class_weights(y, len(config.labels)) is not None:
            weighable[name] = config
    if not weighable:
        raise HeadkitError(
            f"--class_weights {setting}: no head here has classes to weigh "
            "(classification, multilabel and token-classification heads do)"
        )
    if setting == "auto":
        chosen = {
            n: head_class(c.type).codec.auto_class_weights(data.train.labels[n], len(c.labels))
            for n, c in weighable.items()
        }
    elif isinstance(setting, dict):
        chosen = _named(setting, weighable)
    else:
        raise UsageError(f"--class_weights {setting!r}: choose none, auto or a mapping {{label: weight}}")
    for name, weights in chosen.items():
        shown = ", ".join(f"{label} {w:.3g}" for label, w in zip(weighable[name].labels, weights, strict=True))
        logger.info(f"{name}: class weights {shown}")
    # the chosen heads are the weighable ones, whose configs have class_weights
    return {n: dataclasses.replace(c, class_weights=chosen[n]) if n in chosen else c for n, c in data.heads.items()}  # type: ignore[call-arg]


def _named(setting: dict[str, float], heads: dict[str, Any]) -> dict[str, list[float]]:
    known = sorted({label for config in heads.values() for label in config.labels})
    unknown = sorted(set(setting) - set(known))
    if unknown:
        raise HeadkitError(f"--class_weights names labels {unknown} that no head has; the labels are {known}")
    bad = {k: v for k, v in setting.items() if not float(v) > 0}
    if bad:
        raise UsageError(f"--class_weights {bad}: weights must be above 0")
    return {
        name: [float(setting.get(label, 1.0)) for label in config.labels]
        for name, config in heads.items()
        if set(config.labels) & set(setting)
    }
