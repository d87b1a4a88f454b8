"""What a backbone hands its heads: how wide its features are, and in what layout.

Heads read a sequence of feature vectors, (B, T, H), and a mask over it. Transformers
(BERT, ViT, Llama, wav2vec2) produce that directly. Convolutional networks (ResNet, ConvNeXt,
EfficientNet, RegNet, and timm CNNs through transformers' `TimmWrapperModel`) produce a
feature map (B, C, H, W); it is flattened to H*W positions of C features, so that mean and
max pooling over positions are exactly global average and global max pooling, and heads that
read positions see one vector per map cell. A feature map has no summary position, so `cls`
and `last` pooling (which read one chosen position) are refused there.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from headkit.errors import HeadMismatchError

# Model types whose `last_hidden_state` is a (B, C, H, W) feature map and whose width is not `hidden_size`.
FEATURE_MAP_TYPES = ("resnet", "regnet", "convnext", "convnextv2", "efficientnet", "bit")
MAP_POOLINGS = ("mean", "max")


def _unwrapped(backbone: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper."""
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def timm_network(backbone: nn.Module) -> nn.Module | None:
    """The timm model inside a `TimmWrapperModel`, or None for any other backbone."""
    return getattr(_unwrapped(backbone), "timm_model", None)


def hidden_size(backbone: nn.Module) -> int:
    """The width of the features heads read, or a HeadMismatchError naming what was found.

    (A property of nn.Module that raised AttributeError would surface as a misleading
    "'MultiHeadModel' object has no attribute 'hidden_size'".)"""
    config = backbone.config
    network = timm_network(backbone)
    candidates = (
        getattr(config, "hidden_size", None),
        (getattr(config, "hidden_sizes", None) or [None])[-1],  # ResNet, ConvNeXt, RegNet: the last stage
        getattr(config, "hidden_dim", None) if config.model_type == "efficientnet" else None,
        getattr(network, "num_features", None),  # timm: the width forward_features returns
    )
    size = next((s for s in candidates if isinstance(s, int) and s > 0), None)
    if size is not None:
        return size
    found = {
        k: getattr(config, k) for k in ("hidden_sizes", "embed_dim", "d_model", "num_features") if hasattr(config, k)
    }
    raise HeadMismatchError(
        f"headkit cannot drive a '{config.model_type}' backbone: heads read features of a known width, and its "
        f"config gives none (no hidden_size; found {found or 'no width at all'}). Transformer backbones "
        "(BERT, RoBERTa, ViT, Llama, GPT-2, wav2vec2, ...) and convolutional ones (ResNet, ConvNeXt, "
        "EfficientNet, RegNet, timm CNNs) work"
    )


def is_feature_map(backbone: nn.Module) -> bool:
    """True when the backbone's last hidden state is a (B, C, H, W) map rather than a sequence."""
    config = backbone.config
    if config.model_type != "timm_wrapper":
        return config.model_type in FEATURE_MAP_TYPES
    network = timm_network(backbone)
    return network is not None and not hasattr(network, "cls_token")  # timm ViTs return token sequences


def as_sequence(hidden: Tensor) -> Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) positions; a (B, T, H) sequence is returned as is."""
    return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden


def check_map_pooling(backbone: nn.Module, head: str, pooling: str) -> None:
    """Refuse a pooling that reads one chosen position (cls, last) or a transformer pooler on a feature map."""
    if pooling in MAP_POOLINGS or not is_feature_map(backbone):
        return
    raise HeadMismatchError(
        f"head '{head}' uses '{pooling}' pooling, but the {backbone.config.model_type} backbone returns a "
        f"convolutional feature map, which has no summary position; use one of {list(MAP_POOLINGS)} "
        "(global average or global max pooling)"
    )


def numbers_positions_from_the_left(backbone: nn.Module) -> bool:
    """True for decoder LLMs (GPT-2, Llama, ...), which number positions from the tensor's first
    column: a left-padded text would start at position k instead of 0 unless given position ids.
    (Encoders such as RoBERTa derive their own from the padding and must not be given any.)"""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = backbone.config.model_type
    decoder = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return decoder and "position_ids" in inspect.signature(_unwrapped(backbone).forward).parameters


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that start at each row's first real token (left padding) and count real tokens."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).to(torch.long)
