"""Safetensors files written in place and read through a memory map, for tensors larger than RAM.

A dataset's per-token features or preprocessed images cannot be built in memory and handed to
`safetensors.torch.save`. `writing` lays out a valid safetensors file for tensors of known
dtypes and shapes (8-byte little-endian header length, the JSON header, then the tensors' bytes
back to back), reserves its disk space up front, and yields each tensor as a writable view of a
memory map, to fill a batch at a time. `mapped` gives them back as copy-on-write views: a read
touches only the rows it asks for, from disk or the page cache, and nothing written to a view
reaches the file. The files stay ordinary safetensors files (`safetensors.safe_open` reads them);
no pickle is involved. Imports nothing from headkit, so any module can use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

# torch dtype -> (safetensors' name, the numpy type of the same width that maps its bytes)
DTYPES: dict[torch.dtype, tuple[str, type]] = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.bfloat16: ("BF16", np.int16),  # numpy has no bfloat16: the bits, viewed as bfloat16 by torch
    torch.int64: ("I64", np.int64),
}
BY_NAME = {name: dtype for dtype, (name, _) in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # safetensors' own limit

Spec = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]  # name -> (dtype, shape)


class DamagedFile(ValueError):
    """The file is not a whole safetensors file of the tensors it claims to hold."""


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()


def _header(spec: Spec, metadata: Mapping[str, str]) -> tuple[bytes, int]:
    """The header bytes (length prefix included, padded so the data starts 8-byte aligned) and
    the data's size. Wider types come first, so that every tensor starts aligned to its type."""
    entries: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    start = 0
    for name in sorted(spec, key=lambda n: (-_nbytes(spec[n][0], (1,)), n)):
        dtype, shape = spec[name]
        end = start + _nbytes(dtype, shape)
        entries[name] = {"dtype": DTYPES[dtype][0], "shape": list(shape), "data_offsets": [start, end]}
        start = end
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text, start


def _reserve(f, size: int) -> None:
    """Give the open file `size` bytes of disk now: a full disk is an OSError here, not a crash
    (SIGBUS) at the first write through the map into a hole the disk cannot fill."""
    if size == 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(f.fileno(), 0, size)
            return
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
    f.seek(0, os.SEEK_END)  # no fallocate here (macOS, Windows, some file systems): write the zeros
    chunk = bytes(2**20)
    while (left := size - f.tell()) > 0:
        f.write(chunk[:left])


def _views(path: Path, mode: Literal["r+", "c"]) -> tuple[dict[str, Tensor], list[np.memmap], dict[str, str]]:
    """Each tensor of the file as a torch view of a numpy memmap (`mode` "r+": writable, "c":
    copy-on-write), the maps, and the metadata; a DamagedFile when the header does not describe
    the file exactly (sizes, offsets back to back, known dtypes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        (length,) = struct.unpack("<Q", prefix) if len(prefix) == 8 else (None,)
        if length is None or length > min(MAX_HEADER, size - 8):
            raise DamagedFile(f"{path}: no safetensors header")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DamagedFile(f"{path}: unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise DamagedFile(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors, maps, position = {}, [], 0
    try:
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            dtype, shape, (start, end) = BY_NAME[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
            if start != position or end - start != _nbytes(dtype, shape):
                raise DamagedFile(f"{path}: tensor {name} does not sit where the header says")
            position = end
            if end == start:
                tensors[name] = torch.empty(shape, dtype=dtype)
                continue
            array = np.memmap(path, DTYPES[dtype][1], mode, offset=8 + length + start, shape=shape)
            maps.append(array)
            tensors[name] = torch.from_numpy(array).view(dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(f"{path}: bad header or short file ({e})") from e
    if 8 + length + position != size:
        raise DamagedFile(f"{path}: {size} bytes where the header describes {8 + length + position}")
    return tensors, maps, metadata


@contextlib.contextmanager
def writing(path: Path, spec: Spec, metadata: Mapping[str, str] | None = None) -> Iterator[dict[str, Tensor]]:
    """Create `path` as a safetensors file of the tensors in `spec` (contents zero) and yield them
    as writable views; on leaving the block they are flushed to the file. The caller drops the
    views before renaming the file (Windows refuses to rename a mapped file)."""
    header, data_size = _header(spec, metadata or {})
    with open(path, "wb") as f:
        f.write(header)
        _reserve(f, len(header) + data_size)
    tensors, maps, _ = _views(path, "r+")
    yield tensors
    for array in maps:
        array.flush()


def mapped(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of a safetensors file as copy-on-write views of a memory map (nothing is read
    until used), and its metadata; a DamagedFile (a ValueError) when the file is not whole."""
    tensors, _, metadata = _views(path, "c")
    return tensors, metadata
