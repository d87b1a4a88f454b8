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

from typing import Any

import torch
from torch import Tensor, nn

from headkit._typing import Backbone
from headkit.errors import HeadMismatchError

# Model types whose `last_hidden_state` is a (B, C, H, W) feature map and whose width is not `hidden_size`.
FEATURE_MAP_TYPES = ("resnet", "regnet", "convnext", "convnextv2", "efficientnet", "bit")
MAP_POOLINGS = ("mean", "max")


def _unwrapped(backbone: Backbone) -> nn.Module:
    """The transformers model inside a PEFT wrapper."""
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def timm_network(backbone: Backbone) -> nn.Module | None:
    """The timm model inside a `TimmWrapperModel`, or None for any other backbone."""
    return getattr(_unwrapped(backbone), "timm_model", None)


def hidden_size(backbone: Backbone) -> int:
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


def width_or_none(backbone: Backbone) -> int | None:
    """The features' width for reports; None where the backbone gives none (inspect still reports the rest)."""
    if not hasattr(backbone, "config"):
        return getattr(backbone, "num_features", None)  # a bare timm network
    try:
        return hidden_size(backbone)
    except HeadMismatchError:
        return None


def floating_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a module computes in: that of its first floating-point parameter (fp32 if none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def is_feature_map(backbone: Backbone) -> bool:
    """True when the backbone's last hidden state is a (B, C, H, W) map rather than a sequence."""
    config = backbone.config
    if config.model_type != "timm_wrapper":
        return config.model_type in FEATURE_MAP_TYPES
    network = timm_network(backbone)
    return network is not None and not hasattr(network, "cls_token")  # timm ViTs return token sequences


def as_sequence(hidden: Tensor) -> Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) positions; a (B, T, H) sequence is returned as is."""
    return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden


def check_map_pooling(backbone: Backbone, head: str, pooling: str) -> None:
    """Refuse a pooling that reads one chosen position (cls, last) or a transformer pooler on a feature map."""
    if pooling in MAP_POOLINGS or not is_feature_map(backbone):
        return
    raise HeadMismatchError(
        f"head '{head}' uses '{pooling}' pooling, but the {backbone.config.model_type} backbone returns a "
        f"convolutional feature map, which has no summary position; use one of {list(MAP_POOLINGS)} "
        "(global average or global max pooling)"
    )


# the inputs laid out over token positions (never pixels, audio or an encoder's states of another length)
TOKEN_INPUTS = ("input_ids", "inputs_embeds", "attention_mask", "token_type_ids", "position_ids")


def right_aligned(inputs: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
    """Token inputs with every row's tokens first, and each row's shift (None when the inputs are
    not tokens with a 2-D attention mask: images, audio, packed sequences without a mask). Every
    batch is rolled, not only left-padded ones (a shift of 0 leaves a row as it is), so that an
    exported graph serves both padding sides; `roll_rows(states, -shift)` undoes it."""
    mask = inputs.get("attention_mask")
    tokens = inputs.get("input_ids", inputs.get("inputs_embeds"))
    if mask is None or tokens is None or mask.dim() != 2 or tokens.shape[1] != mask.shape[1]:
        return inputs, None
    shift = left_padding(mask)
    return {k: roll_rows(v, shift) if k in TOKEN_INPUTS else v for k, v in inputs.items()}, shift


def features_mask(backbone: Backbone, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """A (B, T) mask over the positions of `hidden`, whatever the modality. Text: the attention
    mask. Vision: all ones. Speech: the mask over audio samples, mapped to frames by the
    backbone's own helper."""
    b, t = hidden.shape[:2]
    if attention_mask is not None and attention_mask.shape[1] == t:
        return attention_mask
    to_frames = getattr(backbone, "_get_feature_vector_attention_mask", None)
    if attention_mask is not None and to_frames is not None:
        return to_frames(t, attention_mask).long()
    return torch.ones(b, t, dtype=torch.long, device=hidden.device)


def left_padding(attention_mask: Tensor) -> Tensor:
    """(B,) how many pad positions open each row: 0 for a right-padded row, k for a left-padded one."""
    return (attention_mask.long().cumsum(-1) == 0).sum(dim=-1)


def roll_rows(values: Tensor, shift: Tensor) -> Tensor:
    """Each row of a (B, T, ...) tensor rotated left by its own `shift` (negative: right), so a
    left-padded row's tokens come first and its pads last; `shift` 0 leaves a row as it is.
    Branch-free (one gather), so a traced or exported graph handles both padding sides."""
    t = values.shape[1]
    index = torch.arange(t, device=values.device) + shift.to(values.device).unsqueeze(1)  # (B, T), in (-T, 2T)
    # wrapped into [0, T) without `%`, which the ONNX exporter cannot take on a symbolic length
    index = torch.where(index >= t, index - t, torch.where(index < 0, index + t, index))
    index = index.view(*index.shape, *([1] * (values.dim() - 2))).expand_as(values)
    return values.gather(1, index)


def is_decoder(backbone: Backbone) -> bool:
    """A causal (left-to-right) language model: GPT-2, Llama, Mistral, Gemma, Qwen, ... (BERT-style
    encoders also have a causal-LM class, and encoder-decoders read with a bidirectional encoder)."""
    return is_causal(backbone.config)


def is_causal(config: Any) -> bool:
    """`is_decoder` from the backbone's config alone (what data is encoded for, before a model is built)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return causal and not getattr(config, "is_encoder_decoder", False)


def family_pooling(backbone: Backbone) -> str:
    """The pooling a pooled head uses on this backbone unless told otherwise (`auto`), by the
    family's own convention: a decoder's last real token (the only one that has read the whole
    text), global average pooling of a CNN's feature map, the mean over a speech encoder's frames
    (as Wav2Vec2ForSequenceClassification), the mean over an encoder-decoder's encoder states (as
    sentence-T5), the class token of a vision transformer that has one and classifies with it (ViT,
    DeiT, DINOv2; Swin, BEiT with mean pooling and timm ViTs without a class token average their
    patches instead), and the first token ([CLS] / <s>) of a text encoder, which BERT-style
    classifiers read. A sentence-transformers checkpoint's own pooling wins over all of these
    (`backbone.declared_pooling`)."""
    model = _unwrapped(backbone)
    main_input = getattr(model, "main_input_name", "")
    encoder_decoder = getattr(backbone.config, "is_encoder_decoder", False)
    if is_feature_map(backbone) or main_input == "input_values" or encoder_decoder:
        return "mean"
    if is_decoder(backbone):
        return "last"
    if main_input == "pixel_values" and not classifies_with_a_class_token(model):
        return "mean"
    return "cls"


def classifies_with_a_class_token(model: nn.Module) -> bool:
    """A vision transformer whose first position is a class token its own classifier reads."""
    network = getattr(model, "timm_model", None)
    if network is not None:  # timm: prefix tokens, read when global_pool is "token"
        return getattr(network, "num_prefix_tokens", 0) > 0 and getattr(network, "global_pool", "") == "token"
    token = getattr(getattr(model, "embeddings", None), "cls_token", None)
    return isinstance(token, Tensor) and not getattr(model.config, "use_mean_pooling", False)
