"""Cached backbone features for frozen training: run the backbone once, train heads for seconds.

A frozen backbone in eval mode maps the same tokens to the same hidden states every epoch, so
they are computed once and stored as safetensors under the headkit cache, keyed by a hash of
the backbone's weights, the token ids, the feature kinds and the file format. Pooled heads need
one vector per example per pooling method and layer (`feature_key`): small, kept fp32 in RAM.
Per-token heads need every position of the layers they read, stored flat with offsets: that can
outgrow RAM, so the file is laid out before the backbone pass (the offsets give its size), each
batch's rows go straight into it through a memory map, and later reads touch only the rows a
batch asks for. They are stored in bfloat16: half the bytes of fp32 and fp32's range (an LLM's
hidden states can pass fp16's 65504), at 8 significant bits, which heads trained on them do not
notice (benchmarks/token_feature_store.py). Only the layers some head reads are stored. A later
run on the same backbone and data (another seed, other head settings) reuses the file.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from headkit._fs import atomic_path, cache_dir
from headkit._tensorfile import DamagedFile, Spec, mapped, writing
from headkit.adapter import LAST_LAYER, Features, split_feature_key
from headkit.data import MAX_TOKENS
from headkit.data.batching import EncodedData, collate, data_batches, model_inputs
from headkit.errors import OutputError

# A headkit.model.MultiHeadModel, not imported: model.py reaches this module (model.evaluate,
# through training/evaluate.py), and nothing model.py imports imports headkit.model back.
Model = Any

FORMAT = "headkit-features/3"  # in the cache key and the file: a file of another layout is never read
TOKEN_DTYPE = torch.bfloat16  # per-token features; pooled ones stay fp32


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor in the state dict: a changed weight means a different cache."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tokens_digest(data: EncodedData) -> str:
    if data.pixels is not None:  # image data: the pixels are the input
        return data.pixels.digest()
    # segment ids too: "a [SEP] b" as one text and the pair (a, b) have the same ids, not the same features
    more = [ids for rows in data.more_ids or [] for ids in rows] + [t for rows in data.more_types or [] for t in rows]
    sequences = data.input_ids + more + (getattr(data, "token_type_ids", None) or [])
    lengths = np.array([len(x) for x in sequences], dtype=np.int64)
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in sequences]) if len(data) else lengths
    return hashlib.sha256(lengths.tobytes() + flat.tobytes()).hexdigest()


@dataclass
class FeatureCache:
    """Backbone outputs for every example of one dataset."""

    pooled: dict[str, Tensor]  # feature_key(pooling, layer) -> (N, H) fp32; R rows per example: (R x N, H)
    tokens: dict[int, Tensor]  # layer key -> (sum of lengths, H) TOKEN_DTYPE, mapped from the cache file
    offsets: Tensor  # (N + 1,) start of each example in `tokens`

    @property
    def rows_per_example(self) -> int:
        """R rows per example (pairs, choices): rows kN..(k+1)N-1 of `pooled` are row k of examples 0..N-1."""
        n = len(self.offsets) - 1
        return max((v.shape[0] // n for v in self.pooled.values()), default=1) if n > 0 else 1

    def batch(self, indices: Tensor) -> Features:
        """The heads' `Features` for the given examples: hidden states by layer (padded, fp32),
        their mask, and pooled vectors (for B preference pairs: 2B rows, the chosen ones first, as
        collate lays them out; B examples of R choices: R x B). Only the rows of these examples are
        read from the per-token store."""
        if self.rows_per_example > 1:
            n = len(self.offsets) - 1
            rows = torch.cat([indices + k * n for k in range(self.rows_per_example)])
            return Features(
                torch.ones(len(rows), 1, dtype=torch.long), pooled={m: v[rows] for m, v in self.pooled.items()}
            )
        pooled = {m: v[indices] for m, v in self.pooled.items()}
        sizes = self.offsets[indices + 1] - self.offsets[indices]
        lengths = sizes.tolist()
        mask = (torch.arange(max(lengths)) < sizes[:, None]).long()
        if not self.tokens:
            return Features(mask, pooled=pooled)
        hidden = {}
        for layer, tokens in self.tokens.items():
            padded = torch.zeros(len(lengths), max(lengths), tokens.shape[1])
            for i, (start, n) in enumerate(zip(self.offsets[indices].tolist(), lengths, strict=True)):
                padded[i, :n] = tokens[start : start + n]
            hidden[layer] = padded
        return Features(mask, hidden, pooled)


def features_needed(model: Model) -> tuple[set[str], set[int]]:
    """What the heads read: the pooled features (`feature_key`s) of pooled heads, and the layers
    whose every position some per-token head reads."""
    reads = [model.reads(name) for name in model.heads]
    return {key for _, key in reads if key is not None}, {layer for layer, key in reads if key is None}


def _stored_name(layer: int) -> str:
    return "tokens" if layer == LAST_LAYER else f"tokens@{layer}"


def _offsets(data: EncodedData) -> Tensor:
    """(N + 1,): where each example's positions start in the flat per-token store, and the total."""
    offsets = torch.zeros(len(data) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(data.lengths(), dtype=torch.long).cumsum(0)
    return offsets


def _spec(data: EncodedData, poolings: set[str], token_layers: set[int], hidden_size: int) -> Spec:
    """What a cache file of this data holds: its tensors' dtypes and shapes."""
    rows = data.rows_per_example * len(data)
    spec: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {"offsets": (torch.int64, (len(data) + 1,))}
    spec |= {f"pooled.{key}": (torch.float32, (rows, hidden_size)) for key in poolings}
    total = sum(data.lengths())
    return spec | {_stored_name(layer): (TOKEN_DTYPE, (total, hidden_size)) for layer in token_layers}


def _backbone_pass(
    model: Model,
    data: EncodedData,
    poolings: set[str],
    tokens: dict[int, Tensor],
    batch_size: int,
    pad_id: int,
    progress: bool,
    shard: tuple[int, int],
    max_tokens: int | None = MAX_TOKENS,
) -> dict[str, Tensor]:
    """Run the backbone over `data` once (eval mode, inference mode): every position of each layer
    in `tokens` is written into that (sum of lengths, H) store, in RAM or mapped from a file, a
    batch at a time; returns the pooled vectors of `poolings` (fp32, in RAM). Batches are
    prediction's (`data_batches`: similar lengths, at most `batch_size` examples and `max_tokens`
    padded tokens).

    Inference mode (no autograd bookkeeping at all: no_grad still tracks views and version
    counters) holds only around the batches: the stores are made outside it and each batch's
    outputs are copied into them, so the heads later train on ordinary tensors (an inference
    tensor cannot be saved for backward).

    `shard` = (index, count): compute only every count-th batch from the index-th on, leaving
    zeros elsewhere, so that several processes each compute a share and a sum joins them."""
    was_training = model.training
    model.eval()
    n, device = len(data), model.device
    per_example = data.rows_per_example  # pairs: the chosen text, then (at n + i) the rejected; choices alike
    pooled = {key: torch.zeros(per_example * n, model.hidden_size) for key in poolings}  # outside: see above
    lengths = data.lengths()
    starts = _offsets(data).tolist()
    layers = {split_feature_key(key)[1] for key in poolings} | set(tokens)
    index, count = shard
    batches = data_batches(data, max_tokens, batch_size)[index::count]
    with torch.inference_mode():
        for indices in tqdm(batches, desc="backbone features", unit="batch", disable=not progress, leave=False):
            batch = collate([data[i] for i in indices], pad_id, {}, {})
            features = model.adapter(model_inputs(batch, device), layers or {LAST_LAYER})
            rows = [k * n + i for k in range(per_example) for i in indices]
            for key in poolings:
                method, layer = split_feature_key(key)
                pooled[key][rows] = model.adapter.pool(features.at(layer).float(), features.mask, method).cpu()
            for layer, store in tokens.items():
                states = features.at(layer).to(store.dtype).cpu()
                for row, i in enumerate(indices):
                    store[starts[i] : starts[i] + lengths[i]] = states[row, : lengths[i]]
    model.train(was_training)
    return pooled


def compute_features(
    model: Model,
    data: EncodedData,
    poolings: set[str],
    token_layers: set[int],
    batch_size: int = 64,
    pad_id: int = 0,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    max_tokens: int | None = MAX_TOKENS,
) -> FeatureCache:
    """The features the heads need, held in RAM: `poolings` (feature keys, fp32) and every position
    of `token_layers` (TOKEN_DTYPE), for data that fits in memory (few-shot sets, the shares that
    several processes sum). `cached_features` writes large data's per-token rows to disk instead.
    `shard`, `batch_size` and `max_tokens`: see `_backbone_pass`."""
    offsets = _offsets(data)
    tokens = {layer: torch.zeros(int(offsets[-1]), model.hidden_size, dtype=TOKEN_DTYPE) for layer in token_layers}
    pooled = _backbone_pass(model, data, poolings, tokens, batch_size, pad_id, progress, shard, max_tokens)
    return FeatureCache(pooled, tokens, offsets)


def _fill(path: Path, model: Model, data: EncodedData, needs: tuple[set[str], set[int]], **run) -> None:
    """Compute the features straight into a new cache file at `path`: the file is laid out first,
    the per-token rows go into it as each batch is done, the pooled vectors at the end."""
    poolings, token_layers = needs
    with writing(path, _spec(data, poolings, token_layers, model.hidden_size), {"format": FORMAT}) as stored:
        tokens = {layer: stored[_stored_name(layer)] for layer in token_layers}
        pooled = _backbone_pass(model, data, poolings, tokens, **run)
        for key, vectors in pooled.items():
            stored[f"pooled.{key}"].copy_(vectors)
        stored["offsets"].copy_(_offsets(data))


def _save(path: Path, features: FeatureCache, data: EncodedData, hidden_size: int) -> None:
    """Write features held in RAM to a new cache file at `path`."""
    with writing(path, _spec(data, set(features.pooled), set(features.tokens), hidden_size), {"format": FORMAT}) as f:
        f["offsets"].copy_(features.offsets)
        for key, vectors in features.pooled.items():
            f[f"pooled.{key}"].copy_(vectors)
        for layer, tokens in features.tokens.items():
            f[_stored_name(layer)].copy_(tokens)


def _load(path: Path, data: EncodedData, needs: tuple[set[str], set[int]], hidden_size: int) -> FeatureCache | None:
    """The cache file's features (pooled ones copied to RAM, per-token ones mapped), or None when
    it is damaged or does not hold exactly what this data needs in this format."""
    poolings, token_layers = needs
    try:
        tensors, metadata = mapped(path)
    except (OSError, DamagedFile):
        return None
    spec = _spec(data, poolings, token_layers, hidden_size)
    fits = metadata.get("format") == FORMAT and tensors.keys() == spec.keys()
    if not fits or any((t.dtype, tuple(t.shape)) != spec[name] for name, t in tensors.items()):
        return None
    if not torch.equal(tensors["offsets"], _offsets(data)):
        return None
    pooled = {key: tensors[f"pooled.{key}"].clone() for key in poolings}
    return FeatureCache(pooled, {layer: tensors[_stored_name(layer)] for layer in token_layers}, _offsets(data))


def cached_features(
    model: Model,
    data: EncodedData,
    poolings: set[str],
    token_layers: set[int],
    batch_size: int = 64,
    pad_id: int = 0,
    root: Path | None = None,
    progress: bool = True,
    backbone_digest: str | None = None,
    shard: tuple[int, int] = (0, 1),
    total: Callable[[Tensor], Tensor] | None = None,
    write: bool = True,
    max_tokens: int | None = MAX_TOKENS,
) -> tuple[FeatureCache, bool]:
    """Load the features from the cache, or compute and store them. Returns (features, was_cached).

    `backbone_digest` (from `weights_digest`) saves re-hashing the weights when a caller asks for
    several datasets' features from the same backbone. Under several processes each computes its
    `shard`, `total` sums the shares across processes (every process then holds all features),
    and only the process with `write` stores the file. `batch_size` and `max_tokens` bound the
    backbone pass's batches (`_backbone_pass`); the features do not depend on them.
    """
    kinds = ",".join(sorted(poolings) + sorted(_stored_name(layer) for layer in token_layers))
    digest = backbone_digest or weights_digest(model.backbone)
    key = hashlib.sha256(f"{FORMAT}|{TOKEN_DTYPE}|{digest}|{tokens_digest(data)}|{kinds}".encode()).hexdigest()
    path = (root or cache_dir() / "features") / f"{key[:32]}.safetensors"
    needs = (poolings, token_layers)
    run: dict[str, Any] = {"batch_size": batch_size, "pad_id": pad_id, "progress": progress, "max_tokens": max_tokens}
    if path.is_file():
        if (features := _load(path, data, needs, model.hidden_size)) is not None:
            return features, True
        path.unlink(missing_ok=True)  # a damaged or foreign cache file is recomputed, never trusted
    if total is None and write:  # one process: the backbone's output goes straight to the file
        with atomic_path(path) as tmp:
            _fill(tmp, model, data, needs, shard=shard, **run)
        if (features := _load(path, data, needs, model.hidden_size)) is None:
            raise OutputError(f"the feature cache {path} does not read back as written; is the disk failing?")
        return features, False
    # Several processes sum their shares (zeros outside their own batches), which needs every row in
    # each one's RAM (a file they all write would need a file system they all see); rank 0 then saves
    # the file, which later runs map.
    features = compute_features(model, data, poolings, token_layers, shard=shard, **run)
    if total is not None:
        pooled = {m: total(v) for m, v in features.pooled.items()}
        tokens = {layer: total(v.float()).to(v.dtype) for layer, v in features.tokens.items()}  # x + 0: exact
        features = FeatureCache(pooled, tokens, features.offsets)
    if write:
        with atomic_path(path) as tmp:
            _save(tmp, features, data, model.hidden_size)
    return features, False


# ----------------------------------------------------------------------------- streams


class _Appended:
    """A tensor grown a block of rows at a time in a file, then memory-mapped (read-only, copy on
    write): features of a stream, whose length is known only once it has passed."""

    def __init__(self, directory: Path, name: str, dtype: torch.dtype, width: int):
        self.path, self.dtype, self.width, self.rows = directory / f"{name}.bin", dtype, width, 0
        self.file = open(self.path, "wb")  # noqa: SIM115 (closed in `mapped`)

    def append(self, block: Tensor) -> None:
        block = block.to(self.dtype).contiguous()
        raw = block.view(torch.int16) if self.dtype == torch.bfloat16 else block  # numpy has no bfloat16
        self.file.write(raw.numpy().tobytes())
        self.rows += len(block)

    def mapped(self) -> Tensor:
        self.file.close()
        if self.rows == 0:
            return torch.empty(0, self.width, dtype=self.dtype)
        numpy_dtype = np.int16 if self.dtype == torch.bfloat16 else np.float32
        array = np.memmap(self.path, numpy_dtype, "c", shape=(self.rows, self.width))
        return torch.from_numpy(array).view(self.dtype)


def stream_features(
    model: Model,
    chunks: Iterable[EncodedData],
    poolings: set[str],
    token_layers: set[int],
    batch_size: int = 64,
    pad_id: int = 0,
    progress: bool = True,
    root: Path | None = None,
) -> tuple[FeatureCache, list[dict[str, Any]]]:
    """The features of a stream's examples, computed in one pass as its encoded chunks arrive.

    Each chunk's features are appended to files under the cache directory (pooled fp32, per-token
    TOKEN_DTYPE, the formats of `cached_features`) and its token ids dropped, so memory holds one
    chunk; the files are memory-mapped when the pass ends and unlinked at once (the maps keep them
    readable; the disk space returns when the run ends). Not kept across runs: a stream cannot be
    hashed before it is read. Returns the cache (its offsets give each example's length) and each
    chunk's labels."""
    directory = Path(tempfile.mkdtemp(prefix="stream-", dir=_made(root or cache_dir() / "features")))
    pooled = {key: _Appended(directory, f"pooled.{key}", torch.float32, model.hidden_size) for key in poolings}
    tokens = {
        layer: _Appended(directory, _stored_name(layer), TOKEN_DTYPE, model.hidden_size) for layer in token_layers
    }
    labels, lengths = [], []
    try:
        for chunk in tqdm(chunks, desc="backbone features (stream)", unit="chunk", disable=not progress, leave=False):
            features = compute_features(model, chunk, poolings, token_layers, batch_size, pad_id, progress=False)
            for key, store in pooled.items():
                store.append(features.pooled[key])
            for layer, store in tokens.items():
                store.append(features.tokens[layer])
            lengths += chunk.lengths()
            labels.append(chunk.labels)
        if not lengths:
            raise OutputError("the stream gave no examples to compute features for")
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
        cache = FeatureCache(
            {key: store.mapped() for key, store in pooled.items()},
            {layer: store.mapped() for layer, store in tokens.items()},
            offsets,
        )
    finally:
        for store in [*pooled.values(), *tokens.values()]:
            store.file.close()
        shutil.rmtree(directory, ignore_errors=True)  # POSIX: the maps stay readable until dropped
    return cache, labels


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory
