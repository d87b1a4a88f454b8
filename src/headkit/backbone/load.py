"""Load a resolved checkpoint into torch objects: its backbone, its processor, its input limit.

Only the backbone (`AutoModel`) is loaded, the task head dropped; weights the checkpoint lacks are
drawn from a fixed seed so every load is the same backbone. A GGUF model is dequantised once into
a cached safetensors copy, and a tokenizer with no pad token reuses one of its own tokens, so
batches can be padded without a new embedding. The backbone/ of a LoRA save that names its base
model instead of copying it loads as that base (`saved_base`), fetched by name and checked
against the digest the save recorded (backbone/named_base.py); a save's layout comes from
headkit.save_layout, so nothing here imports ship/.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from filelock import FileLock
from safetensors import SafetensorError
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from headkit._fs import cache_dir, staged_dir, write_failed
from headkit._typing import Backbone
from headkit.backbone.inspect import model_class
from headkit.backbone.named_base import base_name, check_base, named_base
from headkit.backbone.resolve import ModelSource, check_remote_code, gguf_cache_key, load_config, resolve_model
from headkit.errors import CheckpointError, HeadkitError, ModelNotFoundError
from headkit.extras import require
from headkit.save_layout import BACKBONE_DIR, MANIFEST, find_save, holds_weights

logger = logging.getLogger(__name__)


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


def dequantised(source: ModelSource) -> Path:
    """A safetensors copy of a GGUF model (config, weights, tokenizer), made on first use."""
    assert source.gguf_file is not None  # only GGUF sources get here
    key = gguf_cache_key(source)
    target = cache_dir() / "dequantised" / key
    if (target / "config.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(target, e) from e
    # Several processes may ask at once (the ranks of one run, a test session's workers): one
    # dequantises, the others wait for it and read its copy rather than each spending the time and
    # memory again.
    with FileLock(str(target.parent / f".{key}.lock")):
        if not (target / "config.json").is_file():
            _dequantise(source, target)
    return target


def _dequantise(source: ModelSource, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert source.gguf_file is not None
    gguf = source.path / source.gguf_file
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
    check_remote_code(source, trust_remote_code)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if names_its_base(source.path):
        # a LoRA save that holds its adapter and the name of its base model, not the base's weights
        backbone = saved_base(source.path.parent, trust_remote_code=trust_remote_code, dtype=dtype)
    else:
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
        remember_source(backbone, name, source)
    adapter = source.path.parent / "adapter"
    if merge_adapter and source.path.name == "backbone" and (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        backbone = cast(PreTrainedModel, PeftModel.from_pretrained(backbone, adapter).merge_and_unload())
        setattr(
            backbone, SOURCE, {"name_or_path": None, "why": f"the LoRA adapter of {source.path.parent} is merged in"}
        )
    return backbone


def names_its_base(path: Path) -> bool:
    """Whether `path` is the backbone/ of a headkit save that holds no weights (a LoRA save that
    names its base model instead)."""
    return path.name == "backbone" and (path.parent / MANIFEST).is_file() and not holds_weights(path)


def saved_base(
    directory: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """The backbone under a full save's adapter: backbone/'s own weights (a plain save, a LoRA save
    made before LoRA saves named their base, or one whose base could not be named), else the base
    model the save names (heads.json, or peft's adapter_config.json), loaded by its id and checked
    to be the one the adapter was trained on."""
    directory = Path(directory)
    folder = directory / BACKBONE_DIR
    if holds_weights(folder):
        return load_backbone(folder, trust_remote_code=trust_remote_code, merge_adapter=False, dtype=dtype)
    base = named_base(directory)
    if not isinstance(base, dict) or not isinstance(base.get("name_or_path"), str):
        raise CheckpointError(
            f"{folder} holds no weights, and {directory} names no base model for them (heads.json's "
            '"backbone" has no "base", adapter/adapter_config.json no base_model_name_or_path); the save is incomplete'
        )
    name = base_name(base)
    try:
        if names_its_base(resolve_model(name).path):
            raise CheckpointError(f"{directory} names as its base model {name}, another save without weights")
        backbone = load_backbone(name, trust_remote_code=trust_remote_code, dtype=dtype, merge_adapter=False)
    except ModelNotFoundError as e:
        raise CheckpointError(
            f"{directory} is a LoRA save: it holds the adapter, not a copy of the base model it adapts, "
            f"{name}, which could not be loaded ({e}). Make that model available again (the folder, the hub "
            "id in the Hugging Face cache, or the alias's package)"
        ) from e
    check_base(base, backbone, directory)
    # it reads as a load of backbone/ would: the processor saved there is the model's (model._processor)
    backbone.config.name_or_path = str(folder)
    return backbone


# The attribute `load_backbone` leaves on each backbone it loads: where its weights came from, so
# that a LoRA save can name that base model instead of copying it (ship/save.py), and a digest of
# the weights as loaded, so that the save can tell whether they changed since (then it copies them).
SOURCE = "headkit_source"
SNAPSHOT = re.compile(r"(?:^|/)models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})/?$")


def reference(name: str | os.PathLike, folder: Path | None = None) -> dict | None:
    """How to name the checkpoint `name` again later, as peft's adapter_config.json names a base
    model: `{"name_or_path", "revision"}` for an alias, a `timm:` name, a hub id (revision: the
    commit of `folder`, the snapshot it was read from, when given) or an existing local path (made
    absolute; a hub cache snapshot folder becomes its hub id and commit). None for what cannot be
    named: nothing, a path that does not exist, a headkit save or run (its backbone lives only in
    that save, which may be overwritten or removed). Asks no hub."""
    from headkit.backbone.resolve import ALIASES
    from headkit.hub import HUB_ID, HUB_REPO

    text = str(name or "")
    if text in ALIASES or text.startswith("timm:"):
        return {"name_or_path": text, "revision": None}
    path = Path(text).expanduser()
    hub = HUB_ID.match(text)
    if text and not path.exists() and hub and ".." not in text:
        snapshot = SNAPSHOT.search(Path(folder).as_posix()) if folder else None
        plain = HUB_REPO.match(text) is not None  # org/name[@revision], no GGUF file named after it
        return {
            "name_or_path": hub["repo"] if plain else text,
            "revision": snapshot["commit"] if snapshot else hub["revision"],
        }
    if not text or not path.exists():
        return None
    path = path.resolve()
    snapshot = SNAPSHOT.search(path.as_posix())
    if snapshot:
        return {"name_or_path": f"{snapshot['org']}/{snapshot['name']}", "revision": snapshot["commit"]}
    in_save = path.name == "backbone" and (path.parent / MANIFEST).is_file()
    if in_save or find_save(path, with_backbone=False) is not None:
        return None
    return {"name_or_path": str(path), "revision": None}


def remember_source(backbone: Backbone, name: str | os.PathLike, source: ModelSource) -> None:
    """Leave `SOURCE` on a freshly loaded backbone: how to load it again (`reference`), or why it
    cannot be, and the digest of its weights as loaded."""
    from headkit.backbone.fingerprint import digest_of, weights_samples

    named = reference(name, source.path)
    if named is None:
        saved = source.path.parent if source.path.name == "backbone" else source.path
        why = f"it was loaded from {source.path}, which names no checkpoint to load again"
        if find_save(saved, with_backbone=False) is not None:
            why = f"it was loaded from the headkit save {saved}, whose copy may be replaced or removed"
        named = {"name_or_path": None, "why": why}
    try:
        named["weights_sample_sha256"] = digest_of(weights_samples(backbone))
    except (RuntimeError, NotImplementedError):  # weights on the meta device or offloaded: nothing to compare later
        named["weights_sample_sha256"] = None
    setattr(backbone, SOURCE, named)


def load_processor(name: str | os.PathLike, trust_remote_code: bool = False):
    """The tokenizer (text), image processor (vision) or feature extractor (speech) that belongs
    to a checkpoint: the one for the input its model reads (a speech CTC checkpoint also ships a
    tokenizer for its labels, but its backbone reads audio)."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    source = resolve_model(name)
    path = dequantised(source) if source.gguf_file else source.path
    autos: list[Any] = [AutoTokenizer, AutoImageProcessor, AutoFeatureExtractor]
    if _main_input(source, trust_remote_code) in ("input_values", "input_features"):  # audio models
        autos = [AutoFeatureExtractor, AutoTokenizer]
    errors = []
    for auto in autos:
        try:
            processor = auto.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as e:
            errors.append(f"{auto.__name__}: {str(e)[:160]}")
            continue
        if auto is AutoTokenizer and not _has_tokenizer_files(path):
            # transformers 5 builds an empty tokenizer from the config alone (every word [UNK]): refused
            errors.append(f"AutoTokenizer: {path} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
            continue
        return with_pad_token(processor) if auto is AutoTokenizer else processor
    raise ModelNotFoundError(
        f"{source.path} has no tokenizer, image processor or feature extractor: " + "; ".join(errors)
    )


# What a saved tokenizer consists of (any one of them): its vocabulary, merges or model file, or its config.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "special_tokens_map.json")  # fmt: skip


def _has_tokenizer_files(path: Path) -> bool:
    """Whether a local checkpoint folder holds a tokenizer (a file that is not a folder: a hub repo
    or GGUF file, is answered by its own loader)."""
    if not Path(path).is_dir():
        return True
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES) or any(Path(path).glob("*.tiktoken"))


def _main_input(source: ModelSource, trust_remote_code: bool) -> str | None:
    """The input the checkpoint's model reads (input_ids, pixel_values, input_values), from its
    config alone; None when the config cannot tell."""
    if source.gguf_file or not (source.path / "config.json").is_file():
        return None
    try:
        return model_class(load_config(source.path, trust_remote_code=trust_remote_code)).main_input_name
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
