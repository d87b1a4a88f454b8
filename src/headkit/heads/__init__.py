"""The head registry: type name -> (config dataclass, module class).

Adding a head type is one new file in this package plus one entry in `REGISTRY` (or, from
outside the package, one `register_head` call): the module and the parts it picks (base.py),
and the rest of headkit asks the head and its parts, never its name.
"""

from __future__ import annotations

import re
from typing import Any

from headkit.errors import HeadConfigError, UnknownHeadTypeError
from headkit.heads.base import Head, HeadBase, HeadConfig
from headkit.heads.box import BoxConfig, BoxHead
from headkit.heads.classification import ClassificationConfig, ClassificationHead
from headkit.heads.cross_encoder import CrossEncoderConfig, CrossEncoderHead
from headkit.heads.ctc import CTCConfig, CTCHead
from headkit.heads.embedding import EmbeddingConfig, EmbeddingHead
from headkit.heads.fewshot import Pair
from headkit.heads.labels import IGNORE_INDEX, LabelSource
from headkit.heads.lm import CAUSAL_LM, MASKED_LM, CausalLMHead, LMConfig, MaskedLMHead
from headkit.heads.multilabel import MultiLabelHead
from headkit.heads.multiple_choice import MultipleChoiceConfig, MultipleChoiceHead
from headkit.heads.pooling import POOLING_METHODS, pool
from headkit.heads.regression import RegressionHead
from headkit.heads.reward import RewardConfig, RewardHead
from headkit.heads.seq2seq import SEQ2SEQ, Seq2SeqConfig, Seq2SeqHead
from headkit.heads.span import SpanConfig, SpanHead
from headkit.heads.token_classification import TokenClassificationConfig, TokenClassificationHead

HEAD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # what a head may be named: a Python identifier

# Every head class is a HeadBase (an nn.Module that meets the Head contract): model.heads is an nn.ModuleDict.
REGISTRY: dict[str, tuple[type[HeadConfig], type[HeadBase]]] = {
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
    "embedding": (EmbeddingConfig, EmbeddingHead),
    "multiple-choice": (MultipleChoiceConfig, MultipleChoiceHead),
    "cross-encoder": (CrossEncoderConfig, CrossEncoderHead),
    SEQ2SEQ: (Seq2SeqConfig, Seq2SeqHead),
}


# Members of the all-in-one head contract before issue 35, and the part that answers each now: a
# head type written for it would have them silently ignored (a primary metric, a crop_ok=False ...).
_MOVED_TO_PARTS = {
    "codec": ("label_layout", "inputs", "crop_ok", "class_noun", "suggested_name", "label_names", "encode_labels",
              "tokenize_labels", "label_counts", "describe_counts", "references", "auto_class_weights",
              "fewshot_pairs", "fewshot_similarity"),
    "scoring": ("primary_metric", "metrics", "score", "scores_from_loss", "report", "class_decisions", "calibrate"),
    "view": ("brief", "table_cells", "pipeline_output", "for_text", "for_image", "writes_text"),
    "export": ("export_target", "pipeline_tag", "architectures", "export_config", "export_output"),
    "fewshot": ("fewshot_fit",),
}  # fmt: skip


def _check_contract(head_type: str, config_class: type[HeadConfig], head_class: type[Head]) -> None:
    """Refuse a head type that defines members of the old contract, naming the part that replaces each."""
    own = {name for cls in head_class.__mro__ if cls not in HeadBase.__mro__ for name in vars(cls)}
    moved = {name: part for part, names in _MOVED_TO_PARTS.items() for name in names if name in own}
    if "fit_backbone" in vars(config_class):
        moved["fit_backbone"] = "the config's fitted_to (returns a new config)"
    if moved:
        said = ", ".join(f"{name} -> {part}" for name, part in sorted(moved.items()))
        raise HeadConfigError(
            f"head type '{head_type}' defines members that headkit no longer reads from a head: {said}; "
            "pick or define the part instead (see headkit/heads/base.py and tests/contracts/test_new_head_type.py)"
        )


def register_head(head_type: str, config_class: type[HeadConfig], head_class: type[HeadBase]) -> None:
    """Add a head type defined outside headkit (a plugin, a test): it trains, saves, loads,
    predicts, evaluates and exports like the built-in ones."""
    if head_type in REGISTRY and REGISTRY[head_type] != (config_class, head_class):
        raise HeadConfigError(f"head type '{head_type}' is already registered")
    _check_contract(head_type, config_class, head_class)
    REGISTRY[head_type] = (config_class, head_class)


def _entry(head_type: str) -> tuple[type[HeadConfig], type[HeadBase]]:
    if head_type not in REGISTRY:
        raise UnknownHeadTypeError(f"unknown head type '{head_type}'; known types: {sorted(REGISTRY)}")
    return REGISTRY[head_type]


def head_class(head_type: str) -> type[HeadBase]:
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


def build_head(config: HeadConfig) -> HeadBase:
    """Instantiate the module for a complete config (input_size must be known)."""
    _, module_cls = _entry(config.type)
    if not config.input_size:
        raise HeadConfigError(f"'{config.type}' head needs input_size (the backbone's hidden size)")
    return module_cls(config)


__all__ = [
    "HEAD_NAME",
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
