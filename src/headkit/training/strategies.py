"""Adaptation strategies: which parameters train, and how the backbone is run.

frozen     the backbone never runs backward; its features are computed once and cached
partial:K  embeddings and the bottom K layers frozen, the rest of the backbone trains
full       everything trains
lora       low-rank adapters (peft) on the backbone's linear layers; base weights frozen
lp-ft      linear probing then fine-tuning (Kumar et al. 2022): heads on frozen cached
           features first, then everything, which distorts pretrained features less
fewshot    SetFit-style: contrastive tuning of the backbone on pairs of the few labelled
           examples, then heads solved on its frozen features (fewshot.py)

The names and the option defaults each brings are in strategy_defaults.py (no torch there).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from headkit._typing import Backbone
from headkit.adapter import checkpoint_activations
from headkit.errors import HeadConfigError
from headkit.training.config import strategy_filled
from headkit.training.strategy_defaults import STRATEGY_NAMES

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from headkit.model import MultiHeadModel
    from headkit.training.config import TrainConfig


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one rule for what trains."""

    name: str
    epochs: int
    cached: bool  # heads on cached backbone features (the backbone never runs)
    frozen: bool = False  # the backbone does not train (and runs in eval mode when not cached)
    # epochs that run whatever the validation scores do (min_steps' epochs): no early stop before
    min_epochs: int = 0
    # write the resumable checkpoint every this many epochs (min_steps' many small epochs: as often
    # as the phase's own epochs would, not a full optimizer state every few steps)
    checkpoint_every: int = 1


BackboneRule = Literal["none", "all", "top", "adapters"]


@dataclass(frozen=True)
class Strategy:
    """What trains, as data: the training code reads these fields and never a strategy's name."""

    name: str  # frozen | partial | full | lora | lp-ft | fewshot (for messages and metrics)
    backbone: BackboneRule  # what trains in the backbone: nothing, everything, the layers above
    #                         `frozen_layers`, or LoRA adapters (the base weights stay frozen)
    frozen_layers: int = 0  # partial:K
    probe_first: bool = False  # lp-ft: heads alone on frozen cached features, then everything
    closed_form: bool = False  # fewshot: contrastive pairs, then heads solved by scikit-learn

    @property
    def adapters(self) -> bool:
        return self.backbone == "adapters"

    def phases(self, config: Any) -> list[Phase]:
        """The phases of a run under this strategy (`config`: epochs, lp_epochs, feature_cache)."""
        if self.backbone == "none":
            return [Phase("heads", config.epochs, cached=config.feature_cache, frozen=True)]
        if self.probe_first:
            return [
                Phase("probe", config.lp_epochs, cached=config.feature_cache, frozen=True),
                Phase("finetune", config.epochs, cached=False),
            ]
        return [Phase("train", config.epochs, cached=False)]

    def set_trainable(self, model: MultiHeadModel, phase: Phase) -> None:
        """Which weights train in this phase: the heads, then the backbone's rule.

        The backbone's rule is applied last on purpose: a head tied to the input embeddings (an
        LM decoder) shares that tensor with the backbone, and must stay frozen whenever the
        backbone is (frozen, partial, LoRA).
        """
        for p in [*model.heads.parameters(), *model.weighting.parameters()]:
            p.requires_grad_(True)
        rule = "none" if phase.frozen else self.backbone
        set_backbone_trainable(model.backbone, rule in ("all", "top"))
        if rule == "top":
            freeze_bottom(model.backbone, self.frozen_layers)
        elif rule == "adapters":  # only the adapters train inside the backbone
            for name, p in model.backbone.named_parameters():
                p.requires_grad_("lora_" in name)


STRATEGIES = {
    "frozen": Strategy("frozen", backbone="none"),
    "full": Strategy("full", backbone="all"),
    "lora": Strategy("lora", backbone="adapters"),
    "lp-ft": Strategy("lp-ft", backbone="all", probe_first=True),
    "fewshot": Strategy("fewshot", backbone="none", closed_form=True),
}


def parse_strategy(text: str) -> Strategy:
    match = re.fullmatch(r"partial:(\d+)", text)
    if match:
        return Strategy("partial", backbone="top", frozen_layers=int(match.group(1)))
    if text in STRATEGIES:
        return STRATEGIES[text]
    raise HeadConfigError(f"unknown strategy '{text}'; choose one of {list(STRATEGY_NAMES)} (e.g. partial:4)")


def layer_stack(backbone: Backbone) -> tuple[str, nn.ModuleList]:
    """The backbone's list of transformer layers (encoder.layer, layers, h, ...), found generically."""
    n_layers = getattr(backbone.config, "num_hidden_layers", None)
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and n_layers:
            return name, module
    raise HeadConfigError(f"could not find the layer stack of {type(backbone).__name__}; use full or frozen")


def freeze_bottom(backbone: Backbone, k: int) -> None:
    """Freeze everything that runs before layer k: embeddings and layers 0..k-1."""
    prefix, layers = layer_stack(backbone)
    if not 0 <= k <= len(layers):
        raise HeadConfigError(f"partial:{k} but the backbone has {len(layers)} layers; choose 0..{len(layers)}")
    layer_names = {f"{prefix}.{i}." for i in range(len(layers))}
    seen_layers = False
    for name, param in backbone.named_parameters():
        in_layer = next((p for p in layer_names if name.startswith(p)), None)
        if in_layer is not None:
            seen_layers = True
            param.requires_grad_(int(in_layer[len(prefix) + 1 : -1]) >= k)
        else:
            # before the stack: embeddings (frozen); after it: final norm / pooler (trainable)
            param.requires_grad_(seen_layers)


def set_backbone_trainable(backbone: Backbone, trainable: bool) -> None:
    for param in backbone.parameters():
        param.requires_grad_(trainable)


def apply_lora(
    backbone: Backbone, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: list[str] | None = None
) -> nn.Module:
    """Wrap the backbone with peft LoRA adapters; only adapter weights train in the backbone.

    With `target_modules=None` peft picks the modules its authors chose for this model type
    (query/value for BERT, q_proj/v_proj for Llama); ["all-linear"] adapts every linear layer.
    """
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if target_modules == ["all-linear"] else target_modules  # peft's keyword for every Linear
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    try:
        with warnings.catch_warnings():  # peft 0.21 calls an API transformers 5 deprecated: not the user's to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(backbone, config)
    except ValueError as e:
        raise HeadConfigError(f"LoRA could not be applied: {e}. Set lora_targets to this model's linear layers") from e


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) unique parameters."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel, for every strategy and on every device.

    torch only picks the fused or for-each kernel by itself on CUDA; on CPU it falls back to a
    Python loop over tensors, 3.6x slower per step for MiniLM (measured: 0.109 s vs 0.030 s) —
    a tenth of a few-shot step on 2 cores. transformers' Trainer (hence setfit) defaults to the
    fused kernel too. torch ships it for cpu, cuda, mps and xpu.
    """
    return torch.optim.AdamW(params, fused=True, **kwargs)


def enable_gradient_checkpointing(backbone: Backbone, strategy: Strategy) -> None:
    """Trade compute for memory in a backbone that trains: its layers' activations are recomputed
    in the backward pass (non-reentrant, so frozen inputs and LoRA need no special care)."""
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise HeadConfigError(
            f"--gradient_checkpointing: {type(backbone).__name__} does not support gradient checkpointing"
        )
    if strategy.backbone == "none":
        logger.info(
            f"note: --gradient_checkpointing has no effect with strategy {strategy.name} (nothing to recompute)"
        )
        return
    checkpoint_activations(backbone)


def make_optimizer(model: MultiHeadModel, config: TrainConfig, strategy: Strategy) -> torch.optim.AdamW:
    """AdamW with one group per (learning rate, weight decay): heads at `lr` (times their type's
    `lr_scale`; a type's `pretrained_lr` instead where `lr` is the strategy's), the backbone at its own
    (also a backbone weight a head shares: tied embeddings, the decoder of an encoder-decoder)."""
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    head_ids = {id(p) for p in [*model.heads.parameters(), *model.weighting.parameters()]} - backbone_ids
    assert config.lr is not None  # TrainConfig.__post_init__ filled the defaults
    strategy_lr = strategy_filled(config).get("lr") == config.lr  # not an --lr set by hand
    head_lr = {
        id(p): (head.pretrained_lr if strategy_lr and head.pretrained_lr else config.lr) * head.lr_scale
        for head in model.heads.values()
        for p in head.parameters()
    }  # heads/base.py
    backbone_lr = config.lora_lr if strategy.adapters else config.backbone_lr
    assert backbone_lr is not None  # TrainConfig.__post_init__ filled the defaults
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for p in {id(p): p for p in model.parameters()}.values():
        if not p.requires_grad:
            continue
        lr = head_lr.get(id(p), config.lr) if id(p) in head_ids else backbone_lr
        decay = config.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in sorted(groups.items())]
    return adamw(params)
