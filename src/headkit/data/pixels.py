"""Preprocessed images on disk, so that image data larger than RAM trains.

`pixel_store` preprocesses a data file's images a chunk at a time into a safetensors file under
headkit's cache: (N, C, H, W) fp32, exactly the values the processor makes in memory. The file is
keyed by the image files (path, size, modification time), the processor (class and settings),
the crop, and the versions of the libraries that decode and resize, so a later run on the same
files reuses it and a changed file makes another. It is read through a memory map, a row per
example as batches are built. `Pixels` picks rows out of one or more such stores by index:
subsets and joins copy (store, row) pairs, never pixels.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from headkit._fs import atomic_path, cache_dir
from headkit._tensorfile import DamagedFile, mapped, writing
from headkit.data.images import ImageFiles, preprocessed_chunks
from headkit.errors import OutputError

FORMAT = "headkit-pixels/1"  # in the key and the file: a store of another layout is never read
CHUNK = 256  # images decoded and preprocessed at a time


@dataclass(frozen=True, eq=False)
class Pixels:
    """The (C, H, W) pixel values of N examples, each a row of one of `stores`."""

    stores: tuple[Tensor, ...]  # each (M, C, H, W): mapped from a store file, or a tensor in memory
    names: tuple[str, ...]  # each store's identity: its cache key, or a hash of its pixels
    rows: np.ndarray  # (N, 2) int64: each example's store and row

    @classmethod
    def of(cls, tensor: Tensor, name: str | None = None) -> Pixels:
        """Every row of one (N, C, H, W) tensor (a store, or pixels made in memory: then named by
        a hash of their values)."""
        if name is None:
            name = "memory:" + hashlib.sha256(tensor.float().contiguous().numpy().tobytes()).hexdigest()
        rows = np.stack([np.zeros(len(tensor), np.int64), np.arange(len(tensor), dtype=np.int64)], axis=1)
        return cls((tensor,), (name,), rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tensor:
        """Example i's (C, H, W) pixels: a view of its store's row (read from disk when used)."""
        store, row = self.rows[i]
        return self.stores[int(store)][int(row)]

    def subset(self, indices: list[int] | np.ndarray) -> Pixels:
        return Pixels(self.stores, self.names, self.rows[np.asarray(indices, dtype=np.int64)].reshape(-1, 2))

    @staticmethod
    def join(parts: list[Pixels]) -> Pixels:
        """The examples of every part, in order; a store several parts share is held once."""
        names = list(dict.fromkeys(name for part in parts for name in part.names))
        stores = {name: store for part in parts for name, store in zip(part.names, part.stores, strict=True)}
        rows = []
        for part in parts:
            renumbered = np.array([names.index(name) for name in part.names], dtype=np.int64)
            rows.append(np.stack([renumbered[part.rows[:, 0]], part.rows[:, 1]], axis=1))
        joined = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
        return Pixels(tuple(stores[name] for name in names), tuple(names), joined)

    def digest(self) -> str:
        """An identity of these examples' pixels (the feature cache's key): the stores' identities
        and the rows taken, in order; cheap, as no pixel is read."""
        used = sorted(set(self.rows[:, 0].tolist()))
        head = json.dumps([self.names[s] for s in used]).encode()
        renumber = np.zeros(len(self.names), np.int64)
        renumber[used] = np.arange(len(used))
        rows = np.stack([renumber[self.rows[:, 0]], self.rows[:, 1]], axis=1) if len(self.rows) else self.rows
        return hashlib.sha256(head + np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def store_key(processor: Any, paths: list[Path], crop: bool) -> str:
    """What a store's pixels depend on: the files, the processor, the crop, and the versions of
    the libraries that decode and resize (a file rewritten in place changes its size or mtime)."""
    import PIL
    import transformers

    h = hashlib.sha256()
    settings = [FORMAT, type(processor).__qualname__, processor.to_json_string(), crop]
    h.update(json.dumps([*settings, PIL.__version__, transformers.__version__]).encode())
    for path in paths:
        stat = path.stat()
        h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _fill(path: Path, processor: Any, files: ImageFiles, crop: bool) -> None:
    """Preprocess `files` a chunk at a time into a new store file at `path` (laid out once the
    first chunk gives the pixels' shape)."""
    chunks = preprocessed_chunks(processor, files, crop, CHUNK)
    first = next(chunks)
    with writing(path, {"pixels": (torch.float32, (len(files), *first.shape[1:]))}, {"format": FORMAT}) as stored:
        done = 0
        for values in itertools.chain([first], chunks):
            stored["pixels"][done : done + len(values)] = values
            done += len(values)


def _opened(path: Path, count: int) -> Tensor | None:
    """The store's (count, C, H, W) fp32 pixels, mapped; None when it is missing, damaged, or
    not a store of `count` images in this format."""
    if not path.is_file():
        return None
    try:
        tensors, metadata = mapped(path)
    except (OSError, DamagedFile):
        return None
    pixels = tensors.get("pixels")
    if metadata.get("format") != FORMAT or len(tensors) != 1 or pixels is None:
        return None
    return pixels if pixels.dtype == torch.float32 and pixels.ndim == 4 and len(pixels) == count else None


def pixel_store(processor: Any, files: ImageFiles, crop: bool) -> Pixels:
    """The preprocessed pixels of `files`, from their store in headkit's cache, or made there now."""
    if not len(files):
        return Pixels.of(torch.zeros(0, 3, 1, 1))
    key = store_key(processor, files.paths, crop)
    path = cache_dir() / "pixels" / f"{key[:32]}.safetensors"
    pixels = _opened(path, len(files))
    if pixels is None:  # none yet, or a damaged one: made anew, never trusted
        path.unlink(missing_ok=True)
        with atomic_path(path) as tmp:
            _fill(tmp, processor, files, crop)
        if (pixels := _opened(path, len(files))) is None:
            raise OutputError(f"the image store {path} does not read back as written; is the disk failing?")
    return Pixels.of(pixels, key)
