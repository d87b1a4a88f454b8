"""Find, load and take apart Hugging Face checkpoints.

A `transformers` task model is `base_model_prefix` (the backbone: embeddings + layers) plus
whatever else hangs off the top-level module (the head: `cls`, `lm_head`, `classifier`,
`qa_outputs`, ...). `inspect_model` builds the model on the meta device, so it reads only the
config and never loads or allocates weights, then reports that split.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from headkit.backbone.resolve import load_config, resolve_model
from headkit.backbone_outputs import width_or_none
from headkit.errors import CheckpointError
from headkit.hub import is_hub_id
from headkit.save_layout import BACKBONE_DIR, MANIFEST, read_manifest

# sentence-transformers' Pooling config flags -> headkit's pooling methods (the modes with no exact
# counterpart, mean_sqrt_len and weightedmean, leave the choice to the family's convention)
SENTENCE_TRANSFORMERS_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
}


def declared_pooling(directory: str | os.PathLike) -> str | None:
    """The pooling a checkpoint says its sentence embeddings use: a sentence-transformers model's
    (modules.json -> its Pooling module's config.json), or, for the backbone/ of a headkit save,
    the one that save recorded; None when it declares none (or several at once)."""
    if not Path(directory).is_dir() and is_hub_id(str(directory)):  # a model loaded by hub id: its cached files
        directory = _cached_snapshot(str(directory), "modules.json") or directory
    directory = Path(directory)
    if directory.name == BACKBONE_DIR and (directory.parent / MANIFEST).is_file():
        try:
            return read_manifest(directory.parent)["backbone"].get("pooling")
        except CheckpointError:
            return None
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
        module = next(m for m in modules if str(m.get("type", "")).endswith(".Pooling"))
        flags = json.loads((directory / module.get("path", "") / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, AttributeError, TypeError):
        return None
    on = [key for key, value in flags.items() if key.startswith("pooling_mode") and value]
    return SENTENCE_TRANSFORMERS_POOLING.get(on[0]) if len(on) == 1 else None


def _cached_snapshot(repo: str, filename: str) -> Path | None:
    """The folder of the locally cached hub snapshot that holds `filename`, without a network call."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
    return Path(found).parent if isinstance(found, str) else None


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The transformers class a config names (its first known architecture), else its AutoModel
    class; shared with load.py, which reads the class's main input to pick a processor."""
    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            return cls
    # the lazy mapping gives the model class (its stub says a pair of classes)
    return AutoModel._model_mapping[type(config)]  # type: ignore[return-value]


def split_backbone(model: PreTrainedModel) -> tuple[nn.Module, dict[str, nn.Module]]:
    """Return (backbone, {name: head module}) of a transformers model.

    The backbone is the `base_model_prefix` submodule; everything else with parameters at the
    top level is the head. A bare backbone (`BertModel`) returns an empty head dict. A timm network
    (`TimmWrapper*`) keeps its classifier inside itself, under the name timm's config gives it.
    """
    base = getattr(model, model.base_model_prefix, None)
    if not isinstance(base, nn.Module):
        output = model.get_output_embeddings() if getattr(model.config, "is_encoder_decoder", False) else None
        if output is not None:  # T5: encoder, decoder and shared embeddings sit inline; the LM output is the head
            return model, {n: m for n, m in model.named_children() if m is output}
        return model, {}
    heads = {
        name: module
        for name, module in model.named_children()
        if name != model.base_model_prefix and any(True for _ in module.parameters())
    }
    if not heads and getattr(base, "num_classes", None) and hasattr(base, "get_classifier"):
        classifier = getattr(base, "pretrained_cfg", {}).get("classifier", "classifier")
        heads = {f"{model.base_model_prefix}.{classifier}": base.get_classifier()}  # type: ignore[operator]  # timm's
    return base, heads


def _output_layer(model: PreTrainedModel, heads: dict[str, nn.Module]) -> tuple[str, nn.Linear] | None:
    """The layer that produces the head's output: the output embeddings, else the last Linear."""
    out_emb = model.get_output_embeddings()
    last: tuple[str, nn.Linear] | None = None
    for head_name, head in heads.items():
        for sub_name, module in head.named_modules():
            if isinstance(module, nn.Linear):
                full = f"{head_name}.{sub_name}" if sub_name else head_name
                if module is out_emb:
                    return full, module
                last = (full, module)
    return last


def _head_kind(architecture: str, has_head: bool) -> str:
    """What a transformers class's head is: a headkit head type where one matches, else the
    transformers family name (e.g. sequence-classification)."""
    if not has_head:
        return "none"
    from headkit.heads import REGISTRY

    for head_type, (_, head_cls) in REGISTRY.items():  # heads that say which transformers classes carry them
        carriers = head_cls.export.architectures
        if carriers and architecture.endswith(carriers):
            return head_type
    suffixes = {  # transformers heads with no single headkit counterpart
        "ForSequenceClassification": "sequence-classification",
        "ForQuestionAnswering": "question-answering",
        "ForImageClassification": "image-classification",
        "ForPreTraining": "pretraining",
        "ForMultipleChoice": "multiple-choice",
    }
    return next((kind for suffix, kind in suffixes.items() if architecture.endswith(suffix)), "other")


def _tied(model: PreTrainedModel) -> bool:
    out_emb = model.get_output_embeddings()
    try:
        in_emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return False
    weight_in = getattr(in_emb, "weight", None)
    return out_emb is not None and weight_in is not None and out_emb.weight is weight_in


def _unique_numel(params) -> int:
    seen: dict[int, int] = {}
    for p in params:
        seen[id(p)] = p.numel()
    return sum(seen.values())


@dataclass
class ModelReport:
    """What `headkit inspect` shows: where the backbone ends and the head starts."""

    model: str
    path: str
    architecture: str
    model_type: str
    backbone_class: str
    backbone_module: str
    head_kind: str
    head_modules: dict[str, str] = field(default_factory=dict)
    output_layer: str | None = None
    output_in: int | None = None
    output_out: int | None = None
    tied_embeddings: bool = False
    params_total: int = 0
    params_backbone: int = 0
    params_head: int = 0
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_model(name: str | os.PathLike, trust_remote_code: bool = False) -> ModelReport:
    """Describe a checkpoint's backbone/head split from its config alone (no weights are read)."""
    source = resolve_model(name)
    config = load_config(name, trust_remote_code=trust_remote_code)
    cls = model_class(config)
    with torch.device("meta"):
        model = cls(config)
    backbone, heads = split_backbone(model)
    has_head = bool(heads)
    output = _output_layer(model, heads) if has_head else None
    inline = backbone is model  # the head sits inside the model the backbone is (T5's lm_head)
    inside = {
        id(p) for n, h in heads.items() if inline or n.startswith(f"{model.base_model_prefix}.") for p in h.parameters()
    }
    if inline:  # a head tied to the input embeddings still leaves them to the backbone
        inside -= {id(p) for n, m in model.named_children() if n not in heads for p in m.parameters()}
    backbone_ids = {id(p) for p in backbone.parameters()} - inside  # a timm classifier sits inside the network
    head_params = [p for p in model.parameters() if id(p) not in backbone_ids]
    return ModelReport(
        model=str(name),
        path=str(source.path / source.gguf_file) if source.gguf_file else str(source.path),
        architecture=cls.__name__,
        model_type=config.model_type,
        backbone_class=type(backbone).__name__,
        backbone_module=("(encoder + decoder)" if inline else model.base_model_prefix) if has_head else "(whole model)",
        head_kind=_head_kind(cls.__name__, has_head),
        head_modules={n: type(m).__name__ for n, m in heads.items()},
        output_layer=output[0] if output else None,
        output_in=output[1].in_features if output else None,
        output_out=output[1].out_features if output else None,
        tied_embeddings=has_head and _tied(model),
        params_total=_unique_numel(model.parameters()),
        params_backbone=_unique_numel(p for p in backbone.parameters() if id(p) in backbone_ids),
        params_head=_unique_numel(head_params),
        hidden_size=width_or_none(backbone),
        num_layers=getattr(config, "num_hidden_layers", None),
        vocab_size=getattr(config, "vocab_size", None),
    )
