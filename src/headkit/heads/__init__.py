"""The head registry: type name -> (config dataclass, module class).

Adding a head type is one new file in this package plus one entry in `REGISTRY` (or, from
outside the package, one `register_head` call): the module and the parts it picks (base.py),
and the rest of headkit asks the head and its parts, never its name.
"""

from __future__ import annotations

from typing import Any

from headkit.errors import HeadConfigError, UnknownHeadTypeError
from headkit.heads.base import Head, HeadBase, HeadConfig
from headkit.heads.box import BoxConfig, BoxHead
from headkit.heads.classification import ClassificationConfig, ClassificationHead
from headkit.heads.ctc import CTCConfig, CTCHead
from headkit.heads.fewshot import Pair
from headkit.heads.labels import IGNORE_INDEX, LabelSource
from headkit.heads.lm import CAUSAL_LM, MASKED_LM, CausalLMHead, LMConfig, MaskedLMHead
from headkit.heads.multilabel import MultiLabelHead
from headkit.heads.pooling import POOLING_METHODS, pool
from headkit.heads.regression import RegressionHead
from headkit.heads.reward import RewardConfig, RewardHead
from headkit.heads.seq2seq import SEQ2SEQ, Seq2SeqConfig, Seq2SeqHead
from headkit.heads.span import SpanConfig, SpanHead
from headkit.heads.token_classification import TokenClassificationConfig, TokenClassificationHead

REGISTRY: dict[str, tuple[type[HeadConfig], type[Head]]] = {
    "classification": (ClassificationConfig, ClassificationHead),
    "multilabel": (ClassificationConfig, MultiLabelHead),
    "regression": (ClassificationConfig, RegressionHead),
    "token-classification": (TokenClassificationConfig, TokenClassificationHead),
    "span": (SpanConfig, SpanHead),
    MASKED_LM: (LMConfig, MaskedLMHead),
    CAUSAL_LM: (LMConfig, CausalLMHead),
    "ctc": (CTCConfig, CTCHead),
    "box": (BoxConfig, BoxHead),
    "reward": (RewardConfig, RewardHead),
    SEQ2SEQ: (Seq2SeqConfig, Seq2SeqHead),
}


def register_head(head_type: str, config_class: type[HeadConfig], head_class: type[Head]) -> None:
    """Add a head type defined outside headkit (a plugin, a test): it trains, saves, loads,
    predicts, evaluates and exports like the built-in ones."""
    if head_type in REGISTRY and REGISTRY[head_type] != (config_class, head_class):
        raise HeadConfigError(f"head type '{head_type}' is already registered")
    REGISTRY[head_type] = (config_class, head_class)


def _entry(head_type: str) -> tuple[type[HeadConfig], type[Head]]:
    if head_type not in REGISTRY:
        raise UnknownHeadTypeError(f"unknown head type '{head_type}'; known types: {sorted(REGISTRY)}")
    return REGISTRY[head_type]


def head_class(head_type: str) -> type[Head]:
    """The module class of a head type, whose parts answer what is known before a head is built
    (`head_class(t).codec.label_names(...)`, `.export.target`)."""
    return _entry(head_type)[1]


def head_types_for_tables() -> list[str]:
    """The head types that train from table files (CSV, JSONL, Parquet, CoNLL)."""
    return [name for name, (_, cls) in REGISTRY.items() if cls.codec.layout is not None]


def head_config(head_type: str, **fields: Any) -> HeadConfig:
    """Make the config dataclass for a head type, e.g. `head_config("classification", labels=[...])`."""
    config_cls, _ = _entry(head_type)
    return config_cls.from_dict({"type": head_type, **fields})


def config_from_dict(data: dict[str, Any]) -> HeadConfig:
    """Rebuild a head config from its `heads.json` form."""
    if "type" not in data:
        raise HeadConfigError(f"head config without a 'type': {data}")
    return head_config(data["type"], **{k: v for k, v in data.items() if k != "type"})


def build_head(config: HeadConfig) -> Head:
    """Instantiate the module for a complete config (input_size must be known)."""
    _, module_cls = _entry(config.type)
    if not config.input_size:
        raise HeadConfigError(f"'{config.type}' head needs input_size (the backbone's hidden size)")
    return module_cls(config)  # type: ignore[call-arg]


__all__ = [
    "IGNORE_INDEX",
    "POOLING_METHODS",
    "REGISTRY",
    "Head",
    "HeadBase",
    "HeadConfig",
    "LabelSource",
    "Pair",
    "build_head",
    "config_from_dict",
    "head_class",
    "head_config",
    "head_types_for_tables",
    "pool",
    "register_head",
]
