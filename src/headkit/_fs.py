"""Writes that never leave a half-written file or directory under its final name.

Files go to a temporary name beside the target and are renamed into place; directories are
built in a staging directory beside the target and swapped in (`staged_dir`). Disk-full,
read-only and permission failures become one `OutputError` that says the old files are intact.
`cache_dir` says where headkit keeps what it derives (features, converted checkpoints).
Imports nothing from headkit but its errors, so any module can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from headkit.errors import OutputError


def write_failed(path: Path, error: OSError) -> OutputError:
    """A disk-full, read-only or permission failure, said plainly (the old file, if any, is intact)."""
    return OutputError(
        f"could not write {path}: {error.strerror or error}; free some disk space or choose a writable "
        "directory (nothing already there was changed)"
    )


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write (by name: a library that streams to
    disk, such as safetensors' `save_file`); when the block ends without error it is fsynced and
    renamed over `path`, so readers see the old file or the new one, never a mix, and no
    whole-file bytes object has to exist in memory. On error the temporary file is removed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "r+b") as f:  # a writable handle: fsync needs one on Windows
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, e) from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a mix."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj: Any, default: Callable[[Any], Any] | None = None) -> None:
    """`obj` as indented JSON, atomically; `default` turns values JSON lacks (paths, ...) into ones it has."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=default) + "\n").encode("utf-8"))


def replace_dir(staging: Path, directory: Path) -> None:
    """Move a fully written staging directory to `directory`, replacing any previous one."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(directory: Path) -> None:
    """Undo a `replace_dir` that was killed between its two renames (the old copy set aside)."""
    if directory.exists():
        return
    set_aside = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if set_aside:
        os.replace(set_aside[-1], directory)


@contextlib.contextmanager
def staged_dir(directory: Path) -> Iterator[Path]:
    """An empty directory beside `directory` to write into; when the block ends without error it
    replaces `directory` in one swap, otherwise it is removed and `directory` is left as it was."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    except OSError as e:
        raise write_failed(directory, e) from e
    try:
        yield staging
        replace_dir(staging, directory)
    except OutputError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise write_failed(directory, e) from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def cache_dir() -> Path:
    """headkit's own cache (converted configs, dequantised weights, feature caches)."""
    return Path(os.environ.get("HEADKIT_CACHE", Path.home() / ".cache" / "headkit"))
