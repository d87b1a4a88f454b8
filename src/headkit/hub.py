"""Hugging Face hub ids -> a repository's files in the local HF cache (downloaded when online; with
HF_HUB_OFFLINE=1 only what the cache holds):

    org/name[@revision]              a checkpoint: its small files, then the weights transformers loads
    org/name[@revision]:FILE.gguf    one GGUF file of a repository (GGUF repositories hold one per quantisation)

Only what loading reads is downloaded, as transformers itself does: a repository often holds several
weight variants (fp16 copies, TF / Flax / ONNX exports, every GGUF quantisation) that together are many
times the size of the one loaded."""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from headkit.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

# org/name[@revision] as the Hub spells repositories (a local path has more slashes, or starts with . / ~)
HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# ... with a GGUF file after a colon, which neither a repository name nor a git revision can hold
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?(?::(?P<gguf>[^:]+\.gguf))?$")
# Fetched first, whole, and all small: configs (the model's, generation, processor, sentence-transformers'
# modules.json and 1_Pooling/config.json), weight indexes, headkit's heads.json, tokenizer vocabularies,
# chat templates, model cards. *.py as well: a checkpoint with custom code needs its modeling files beside
# its config, and they run only when the user passes trust_remote_code=True (headkit refuses it otherwise).
SMALL_FILES = ["*.json", "*.txt", "*.model", "*.spm", "*.codes", "*.tiktoken", "*.jinja", "*.md", "*.py"]
# transformers' weight files in the order it looks for them (modeling_utils._get_resolved_checkpoint_files):
# safetensors first; a .bin only where there is none (transformers reads it with torch.load(weights_only=True):
# tensors, never pickled code)
CHECKPOINT_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # peft's, for a LoRA save's adapter/
# where a headkit save (heads.json, heads/NAME/, backbone/, adapter/) sits: the root, or a run's model/
SAVES = ("", "model/")


@dataclass(frozen=True)
class HubOptions:
    """How the hub is asked, as `from_pretrained(token=, cache_dir=, local_files_only=, force_download=)`
    say it: set for one load with `hub_options`, read by every download that load makes (config,
    tokenizer, weights, a LoRA save's base), so no function in between has to pass them on."""

    token: str | bool | None = None
    cache_dir: str | None = None
    local_files_only: bool = False
    force_download: bool = False


_OPTIONS: ContextVar[HubOptions | None] = ContextVar("headkit_hub_options", default=None)


@contextmanager
def hub_options(
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Iterator[None]:
    """Use these hub settings for the downloads made inside the block."""
    reset = _OPTIONS.set(HubOptions(token, str(cache_dir) if cache_dir else None, local_files_only, force_download))
    try:
        yield
    finally:
        _OPTIONS.reset(reset)


def hub_snapshot(repo_id: str, revision: str | None = None, gguf_file: str | None = None) -> Path:
    """The cached snapshot folder of a hub repository, holding its small files and the weights loading
    reads: `gguf_file` if given, else the checkpoint's (see `weight_files`). Downloaded when online;
    with HF_HUB_OFFLINE=1 (or the hub unreachable) the cache as an earlier download left it.

    Asked once per process for each repository, revision, file and cache: loading a model names it
    several times (config, tokenizer, weights), and online each ask is a round trip to the hub."""
    from huggingface_hub import constants

    options = _OPTIONS.get() or HubOptions()
    offline = constants.HF_HUB_OFFLINE or options.local_files_only
    args = (repo_id, revision, gguf_file, options.cache_dir or constants.HF_HUB_CACHE, offline, options.token)
    if options.force_download:
        return _snapshot.__wrapped__(*args, force=True)
    return _snapshot(*args)


@functools.lru_cache(maxsize=64)
def _snapshot(
    repo_id: str,
    revision: str | None,
    gguf_file: str | None,
    cache_dir: str,
    offline: bool,
    token: str | bool | None = None,
    force: bool = False,
) -> Path:
    """Two downloads: the small files (configs, weight indexes), then the weights they and the listing name."""
    with _hub_errors(repo_id, revision, cache_dir, offline):
        listing = None if offline else _repo_files(repo_id, revision, token)
        folder = _download(repo_id, revision, cache_dir, SMALL_FILES, cached_only=listing is None, token=token,
                           force=force)  # fmt: skip
        files = set(listing) if listing is not None else _cached_files(folder)
        weights = _wanted(repo_id, revision, gguf_file, files, folder, cached_only=listing is None)
        missing = [glob.escape(name) for name in weights if force or not (folder / name).is_file()]
        if listing is not None and missing:  # the commit the small files came from, not the branch's newest
            _download(repo_id, folder.name, cache_dir, missing, token=token, force=force)
    return folder


def _wanted(
    repo_id: str, revision: str | None, gguf_file: str | None, files: set[str], folder: Path, cached_only: bool
) -> list[str]:
    """The weight files to load: the GGUF file named, else the checkpoint's (a GGUF-only repository is refused)."""
    if gguf_file:
        return _gguf(repo_id, revision, files, gguf_file, cached_only)
    weights = weight_files(files, folder)
    if not weights:
        _refuse_gguf_only(repo_id, revision, files)
    return weights


def weight_files(files: set[str], folder: Path) -> list[str]:
    """The weight files loading reads from a repository holding `files` (its small files already in
    `folder`): a transformers checkpoint at the root, and a headkit save's heads, backbone and LoRA adapter."""
    wanted = _checkpoint_weights(files, folder, "")
    for save in SAVES:
        if f"{save}heads.json" in files:
            wanted += _first(files, save, ("heads.safetensors",))  # format 1: every head in one file
            wanted += _first(files, save, ("weighting.safetensors",))
            wanted += sorted(f for f in files if re.fullmatch(rf"{re.escape(save)}heads/[^/]+/model\.safetensors", f))
            wanted += _checkpoint_weights(files, folder, f"{save}backbone/")
            wanted += _first(files, f"{save}adapter/", ADAPTER_WEIGHTS)
    return wanted


def _checkpoint_weights(files: set[str], folder: Path, directory: str) -> list[str]:
    """What transformers loads from the checkpoint in `directory` ('' or 'x/'): the file its config
    names (`transformers_weights`), else the first of CHECKPOINT_WEIGHTS there; an index with its shards."""
    if f"{directory}config.json" not in files:
        return []
    named = _read_json(folder / directory / "config.json").get("transformers_weights")
    chosen = _first(files, directory, (named,) if isinstance(named, str) else CHECKPOINT_WEIGHTS)
    if chosen and chosen[0].endswith(".index.json"):
        weight_map = _read_json(folder / chosen[0]).get("weight_map", {})
        chosen += sorted({posixpath.join(directory, shard) for shard in weight_map.values()})
    return chosen


def _first(files: set[str], directory: str, names: Sequence[str]) -> list[str]:
    """The first of `names` in `directory` that the repository holds, as a list of one (or none)."""
    return next(([directory + name] for name in names if directory + name in files), [])


def _read_json(path: Path) -> dict:
    """A config or weights index, as a dict (empty when it holds something else)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{path} is not a readable JSON file ({e}); the download may be damaged") from e
    return data if isinstance(data, dict) else {}


def _gguf(repo_id: str, revision: str | None, files: set[str], gguf_file: str, cached_only: bool) -> list[str]:
    """[gguf_file], after checking the repository (or, offline, its cached snapshot) holds it."""
    if gguf_file not in files:
        where = " in the local cache" if cached_only else ""
        raise ModelNotFoundError(
            f"'{repo_id}' has no file '{gguf_file}'{where}; {_gguf_choices(repo_id, revision, files)}"
        )
    return [gguf_file]


def _refuse_gguf_only(repo_id: str, revision: str | None, files: set[str]) -> None:
    """Say which file to name when a repository has no checkpoint transformers loads, only GGUF files
    (one per quantisation, each the whole model: fetching all of them is never what was meant)."""
    if any(name.endswith(".gguf") for name in files):
        raise ModelNotFoundError(
            f"'{repo_id}' holds GGUF files, not a transformers checkpoint (model.safetensors or pytorch_model.bin): "
            f"name the one to load as org/name[@revision]:FILE.gguf; {_gguf_choices(repo_id, revision, files)}"
        )


def _gguf_choices(repo_id: str, revision: str | None, files: set[str]) -> str:
    """The repository's GGUF files, each spelled as the hub id that loads it."""
    spelled = [
        f"{repo_id}{f'@{revision}' if revision else ''}:{name}" for name in sorted(files) if name.endswith(".gguf")
    ]
    return f"its GGUF files: {', '.join(spelled)}" if spelled else "it holds no GGUF files"


def _repo_files(repo_id: str, revision: str | None, token: str | bool | None = None) -> list[str] | None:
    """The repository's file names, or None when the hub cannot be reached: then the cached snapshot
    serves, as huggingface_hub's snapshot_download itself falls back to it."""
    from huggingface_hub import list_repo_files
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return list_repo_files(repo_id, revision=revision, token=token)
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError):
        raise  # the same answer a download would get: _hub_errors words it
    except Exception as e:  # a dropped connection is the HTTP client's own error (requests', httpx'), not one class
        logger.warning(f"could not list the files of '{repo_id}' on the Hugging Face hub ({e}); using the local cache")
        return None


def _download(
    repo_id: str,
    revision: str | None,
    cache_dir: str,
    patterns: list[str],
    cached_only: bool = False,
    token: str | bool | None = None,
    force: bool = False,
) -> Path:
    """snapshot_download of the files matching `patterns`; with `cached_only` the cached snapshot as it is."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            local_files_only=cached_only,
            token=token,
            force_download=force and not cached_only,
        )
    except LocalEntryNotFoundError as e:
        # huggingface_hub 2.x's IncompleteSnapshotError: a cached snapshot lacking a file the patterns match (one
        # downloaded before SMALL_FILES asked for it); what it holds is what there is, as huggingface_hub < 2 gave
        snapshot = getattr(e, "snapshot_path", None)
        if snapshot is None:
            raise
        folder = snapshot
        logger.warning(f"the cached snapshot of '{repo_id}' lacks some small files; using it as it is ({e})")
    return Path(folder)


def _cached_files(folder: Path) -> set[str]:
    """The files of a cached snapshot, named as in the repository."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, cache_dir: str, offline: bool) -> Iterator[None]:
    """huggingface_hub's errors as one ModelNotFoundError line that says what to do."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"'{repo_id}' is neither a local directory nor a model on the Hugging Face hub (or the model is "
            "private or gated: log in with `hf auth login`)"
        ) from e
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else "the hub could not be reached"
        raise ModelNotFoundError(
            f"model '{repo_id}'{f' at revision {revision}' if revision else ''} is not a local directory and could "
            f"not be loaded from the Hugging Face hub: {why} ({cache_dir})"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(f"model '{repo_id}' has no revision '{revision}'") from e
    except (HfHubHTTPError, HFValidationError, OSError) as e:
        raise ModelNotFoundError(f"model '{repo_id}' could not be downloaded: {e}") from e


def local_path(name: str | os.PathLike) -> Path:
    """A local path as it is; a hub id that is not one (org/name[@revision]): its cached snapshot folder,
    or for org/name[@revision]:FILE.gguf that file in it."""
    text = str(name)
    path = Path(text).expanduser()
    hub = HUB_ID.match(text)
    if path.exists() or hub is None or ".." in text:
        return path
    folder = hub_snapshot(hub["repo"], hub["revision"], hub["gguf"])
    return folder / hub["gguf"] if hub["gguf"] else folder


def is_hub_id(name: str) -> bool:
    """`org/name[@revision]` as the Hub spells repositories (a local path has more slashes or starts with one)."""
    return bool(HUB_REPO.match(name)) and ".." not in name


def push_folder(
    write: Callable[[Path], Path], repo_id: str, private: bool | None, token: str | None, message: str
) -> str:
    """Write a folder with `write(path)` into a temporary directory and upload it as the hub
    repository `repo_id` (created if needed); returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write(Path(tmp) / "model")
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)
    return str(getattr(commit, "commit_url", commit))
