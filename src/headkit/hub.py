"""Hugging Face hub ids: `org/name[@revision]` -> the repository's files in the local HF cache
(downloaded when online; with HF_HUB_OFFLINE=1 only what the cache holds)."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from headkit.errors import ModelNotFoundError

# org/name[@revision] as the Hub spells repositories (a local path has more slashes, or starts with . / ~)
HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# what a checkpoint needs: configs, tokenizer files, safetensors weights (never pickled *.bin), model cards, code
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.md", "*.py", "*.gguf"]


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """A hub repository's files in the local Hugging Face cache (downloaded when online; with
    HF_HUB_OFFLINE=1 only what the cache already holds).

    Asked once per process for each repository, revision and cache: loading a model names it
    several times (config, tokenizer, weights), and online each ask is a round trip to the hub."""
    from huggingface_hub import constants

    return _snapshot(repo_id, revision, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=64)
def _snapshot(repo_id: str, revision: str | None, cache_dir: str, offline: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_FILES))
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
    """A local directory as it is; a hub id (org/name[@revision]) that is not one: its cached snapshot."""
    text = str(name)
    path = Path(text).expanduser()
    if not path.exists() and HUB_REPO.match(text):
        return hub_snapshot(*text.split("@", 1))
    return path


def is_hub_id(name: str) -> bool:
    """`org/name[@revision]` as the Hub spells repositories (a local path has more slashes or starts with one)."""
    return bool(HUB_REPO.match(name)) and ".." not in name
