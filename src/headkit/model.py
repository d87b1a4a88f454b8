"""MultiHeadModel: one shared backbone, named heads, one backbone forward for all of them.

    inputs -> backbone -> hidden (B, T, H), mask (B, T) -> each head -> outputs, losses
    (a CNN's (B, C, H, W) feature map enters as H*W positions: see headkit.backbone_outputs)
    total loss = LossWeighting({head: loss}) over the heads that have labels in the batch

`forward_features` and `forward_heads` are split (timm style) so frozen training can run the
heads on cached backbone features without touching the backbone at all.

A head reads the last hidden state unless its config names another `layer` (probing, or a head
on an intermediate layer): then the backbone is asked for its hidden states once, and every head
takes the layer it reads. Layers are keyed -1 (the last hidden state) or by their index into the
backbone's `hidden_states` (0 = the embeddings); pooled features are keyed `feature_key(method, layer)`.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from headkit.backbone import declared_pooling, load_backbone
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
from headkit.errors import CheckpointError, HeadConfigError, HeadkitError, HeadMismatchError
from headkit.heads import Head, HeadConfig, build_head, config_from_dict, head_class
from headkit.heads.base import zero_loss
from headkit.heads.pooling import pool
from headkit.hub import local_path, push_folder
from headkit.ship.save import (
    ADAPTER_DIR,
    BACKBONE_DIR,
    MANIFEST,
    WEIGHTS,
    check_fingerprint,
    find_save,
    head_state,
    read_manifest,
    read_weights,
    save,
)
from headkit.weighting import LossWeighting

HEAD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LAST_LAYER = -1
Hidden = Tensor | Mapping[int, Tensor]  # the last hidden state, or hidden states by layer key


def _configs(heads: Mapping[str, HeadConfig | dict[str, Any]] | None) -> dict[str, HeadConfig]:
    """Head configs given as dataclasses or as their heads.json dicts."""
    return {h: c if isinstance(c, HeadConfig) else config_from_dict(c) for h, c in (heads or {}).items()}


def feature_key(method: str, layer: int = LAST_LAYER) -> str:
    """The name of one pooled feature: 'mean' on the last hidden state, 'mean@3' on hidden state 3."""
    return method if layer == LAST_LAYER else f"{method}@{layer}"


def split_feature_key(key: str) -> tuple[str, int]:
    method, _, layer = key.partition("@")
    return method, int(layer) if layer else LAST_LAYER


def at_layer(hidden: Hidden | None, layer: int) -> Tensor | None:
    """The hidden states of one layer key from what a forward (or the feature cache) produced."""
    if hidden is None or not isinstance(hidden, Mapping):
        if layer != LAST_LAYER and hidden is not None:
            raise HeadConfigError(f"hidden state {layer} was not computed; run the heads through forward_layers")
        return hidden
    return hidden[layer]


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
        for name in ("outputs", "losses", "counts"):
            if getattr(self, name) is None:
                setattr(self, name, {})
        super().__post_init__()


class MultiHeadModel(nn.Module):
    """A backbone plus a `ModuleDict` of heads; see the module docstring."""

    accepts_loss_kwargs = False  # transformers.Trainer: forward's **inputs are the backbone's, not loss options

    def __init__(
        self,
        backbone: PreTrainedModel,
        heads: Mapping[str, HeadConfig] | None = None,
        weighting: str = "static",
        processor: Any = None,
    ):
        super().__init__()
        hidden_size(backbone)  # refuse a backbone the heads cannot read, before anything else
        self.backbone = backbone
        # what `auto` pooling means here: the checkpoint's own sentence pooling, else its family's
        source = getattr(backbone.config, "name_or_path", "") or ""
        self.default_pooling = (declared_pooling(source) if source else None) or family_pooling(backbone)
        self.heads = nn.ModuleDict()
        self.weighting = LossWeighting(weighting)
        self.max_length: int | None = None  # the token limit it was trained with (saved; predict's default)
        self._given_processor = processor
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
        revision: str | None = None,
    ) -> MultiHeadModel:
        """A model from a local directory or a Hugging Face hub id (`revision`: a branch, tag or commit).

        A headkit save or run (local or on the hub) loads with its heads (and `heads`, if given, are
        added to them); any other checkpoint gives its backbone (its own head is dropped) with `heads`.
        """
        name = f"{model}@{revision}" if revision else str(model)
        saved = find_save(local_path(name))
        if saved is not None:
            loaded = load(saved, trust_remote_code=trust_remote_code, dtype=dtype)
            for head, config in _configs(heads).items():
                loaded.add_head(head, config)
            return loaded.eval()
        return cls.on_backbone(name, heads, weighting, trust_remote_code, dtype)

    @classmethod
    def on_backbone(
        cls,
        model: str | os.PathLike,
        heads: Mapping[str, HeadConfig | dict[str, Any]] | None = None,
        weighting: str = "static",
        trust_remote_code: bool = False,
        dtype: torch.dtype | None = None,
        processor: Any = None,
    ) -> MultiHeadModel:
        """The backbone of any checkpoint with new `heads`: a checkpoint's own head, and a headkit
        save's heads, are left behind (training starts here, e.g. after continued pretraining).
        `processor`: the tokenizer, when the caller has it (default: the one saved with the backbone)."""
        backbone = load_backbone(model, trust_remote_code=trust_remote_code, dtype=dtype)
        return cls(backbone, _configs(heads), weighting=weighting, processor=processor).eval()  # as transformers loads

    def save_pretrained(self, directory: str | os.PathLike, processor: Any = None, card: dict | None = None) -> Path:
        """The full save `from_pretrained` reads back with its heads (`headkit.save`): backbone/ with
        the processor (by default the one the backbone was loaded with), the heads, a model card."""
        return save(self, directory, processor=processor if processor is not None else self._processor(), card=card)

    def push_to_hub(
        self,
        repo_id: str,
        processor: Any = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload headkit model",
        card: dict | None = None,
    ) -> str:
        """Save to a temporary folder and upload it as the hub repository `repo_id` (created if
        needed); `MultiHeadModel.from_pretrained(repo_id)` loads it back. Returns the commit URL."""
        card = {**(card or {}), "repo_id": repo_id}
        return push_folder(lambda d: self.save_pretrained(d, processor, card), repo_id, private, token, commit_message)

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
        return hidden_size(self.backbone)

    @property
    def backbone_config(self):
        return self.backbone.config

    @property
    def head_configs(self) -> dict[str, HeadConfig]:
        return {name: head.config for name, head in self.heads.items()}

    def add_head(self, name: str, config: HeadConfig) -> Head:
        """Attach a new head, checking that it fits this backbone (sizes, vocabulary). The head
        keeps a copy of `config` with what the backbone decides filled in (input size, `auto`
        pooling, vocabulary): the caller's object is left as it was."""
        if not HEAD_NAME.match(name):
            raise HeadConfigError(f"head name '{name}' must be a Python identifier (letters, digits, _)")
        if name in self.heads:
            raise HeadConfigError(f"a head named '{name}' already exists; remove_head('{name}') first")
        config = copy.deepcopy(config)
        if config.pooling == "auto":
            config.pooling = self.default_pooling
        if config.input_size is None:
            config.input_size = self.hidden_size
        elif config.input_size != self.hidden_size:
            raise HeadMismatchError(
                f"head '{name}' expects input size {config.input_size}, but the backbone "
                f"({self.backbone.config.model_type}) has hidden size {self.hidden_size}; "
                f"rebuild the head with input_size={self.hidden_size} or use the backbone it was made for"
            )
        self.layer_key(config.layer, name)  # a layer out of range fails here, naming the valid ones
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

    def remove_head(self, name: str) -> None:
        del self.heads[name]
        self.weighting.remove_head(name)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's floating-point dtype (what its first floating parameter holds)."""
        return floating_dtype(self.backbone)

    @property
    def backbone_pooler(self) -> nn.Module | None:
        """The backbone's own pooling layer (BERT's tanh pooler), seen through a PEFT wrapper."""
        if is_feature_map(self.backbone):
            return None  # a CNN's pooler pools the (B, C, H, W) map, which heads never see
        base = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        return getattr(base, "pooler", None)

    def pool(self, hidden: Tensor, mask: Tensor, method: str) -> Tensor:
        """(B, T, H) -> (B, H) with a pooling method, the backbone's own `pooler` included."""
        if method == "pooler":  # it reads position 0: give it each text's first real token (left padding)
            return self.backbone_pooler(pool(hidden, mask, "cls").unsqueeze(1))
        return pool(hidden, mask, method)

    def hidden_mask(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """A (B, T) mask over hidden positions, whatever the modality (`backbone_outputs.features_mask`)."""
        return features_mask(self.backbone, hidden, attention_mask)

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.backbone.config, "is_encoder_decoder", False))

    @property
    def num_layers(self) -> int | None:
        """Transformer layers of the backbone (its hidden_states hold this many + 1, the embeddings first)."""
        n = getattr(self.backbone.config, "num_hidden_layers", None)
        return n if isinstance(n, int) and n > 0 else None

    def layer_key(self, layer: int, head: str = "") -> int:
        """-1 for the last hidden state, else the index into the backbone's hidden_states (0 = embeddings).

        `layer` counts like a Python index over the hidden states: 0 is the embeddings, n the
        last of n layers, -1 the last, -2 the one below it."""
        if layer == LAST_LAYER:
            return LAST_LAYER
        n = self.num_layers
        who = f"head '{head}'" if head else "a head"
        if n is None:
            raise HeadMismatchError(
                f"{who} reads layer {layer}, but the {self.backbone.config.model_type} backbone does not say how many "
                "layers it has (no num_hidden_layers); use layer -1, the last hidden state"
            )
        if not -(n + 1) <= layer <= n:
            raise HeadConfigError(
                f"{who} reads layer {layer}, but the {self.backbone.config.model_type} backbone has {n} layers: "
                f"use 0..{n} (0 = the embeddings, {n} = the last) or -{n + 1}..-1"
            )
        index = layer % (n + 1)
        return LAST_LAYER if index == n else index

    def layers_read(self, heads: list[str] | None = None) -> set[int]:
        """The layer keys the chosen heads (all by default) read."""
        names = heads if heads is not None else list(self.heads)
        known = [n for n in names if n in self.heads]  # forward_heads names any unknown one
        return {self.layer_key(self.heads[n].config.layer) for n in known} or {LAST_LAYER}

    def forward_layers(self, layers: set[int], **inputs: Tensor) -> tuple[dict[int, Tensor], Tensor]:
        """Run the backbone once: hidden states (B, T, H) of each layer key asked for, and their mask (B, T).

        Layers below the last are taken from `output_hidden_states`, asked for only when needed."""
        below = sorted(layer for layer in layers if layer != LAST_LAYER)
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
        return hidden, self.hidden_mask(hidden[LAST_LAYER], given_mask)

    def forward_features(self, **inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Run the backbone once: the last hidden state (B, T, H) and its mask (B, T)."""
        hidden, mask = self.forward_layers({LAST_LAYER}, **inputs)
        return hidden[LAST_LAYER], mask

    def forward_heads(
        self,
        hidden: Hidden | None,
        mask: Tensor,
        labels: Mapping[str, Tensor | None] | None = None,
        heads: list[str] | None = None,
        pooled: Mapping[str, Tensor] | None = None,
    ) -> MultiHeadOutput:
        """Run the chosen heads (all by default) on backbone features and combine their losses.

        `hidden` is the last hidden state, or hidden states by layer key (`forward_layers`).
        `pooled` maps a `feature_key` to precomputed (B, H) vectors (the feature cache); pooled
        heads then skip pooling, and `hidden` may be None when no per-token head runs.
        """
        names = heads if heads is not None else list(self.heads)
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise HeadConfigError(f"unknown head(s) {unknown}; this model has {list(self.heads)}")
        outputs = {}
        pooled = dict(pooled or {})  # each (pooling, layer) is computed once, however many heads use it
        for name in names:
            head = self.heads[name]
            layer = self.layer_key(head.config.layer)
            if head.per_token:
                outputs[name] = head(at_layer(hidden, layer), mask)
                continue
            key = feature_key(head.config.pooling, layer)
            if key not in pooled:
                pooled[key] = self.pool(at_layer(hidden, layer), mask, head.config.pooling)
            outputs[name] = head.forward_pooled(pooled[key])
        if labels is None:
            return MultiHeadOutput(outputs=outputs, mask=mask)
        losses, counts = {}, {}
        for name in names:
            y = labels.get(name)
            if y is None:
                continue
            loss, n = self.heads[name].loss(outputs[name], y.to(outputs[name].device), mask)
            if n > 0:
                losses[name], counts[name] = loss, n
        if losses:
            total = self.weighting(losses, {n: self.heads[n].config.loss_weight for n in losses})
        else:
            total = sum((zero_loss(o) for o in outputs.values()), start=zero_loss(mask.float()))
        # built in one go: ModelOutput orders its tuple by the fields set at construction, loss first
        return MultiHeadOutput(loss=total, outputs=outputs, losses=losses, counts=counts, mask=mask)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Mapping[str, Tensor | None] | None = None,
        heads: list[str] | None = None,
        features: tuple[Hidden | None, Tensor, Mapping[str, Tensor]] | None = None,
        token_type_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        input_values: Tensor | None = None,
        **inputs: Tensor,
    ) -> MultiHeadOutput:
        """Backbone + heads; with `features` = (hidden, mask, pooled) from the feature cache the
        backbone is skipped. Going through `forward` either way keeps DDP's gradient sync intact.
        The backbone's inputs are named (as in transformers models, so Trainer keeps them); a
        batch from headkit's collate may be passed whole (`model(**batch)`)."""
        inputs.pop("index", None)  # collate's example positions (for the feature cache), not a model input
        named = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "pixel_values": pixel_values,
            "input_values": input_values,
        }
        inputs.update({k: v for k, v in named.items() if v is not None})
        if features is not None:
            hidden, mask, pooled = features
            return self.forward_heads(hidden, mask, labels=labels, heads=heads, pooled=pooled)
        hidden, mask = self.forward_layers(self.layers_read(heads), **inputs)
        return self.forward_heads(hidden, mask, labels=labels, heads=heads)

    def tied_parameter_names(self) -> set[str]:
        """Head parameters that are the backbone's own tensors (not saved with the heads)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return {n for n, p in self.heads.named_parameters(remove_duplicate=False) if id(p) in backbone_ids}


# ----------------------------------------------------------------------------- loading saves (ship/save.py writes them)


def load_heads(directory: str | os.PathLike, backbone: nn.Module, allow_other_weights: bool = False) -> MultiHeadModel:
    """Attach the heads saved in `directory` to `backbone`, after checking they fit it: the same
    architecture, and the same weights as the backbone they were trained with (`allow_other_weights`:
    load them onto other weights anyway, with a warning)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    check_fingerprint(manifest["backbone"], backbone, allow_other_weights)
    state = read_weights(directory / WEIGHTS, manifest.get("weights_sha256"))
    model = MultiHeadModel(backbone, _configs(manifest["heads"]), weighting=manifest.get("weighting", "static"))
    expected = set(head_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(
            f"{directory / WEIGHTS} does not fit {MANIFEST}: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    heads_state = {k[len("heads.") :]: v for k, v in state.items() if k.startswith("heads.")}
    weighting_state = {k[len("weighting.") :]: v for k, v in state.items() if k.startswith("weighting.")}
    model.heads.load_state_dict(heads_state, strict=False)  # tied weights come from the backbone
    model.weighting.load_state_dict(weighting_state)
    model.max_length = manifest.get("max_length")
    return model.eval()  # as transformers' from_pretrained: no live dropout


def load(
    directory: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> MultiHeadModel:
    """Load a full save written by `save` (backbone + heads)."""
    directory = Path(directory)
    read_manifest(directory)  # fail on a non-checkpoint before loading a large backbone
    if not (directory / BACKBONE_DIR / "config.json").is_file():
        raise CheckpointError(
            f"{directory} has heads but no {BACKBONE_DIR}/ directory; it is a head-only checkpoint: "
            "load it with headkit.load_heads(dir, backbone)"
        )
    backbone = load_backbone(
        directory / BACKBONE_DIR, trust_remote_code=trust_remote_code, merge_adapter=False, dtype=dtype
    )
    if (directory / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        backbone = PeftModel.from_pretrained(backbone, directory / ADAPTER_DIR)
    return load_heads(directory, backbone)
