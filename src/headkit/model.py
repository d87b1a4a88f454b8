"""MultiHeadModel: one shared backbone, named heads, one backbone forward for all of them.

    inputs -> backbone -> hidden (B, T, H), mask (B, T) -> each head -> outputs, losses
    (a CNN's (B, C, H, W) feature map enters as H*W positions: see headkit.backbone_outputs)
    total loss = LossWeighting({head: loss}) over the heads that have labels in the batch

`forward_features` and `forward_heads` are split (timm style) so frozen training can run the
heads on cached backbone features without touching the backbone at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from headkit.backbone import load_backbone
from headkit.backbone_outputs import as_sequence, check_map_pooling, hidden_size, is_feature_map
from headkit.errors import HeadConfigError, HeadMismatchError
from headkit.heads import Head, HeadConfig, build_head, config_from_dict, head_class
from headkit.heads.base import zero_loss
from headkit.heads.pooling import pool
from headkit.weighting import LossWeighting

HEAD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class MultiHeadOutput:
    outputs: dict[str, Tensor]
    losses: dict[str, Tensor] = field(default_factory=dict)  # mean loss of each head with labels
    counts: dict[str, int] = field(default_factory=dict)  # labelled examples behind each loss
    loss: Tensor | None = None  # weighted total, None when no labels were given
    mask: Tensor | None = None  # (B, T) mask over the hidden states


class MultiHeadModel(nn.Module):
    """A backbone plus a `ModuleDict` of heads; see the module docstring."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        heads: Mapping[str, HeadConfig] | None = None,
        weighting: str = "static",
    ):
        super().__init__()
        hidden_size(backbone)  # refuse a backbone the heads cannot read, before anything else
        self.backbone = backbone
        self.heads = nn.ModuleDict()
        self.weighting = LossWeighting(weighting)
        for name, config in (heads or {}).items():
            self.add_head(name, config)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        heads: Mapping[str, HeadConfig | dict[str, Any]] | None = None,
        weighting: str = "static",
        trust_remote_code: bool = False,
        dtype: torch.dtype | None = None,
    ) -> MultiHeadModel:
        """Load the backbone of any checkpoint (its own head is dropped) and attach `heads`."""
        backbone = load_backbone(model, trust_remote_code=trust_remote_code, dtype=dtype)
        configs = {name: c if isinstance(c, HeadConfig) else config_from_dict(c) for name, c in (heads or {}).items()}
        return cls(backbone, configs, weighting=weighting)

    @property
    def hidden_size(self) -> int:
        return hidden_size(self.backbone)

    @property
    def backbone_config(self):
        return self.backbone.config

    @property
    def head_configs(self) -> dict[str, HeadConfig]:
        return {name: head.config for name, head in self.heads.items()}

    def add_head(self, name: str, config: HeadConfig) -> Head:
        """Attach a new head, checking that it fits this backbone (sizes, vocabulary)."""
        if not HEAD_NAME.match(name):
            raise HeadConfigError(f"head name '{name}' must be a Python identifier (letters, digits, _)")
        if name in self.heads:
            raise HeadConfigError(f"a head named '{name}' already exists; remove_head('{name}') first")
        if config.input_size is None:
            config.input_size = self.hidden_size
        elif config.input_size != self.hidden_size:
            raise HeadMismatchError(
                f"head '{name}' expects input size {config.input_size}, but the backbone "
                f"({self.backbone.config.model_type}) has hidden size {self.hidden_size}; "
                f"rebuild the head with input_size={self.hidden_size} or use the backbone it was made for"
            )
        if not head_class(config.type).per_token:
            check_map_pooling(self.backbone, name, config.pooling)
        if config.pooling == "pooler" and self.backbone_pooler is None:
            raise HeadMismatchError(
                f"head '{name}' uses 'pooler' pooling, but the {self.backbone.config.model_type} backbone has no "
                "pooling layer; use cls, mean, max or last"
            )
        config.fit_backbone(self.backbone.config)
        head = build_head(config)
        head.attach(self.backbone)
        head.to(device=self.device)
        self.heads[name] = head
        self.weighting.add_head(name)
        return head

    def remove_head(self, name: str) -> None:
        del self.heads[name]
        self.weighting.remove_head(name)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def backbone_pooler(self) -> nn.Module | None:
        """The backbone's own pooling layer (BERT's tanh pooler), seen through a PEFT wrapper."""
        if is_feature_map(self.backbone):
            return None  # a CNN's pooler pools the (B, C, H, W) map, which heads never see
        base = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        return getattr(base, "pooler", None)

    def pool(self, hidden: Tensor, mask: Tensor, method: str) -> Tensor:
        """(B, T, H) -> (B, H) with a pooling method, the backbone's own `pooler` included."""
        if method == "pooler":
            return self.backbone_pooler(hidden)
        return pool(hidden, mask, method)

    def hidden_mask(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """A (B, T) mask over hidden positions, whatever the modality.

        Text: the attention mask. Vision: all ones. Speech: the mask over audio samples is
        mapped to frames by the backbone's own helper.
        """
        b, t = hidden.shape[:2]
        if attention_mask is None:
            return torch.ones(b, t, dtype=torch.long, device=hidden.device)
        if attention_mask.shape[1] == t:
            return attention_mask
        to_frames = getattr(self.backbone, "_get_feature_vector_attention_mask", None)
        if to_frames is not None:
            return to_frames(t, attention_mask).long()
        return torch.ones(b, t, dtype=torch.long, device=hidden.device)

    def forward_features(self, **inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Run the backbone once: returns hidden states (B, T, H) and their mask (B, T)."""
        out = self.backbone(**inputs)
        last = getattr(out, "last_hidden_state", None)
        if last is None:
            raise HeadMismatchError(
                f"the {type(self.backbone).__name__} backbone returned no last_hidden_state (it returned "
                f"{list(out.keys()) if hasattr(out, 'keys') else type(out).__name__}); heads need one"
            )
        hidden = as_sequence(last)  # a CNN's feature map becomes H*W positions
        return hidden, self.hidden_mask(hidden, inputs.get("attention_mask"))

    def forward_heads(
        self,
        hidden: Tensor | None,
        mask: Tensor,
        labels: Mapping[str, Tensor | None] | None = None,
        heads: list[str] | None = None,
        pooled: Mapping[str, Tensor] | None = None,
    ) -> MultiHeadOutput:
        """Run the chosen heads (all by default) on backbone features and combine their losses.

        `pooled` maps a pooling method to precomputed (B, H) vectors (the feature cache); pooled
        heads then skip pooling, and `hidden` may be None when no per-token head runs.
        """
        names = heads if heads is not None else list(self.heads)
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise HeadConfigError(f"unknown head(s) {unknown}; this model has {list(self.heads)}")
        outputs = {}
        pooled = dict(pooled or {})  # each pooling method is computed once, however many heads use it
        for name in names:
            head = self.heads[name]
            if head.per_token:
                outputs[name] = head(hidden, mask)
                continue
            method = head.config.pooling
            if method not in pooled:
                pooled[method] = self.pool(hidden, mask, method)
            outputs[name] = head.forward_pooled(pooled[method])
        result = MultiHeadOutput(outputs=outputs, mask=mask)
        if labels is None:
            return result
        for name in names:
            y = labels.get(name)
            if y is None:
                continue
            loss, n = self.heads[name].loss(outputs[name], y.to(outputs[name].device), mask)
            if n > 0:
                result.losses[name], result.counts[name] = loss, n
        weights = {n: self.heads[n].config.loss_weight for n in result.losses}
        if result.losses:
            result.loss = self.weighting(result.losses, weights)
        else:
            result.loss = sum((zero_loss(o) for o in outputs.values()), start=zero_loss(mask.float()))
        return result

    def forward(
        self,
        labels: Mapping[str, Tensor | None] | None = None,
        heads: list[str] | None = None,
        features: tuple[Tensor | None, Tensor, Mapping[str, Tensor]] | None = None,
        **inputs: Tensor,
    ) -> MultiHeadOutput:
        """Backbone + heads; with `features` = (hidden, mask, pooled) from the feature cache the
        backbone is skipped. Going through `forward` either way keeps DDP's gradient sync intact."""
        if features is not None:
            hidden, mask, pooled = features
            return self.forward_heads(hidden, mask, labels=labels, heads=heads, pooled=pooled)
        hidden, mask = self.forward_features(**inputs)
        return self.forward_heads(hidden, mask, labels=labels, heads=heads)

    def tied_parameter_names(self) -> set[str]:
        """Head parameters that are the backbone's own tensors (not saved with the heads)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return {n for n, p in self.heads.named_parameters(remove_duplicate=False) if id(p) in backbone_ids}
