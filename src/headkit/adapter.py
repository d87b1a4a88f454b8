"""The backbone adapter: one object that turns a batch of inputs into the `Features` heads read.

    inputs -> backbone -> Features(hidden: {layer key: (B, T, H)}, mask: (B, T), pooled: {key: (B, H)})

Like timm's `forward_features`, everything about the backbone that heads depend on is known
here, once: the features' width, the number of layers, its own pooling layer (BERT's tanh
pooler), whether its output is a convolutional feature map (flattened to H*W positions: see
headkit.backbone_outputs), the pooling `auto` means for it, and how it reads padded text (always
right-aligned, rolled back to the caller's padding side). Heads never see the backbone; the
feature cache builds `Features` from stored tensors and the heads cannot tell the difference.

Layers are keyed -1 (the last hidden state) or by their index into the backbone's
`hidden_states` (0 = the embeddings); pooled vectors are keyed `feature_key(method, layer)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from headkit._typing import Backbone
from headkit.backbone import declared_pooling
from headkit.backbone_outputs import (
    as_sequence,
    check_map_pooling,
    family_pooling,
    features_mask,
    floating_dtype,
    hidden_size,
    is_feature_map,
    right_aligned,
    roll_rows,
)
from headkit.errors import HeadConfigError, HeadMismatchError
from headkit.heads.pooling import pool

LAST_LAYER = -1


def feature_key(method: str, layer: int = LAST_LAYER) -> str:
    """The name of one pooled feature: 'mean' on the last hidden state, 'mean@3' on hidden state 3."""
    return method if layer == LAST_LAYER else f"{method}@{layer}"


def split_feature_key(key: str) -> tuple[str, int]:
    method, _, layer = key.partition("@")
    return method, int(layer) if layer else LAST_LAYER


@dataclass
class Features:
    """What the backbone hands the heads for one batch. `pooled` fills as heads ask
    (`BackboneAdapter.pooled`), so each (method, layer) is pooled once however many heads read it;
    the feature cache gives it ready-made and `hidden` empty when no head reads positions."""

    mask: Tensor  # (B, T), 1 at real positions
    hidden: dict[int, Tensor] = field(default_factory=dict)  # layer key -> (B, T, H)
    pooled: dict[str, Tensor] = field(default_factory=dict)  # feature_key -> (B, H)

    def at(self, layer: int) -> Tensor:
        """The hidden states of one layer key."""
        if layer not in self.hidden:
            raise HeadConfigError(
                f"hidden state {layer} was not computed for this batch (have {sorted(self.hidden)}); "
                "ask forward_features for every layer the heads read"
            )
        return self.hidden[layer]

    def to(self, device: torch.device | str) -> Features:
        return Features(
            self.mask.to(device),
            {k: v.to(device) for k, v in self.hidden.items()},
            {k: v.to(device) for k, v in self.pooled.items()},
        )


class BackboneAdapter(nn.Module):
    """A transformers backbone (or a PEFT wrapper around one) seen as a feature extractor."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.width = hidden_size(backbone)  # refuse a backbone the heads cannot read, before anything else
        self.backbone = backbone
        # what `auto` pooling means here: the checkpoint's own sentence pooling, else its family's
        source = getattr(backbone.config, "name_or_path", "") or ""
        self.default_pooling = (declared_pooling(source) if source else None) or family_pooling(backbone)
        self.feature_map = is_feature_map(backbone)
        self.is_encoder_decoder = bool(getattr(backbone.config, "is_encoder_decoder", False))
        n = getattr(backbone.config, "num_hidden_layers", None)
        self.num_layers: int | None = n if isinstance(n, int) and n > 0 else None  # hidden_states hold n + 1

    @property
    def model_type(self) -> str:
        return self.backbone.config.model_type

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's floating-point dtype (what its first floating parameter holds)."""
        return floating_dtype(self.backbone)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def pooler(self) -> nn.Module | None:
        """The backbone's own pooling layer (BERT's tanh pooler), seen through a PEFT wrapper."""
        if self.feature_map:
            return None  # a CNN's pooler pools the (B, C, H, W) map, which heads never see
        base = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        return getattr(base, "pooler", None)

    def layer_key(self, layer: int, head: str = "") -> int:
        """-1 for the last hidden state, else the index into the backbone's hidden_states (0 = embeddings).

        `layer` counts like a Python index over the hidden states: 0 is the embeddings, n the
        last of n layers, -1 the last, -2 the one below it."""
        if layer == LAST_LAYER:
            return LAST_LAYER
        n, who = self.num_layers, f"head '{head}'" if head else "a head"
        if n is None:
            raise HeadMismatchError(
                f"{who} reads layer {layer}, but the {self.model_type} backbone does not say how many "
                "layers it has (no num_hidden_layers); use layer -1, the last hidden state"
            )
        if not -(n + 1) <= layer <= n:
            raise HeadConfigError(
                f"{who} reads layer {layer}, but the {self.model_type} backbone has {n} layers: "
                f"use 0..{n} (0 = the embeddings, {n} = the last) or -{n + 1}..-1"
            )
        index = layer % (n + 1)
        return LAST_LAYER if index == n else index

    def check_pooling(self, head: str, pooling: str, per_token: bool) -> None:
        """Refuse a pooling this backbone cannot give (a position on a feature map, a pooler it lacks)."""
        if not per_token:
            check_map_pooling(self.backbone, head, pooling)
        if pooling == "pooler" and self.pooler is None:
            raise HeadMismatchError(
                f"head '{head}' uses 'pooler' pooling, but the {self.model_type} backbone has no "
                "pooling layer; use cls, mean, max or last"
            )

    def pool(self, hidden: Tensor, mask: Tensor, method: str) -> Tensor:
        """(B, T, H) -> (B, H) with a pooling method, the backbone's own `pooler` included."""
        if method == "pooler":  # it reads position 0: give it each text's first real token (left padding)
            pooler = self.pooler
            assert pooler is not None  # check_pooling refused 'pooler' on a backbone without one
            return pooler(pool(hidden, mask, "cls").unsqueeze(1))
        return pool(hidden, mask, method)

    def pooled(self, features: Features, method: str, layer: int = LAST_LAYER) -> Tensor:
        """The (B, H) `method` pooling of hidden state `layer`, computed once per batch."""
        key = feature_key(method, layer)
        if key not in features.pooled:
            features.pooled[key] = self.pool(features.at(layer), features.mask, method)
        return features.pooled[key]

    def forward_features(self, inputs: dict[str, Tensor], layers: Iterable[int] = (LAST_LAYER,)) -> Features:
        """Run the backbone once: the hidden states (B, T, H) of each layer key asked for, and their mask.

        Layers below the last come from `output_hidden_states`, asked for only when needed."""
        below = sorted(layer for layer in set(layers) if layer != LAST_LAYER)
        for key in ("pixel_values", "input_values"):  # pixels and audio in the backbone's dtype (bf16 ...)
            if key in inputs and inputs[key].is_floating_point():
                inputs = {**inputs, key: inputs[key].to(self.dtype)}
        # The backbone always reads right-padded rows: a left-padded text (Llama, Gemma and Qwen
        # tokenizers pad left) would otherwise start at position k, not 0, wherever positions are
        # absolute (GPT-2, Llama, BERT, BART ...). Its states are rolled back to the caller's layout.
        given_mask = inputs.get("attention_mask")
        inputs, shift = right_aligned(inputs)
        # an encoder-decoder checkpoint (T5, BART): heads read its encoder; a seq2seq head drives its decoder
        network = self.backbone.get_encoder() if self.is_encoder_decoder else self.backbone
        out = network(**inputs, output_hidden_states=True) if below else network(**inputs)
        last = getattr(out, "last_hidden_state", None)
        if last is None:
            raise HeadMismatchError(
                f"the {type(self.backbone).__name__} backbone returned no last_hidden_state (it returned "
                f"{list(out.keys()) if hasattr(out, 'keys') else type(out).__name__}); heads need one"
            )
        hidden = {LAST_LAYER: as_sequence(last)}  # a CNN's feature map becomes H*W positions
        hidden.update({layer: as_sequence(out.hidden_states[layer]) for layer in below})
        if shift is not None:
            hidden = {layer: roll_rows(h, -shift) for layer, h in hidden.items()}
        return Features(features_mask(self.backbone, hidden[LAST_LAYER], given_mask), hidden)

    def forward(self, inputs: dict[str, Tensor], layers: Iterable[int] = (LAST_LAYER,)) -> Features:
        return self.forward_features(inputs, layers)


def checkpoint_activations(backbone: Backbone, kwargs: dict | None = None) -> None:
    """Turn on the backbone's own activation checkpointing (non-reentrant unless `kwargs` say otherwise):
    `MultiHeadModel.gradient_checkpointing_enable` and training's `--gradient_checkpointing`
    (training/strategies.py) both come here."""
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise HeadConfigError(f"{type(backbone).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False, **(kwargs or {})}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers' name from 5.x on
        backbone.activation_checkpointing_enable(kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
