"""The head registry: type name -> (config dataclass, module class).

Adding a head type is one new file in this package plus one entry in `REGISTRY`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from headkit.errors import HeadConfigError, UnknownHeadTypeError
from headkit.heads.base import IGNORE_INDEX, Head, HeadConfig
from headkit.heads.box import BoxConfig, BoxHead
from headkit.heads.classification import ClassificationConfig, ClassificationHead, MultiLabelHead, RegressionHead
from headkit.heads.ctc import CTCConfig, CTCHead
from headkit.heads.lm import LMConfig, LMHead
from headkit.heads.pooling import POOLING_METHODS, pool
from headkit.heads.span import SpanConfig, SpanHead
from headkit.heads.token_classification import TokenClassificationConfig, TokenClassificationHead

REGISTRY: dict[str, tuple[type[HeadConfig], type[nn.Module]]] = {
    "classification": (ClassificationConfig, ClassificationHead),
    "multilabel": (ClassificationConfig, MultiLabelHead),
    "regression": (ClassificationConfig, RegressionHead),
    "token-classification": (TokenClassificationConfig, TokenClassificationHead),
    "span": (SpanConfig, SpanHead),
    "masked-lm": (LMConfig, LMHead),
    "causal-lm": (LMConfig, LMHead),
    "ctc": (CTCConfig, CTCHead),
    "box": (BoxConfig, BoxHead),
}


def _entry(head_type: str) -> tuple[type[HeadConfig], type[nn.Module]]:
    if head_type not in REGISTRY:
        raise UnknownHeadTypeError(f"unknown head type '{head_type}'; known types: {sorted(REGISTRY)}")
    return REGISTRY[head_type]


def head_config(head_type: str, **fields: Any) -> HeadConfig:
    """Make the config dataclass for a head type, e.g. `head_config("classification", labels=[...])`."""
    config_cls, _ = _entry(head_type)
    return config_cls.from_dict({"type": head_type, **fields})


def config_from_dict(data: dict[str, Any]) -> HeadConfig:
    """Rebuild a head config from its `heads.json` form."""
    if "type" not in data:
        raise HeadConfigError(f"head config without a 'type': {data}")
    return head_config(data["type"], **{k: v for k, v in data.items() if k != "type"})


def build_head(config: HeadConfig) -> nn.Module:
    """Instantiate the module for a complete config (input_size must be known)."""
    _, module_cls = _entry(config.type)
    if not config.input_size:
        raise HeadConfigError(f"'{config.type}' head needs input_size (the backbone's hidden size)")
    return module_cls(config)


__all__ = [
    "IGNORE_INDEX",
    "POOLING_METHODS",
    "REGISTRY",
    "Head",
    "HeadConfig",
    "build_head",
    "config_from_dict",
    "head_config",
    "pool",
]
