"""MultiHeadModel: a backbone adapter, named heads and their loss weighting; one backbone pass for all heads.

    inputs -> BackboneAdapter -> Features (hidden (B, T, H) by layer, mask (B, T), pooled (B, H))
           -> each head -> outputs, losses
    total loss = LossWeighting({head: loss}) over the heads that have labels in the batch

`forward_features` and `forward_heads` are split (timm style): frozen training computes the
features once (training/features.py caches them) and runs only the heads on them, through
`trainable_top()` when the training loop wraps what trains for several processes.

A head reads the last hidden state unless its config names another `layer` (probing, or a head
on an intermediate layer): the backbone is then asked for its hidden states once, and every head
takes the layer it reads (headkit.adapter keys them).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from headkit._typing import Backbone
from headkit.adapter import LAST_LAYER, BackboneAdapter, Features, checkpoint_activations, feature_key
from headkit.errors import HeadConfigError, HeadkitError, HeadMismatchError
from headkit.heads import HEAD_NAME, HeadBase, HeadConfig, build_head, head_class
from headkit.heads.base import first_rows, zero_loss
from headkit.ship.inference import InferenceMixin
from headkit.ship.pretrained import PretrainedMixin
from headkit.weighting import LossWeighting

if TYPE_CHECKING:
    from headkit.heads.base import HeadModules

BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "input_values")


@dataclass
class MultiHeadOutput(ModelOutput):
    """What a forward pass returns, as a transformers `ModelOutput` (so `out["loss"]`, `out.loss`
    and `transformers.Trainer` work): `loss` first, as Trainer reads it."""

    loss: Tensor | None = None  # weighted total, None when no labels were given
    outputs: dict[str, Tensor] | None = None  # each head's raw output
    losses: dict[str, Tensor] | None = None  # mean loss of each head with labels
    counts: dict[str, int] | None = None  # labelled examples behind each loss
    mask: Tensor | None = None  # (B, T) mask over the hidden states

    def __post_init__(self) -> None:
        # ModelOutput's own first: it reads `MultiHeadOutput({"loss": ..., ...})` (one mapping,
        # the other fields None) as those fields, which is how accelerate rebuilds the output
        # under mixed precision (convert_outputs_to_fp32); filled in before, they hid that case
        # and the whole mapping became `loss`
        super().__post_init__()
        for name in ("outputs", "losses", "counts"):
            if getattr(self, name) is None:
                self[name] = {}


class MultiHeadModel(InferenceMixin, PretrainedMixin, nn.Module):
    """A `BackboneAdapter`, a `ModuleDict` of heads and a `LossWeighting`; see the module docstring.
    `predict` / `evaluate` come from ship/inference.py, `from_pretrained` / `save_pretrained` /
    `push_to_hub` / `config` from ship/pretrained.py."""

    accepts_loss_kwargs = False  # transformers.Trainer: forward's **inputs are the backbone's, not loss options

    def __init__(
        self,
        backbone: PreTrainedModel,
        heads: Mapping[str, HeadConfig] | None = None,
        weighting: str = "static",
        processor: Any = None,
    ):
        super().__init__()
        self.adapter = BackboneAdapter(backbone)
        self.heads = cast("HeadModules", nn.ModuleDict())  # a dict of heads, typed as such
        self.weighting = LossWeighting(weighting)
        self.max_length: int | None = None  # the token limit it was trained with (saved; predict's default)
        self.columns: dict[
            str, dict[str, str | None]
        ] = {}  # head -> the data columns it trained on (evaluate's default)
        # what the run that trained it knows (training/finish.py `card_info`): its save's card and training.json
        self.training_facts: dict[str, Any] | None = None
        self._given_processor = processor
        for name, config in (heads or {}).items():
            self.add_head(name, config)

    def __setattr__(self, name: str, value: Any) -> None:
        # `model.backbone = get_peft_model(model.backbone)` (LoRA) or `... .merge_and_unload()`
        # replaces the adapter's backbone, as PEFT users write it; nn.Module would register a stray copy
        if name == "backbone" and "adapter" in self.__dict__.get("_modules", {}):
            self.adapter.backbone = value
        else:
            super().__setattr__(name, value)

    @property
    def backbone(self) -> Backbone:
        return self.adapter.backbone

    def _processor(self) -> Any:
        """The tokenizer or image processor given (`set_processor`), else the one saved beside the
        backbone this model was loaded from, if any (read once)."""
        from headkit.backbone import load_processor

        if self._given_processor is None:
            source = getattr(self.backbone.config, "name_or_path", "")
            try:
                self._given_processor = load_processor(source) if source else None
            except (HeadkitError, OSError, ValueError):
                return None
        return self._given_processor

    def set_processor(self, processor: Any) -> None:
        """The tokenizer this model reads text with, handed to the heads that need one (a seq2seq
        head writes text with it). By default it is the one saved beside the backbone."""
        self._given_processor = processor
        for head in self.heads.values():
            if head.needs_processor:
                head.use_processor(processor)

    @property
    def hidden_size(self) -> int:
        return self.adapter.width

    @property
    def backbone_config(self):
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    @property
    def head_configs(self) -> dict[str, HeadConfig]:
        return {name: head.config for name, head in self.heads.items()}

    # ------------------------------------------------------------------------- heads

    def add_head(self, name: str, config: HeadConfig) -> HeadBase:
        """Attach a new head, checking that it fits this backbone (sizes, vocabulary). The head
        gets a copy of `config` with what the backbone decides filled in (input size, `auto`
        pooling, vocabulary): the caller's object is left as it was."""
        if not HEAD_NAME.match(name):
            raise HeadConfigError(f"head name '{name}' must be a Python identifier (letters, digits, _)")
        if name in self.heads:
            raise HeadConfigError(f"a head named '{name}' already exists; reset_head('{name}', config) replaces it")
        self._check_shared_encoding(name, config)
        head = build_head(self._resolved(name, config))
        head.attach(self.backbone)
        if head.needs_processor:
            processor = self._processor()
            if processor is None:
                raise HeadConfigError(
                    f"head '{name}' ({config.type}) needs the backbone's tokenizer, and none is saved beside it: "
                    "pass processor= to the model"
                )
            head.use_processor(processor)
        head.to(device=self.device, dtype=self.dtype)  # a backbone loaded in bf16 gets bf16 heads
        self.heads[name] = head
        self.weighting.add_head(name)
        return head

    def _check_shared_encoding(self, name: str, config: HeadConfig) -> None:
        """Heads that read the same kind of input read one encoding of it (one set of a long
        context's windows), so the settings it is made with (`task_options`) must agree."""
        inputs, options = head_class(config.type).codec.inputs, config.task_options()
        for other_name, other in self.heads.items():
            if other.codec.inputs == inputs and other.config.task_options() != options:
                raise HeadConfigError(
                    f"head '{name}' reads its data with {options or 'the default settings'} and head '{other_name}' "
                    f"with {other.config.task_options() or 'the default settings'}; heads of one model share one "
                    "encoding of their input: give them the same settings"
                )

    def _resolved(self, name: str, config: HeadConfig) -> HeadConfig:
        """A copy of `config` completed and checked against this backbone."""
        adapter = self.adapter
        if config.input_size not in (None, adapter.width):
            raise HeadMismatchError(
                f"head '{name}' expects input size {config.input_size}, but the backbone ({adapter.model_type}) "
                f"has hidden size {adapter.width}; rebuild the head with input_size={adapter.width} "
                "or use the backbone it was made for"
            )
        pooling = adapter.default_pooling if config.pooling == "auto" else config.pooling
        config = dataclasses.replace(config, pooling=pooling, input_size=adapter.width)
        adapter.layer_key(config.layer, name)  # a layer out of range fails here, naming the valid ones
        adapter.check_pooling(name, config.pooling, head_class(config.type).per_token)
        return config.fitted_to(self.backbone)

    def reset_head(self, name: str, config: HeadConfig | None = None) -> HeadBase | None:
        """Replace head `name` with a new one built from `config` (as timm's `reset_classifier`);
        `config=None` only removes it. Returns the new head."""
        if name in self.heads:
            self.remove_head(name)
        return None if config is None else self.add_head(name, config)

    def remove_head(self, name: str) -> None:
        if name not in self.heads:
            raise HeadConfigError(f"no head named '{name}'; this model has {list(self.heads)}")
        del self.heads[name]
        self.weighting.remove_head(name)

    def _names(self, heads: list[str] | None) -> list[str]:
        names = heads if heads is not None else list(self.heads)
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise HeadConfigError(f"unknown head(s) {unknown}; this model has {list(self.heads)}")
        return names

    def reads(self, name: str) -> tuple[int, str | None]:
        """What head `name` reads: its layer key, and its pooled feature's key (None: every position)."""
        head = self.heads[name]
        layer = self.adapter.layer_key(head.config.layer)
        return layer, None if head.per_token else feature_key(head.config.pooling, layer)

    def layers_read(self, heads: list[str] | None = None) -> set[int]:
        """The layer keys the chosen heads (all by default) read."""
        return {self.reads(n)[0] for n in self._names(heads)} or {LAST_LAYER}

    # ------------------------------------------------------------------------- forward

    def forward_features(self, inputs: Mapping[str, Tensor], heads: list[str] | None = None) -> Features:
        """One backbone pass: the features every chosen head (all by default) reads."""
        return self.adapter(dict(inputs), self.layers_read(heads))

    def forward_heads(
        self, features: Features, labels: Mapping[str, Tensor | None] | None = None, heads: list[str] | None = None
    ) -> MultiHeadOutput:
        """Run the chosen heads (all by default) on `features` (from `forward_features`, or the
        feature cache) and combine the losses of those with labels in the batch."""
        names, outputs = self._names(heads), {}
        for name in names:
            head, (layer, pooled) = self.heads[name], self.reads(name)
            if pooled is None:
                outputs[name] = head(features.at(layer), features.mask)
            else:
                outputs[name] = head.forward_pooled(self.adapter.pooled(features, head.config.pooling, layer))
        if labels is None:
            return MultiHeadOutput(outputs=outputs, mask=features.mask)
        losses, counts = {}, {}
        for name in names:
            y = labels.get(name)
            if y is None:
                continue
            outputs[name] = first_rows(self.heads[name], outputs[name], y.shape[0])
            loss, n = self.heads[name].loss(outputs[name], y.to(outputs[name].device), features.mask)
            if n > 0:
                losses[name], counts[name] = loss, n
        if losses:
            total = self.weighting(losses, {n: self.heads[n].config.loss_weight for n in losses})
        else:
            total = sum((zero_loss(o) for o in outputs.values()), start=zero_loss(features.mask.float()))
        # built in one go: ModelOutput orders its tuple by the fields set at construction, loss first
        return MultiHeadOutput(loss=total, outputs=outputs, losses=losses, counts=counts, mask=features.mask)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Mapping[str, Tensor | None] | None = None,
        heads: list[str] | None = None,
        token_type_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        input_values: Tensor | None = None,
        **inputs: Tensor,
    ) -> MultiHeadOutput:
        """Backbone + heads. The backbone's inputs are named (as in transformers models, so Trainer
        keeps them); a batch from headkit's collate may be passed whole (`model(**batch)`)."""
        inputs.pop("index", None)  # collate's example positions (for the feature cache), not a model input
        given = (input_ids, attention_mask, token_type_ids, pixel_values, input_values)
        inputs.update({k: v for k, v in zip(BACKBONE_INPUTS, given, strict=True) if v is not None})
        return self.forward_heads(self.forward_features(inputs, heads), labels=labels, heads=heads)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute the backbone's activations in the backward pass (less memory, about a third more
        time), as on a transformers model; non-reentrant by default, so a frozen or LoRA backbone
        needs no special care. The heads are small: they keep their activations."""
        checkpoint_activations(self.backbone, gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        backbone = self.backbone
        (getattr(backbone, "activation_checkpointing_disable", None) or backbone.gradient_checkpointing_disable)()

    @property
    def is_gradient_checkpointing(self) -> bool:
        backbone = self.backbone
        if hasattr(backbone, "is_activation_checkpointing"):  # transformers' name from 5.x on
            return bool(backbone.is_activation_checkpointing)
        return bool(getattr(backbone, "is_gradient_checkpointing", False))

    def trainable_top(self) -> HeadStack:
        """The heads and the loss weighting as one module that runs on `Features`: what the
        training loop hands DDP when the backbone is frozen and its features come from the cache."""
        return HeadStack(self)

    def tied_parameter_names(self) -> set[str]:
        """Head parameters that are the backbone's own tensors (not saved with the heads)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return {n for n, p in self.heads.named_parameters(remove_duplicate=False) if id(p) in backbone_ids}


class HeadStack(nn.Module):
    """A model's heads and loss weighting, without its backbone: `forward(features, labels)`.
    It shares the model's modules (no copy), so what trains here is what the model saves."""

    def __init__(self, model: MultiHeadModel) -> None:
        super().__init__()
        self.heads, self.weighting = model.heads, model.weighting
        self._forward_heads = model.forward_heads  # a bound method: not a submodule, no backbone in DDP's view

    def forward(
        self, features: Features, labels: Mapping[str, Tensor | None] | None = None, heads: list[str] | None = None
    ) -> MultiHeadOutput:
        return self._forward_heads(features, labels=labels, heads=heads)


# ----------------------------------------------------------------------------- loading saves (ship/load.py reads them)


def load_heads(directory: str | os.PathLike, backbone: Backbone, allow_other_weights: bool = False) -> MultiHeadModel:
    """The heads saved in `directory` on `backbone`, checked to fit it (`MultiHeadModel.from_heads`)."""
    return MultiHeadModel.from_heads(directory, backbone, allow_other_weights)


def load(
    directory: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> MultiHeadModel:
    """A full save written by `save` (backbone + heads), a run directory, or a hub id holding one
    (`org/name[@revision]`); anything else is an error (`MultiHeadModel.from_pretrained` also takes
    plain checkpoints, as backbones for new heads)."""
    from headkit.errors import CheckpointError
    from headkit.hub import local_path
    from headkit.ship.save import MANIFEST, find_save

    path = local_path(directory)
    found = find_save(path) or find_save(path, with_backbone=False)  # heads alone: from_save says what they need
    if found is None:
        raise CheckpointError(
            f"{directory} is not a headkit save (no {MANIFEST} with backbone/ there or in its model/): "
            "headkit.MultiHeadModel.from_pretrained(id, heads=...) puts new heads on a plain checkpoint"
        )
    return MultiHeadModel.from_save(found, trust_remote_code=trust_remote_code, dtype=dtype)
