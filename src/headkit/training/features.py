"""Cached backbone features for frozen training: run the backbone once, train heads for seconds.

A frozen backbone in eval mode maps the same tokens to the same hidden states every epoch, so
they are computed once and stored as safetensors under the headkit cache, keyed by a hash of
the backbone's weights, the token ids and the feature kinds. Pooled heads need one vector per
example per pooling method and layer (`feature_key`); per-token heads need every position of
the layers they read, stored flat with offsets. Only the layers some head reads are stored.
A later run on the same backbone and data (another seed, other head settings) reuses the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import Tensor
from tqdm.auto import tqdm

from headkit._fs import atomic_write_bytes, cache_dir
from headkit.data.batching import EncodedData, LengthGroupedBatches, collate, model_inputs
from headkit.model import LAST_LAYER, MultiHeadModel, feature_key, split_feature_key


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor in the state dict: a changed weight means a different cache."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tokens_digest(data: EncodedData) -> str:
    if data.pixels is not None:  # image data: the pixels are the input
        return hashlib.sha256(data.pixels.float().contiguous().numpy().tobytes()).hexdigest()
    sequences = data.input_ids + (data.pair_ids or [])
    lengths = np.array([len(x) for x in sequences], dtype=np.int64)
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in sequences]) if len(data) else lengths
    return hashlib.sha256(lengths.tobytes() + flat.tobytes()).hexdigest()


@dataclass
class FeatureCache:
    """Backbone outputs for every example of one dataset."""

    pooled: dict[str, Tensor]  # feature_key(pooling, layer) -> (N, H); preference pairs: (2N, H)
    tokens: dict[int, Tensor]  # layer key -> (sum of lengths, H), for the layers per-token heads read
    offsets: Tensor  # (N + 1,) start of each example in `tokens`

    @property
    def pairs(self) -> bool:
        """Preference pairs: rows N..2N-1 of `pooled` are the rejected texts of examples 0..N-1."""
        n = len(self.offsets) - 1
        return any(v.shape[0] == 2 * n for v in self.pooled.values()) and n > 0

    def batch(self, indices: Tensor) -> tuple[dict[int, Tensor] | None, Tensor, dict[str, Tensor]]:
        """Hidden states by layer (padded), their mask, and pooled vectors for the given examples
        (for B preference pairs: 2B rows, the chosen ones first, as collate lays them out)."""
        if self.pairs:
            rows = torch.cat([indices, indices + len(self.offsets) - 1])
            return None, torch.ones(len(rows), 1, dtype=torch.long), {m: v[rows] for m, v in self.pooled.items()}
        pooled = {m: v[indices] for m, v in self.pooled.items()}
        lengths = (self.offsets[indices + 1] - self.offsets[indices]).tolist()
        mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        if not self.tokens:
            return None, mask, pooled
        hidden = {}
        for layer, tokens in self.tokens.items():
            padded = tokens.new_zeros(len(lengths), max(lengths), tokens.shape[1])
            for i, (start, n) in enumerate(zip(self.offsets[indices].tolist(), lengths, strict=True)):
                padded[i, :n] = tokens[start : start + n]
            hidden[layer] = padded
        return hidden, mask, pooled


def features_needed(model: MultiHeadModel) -> tuple[set[str], set[int]]:
    """What the heads read: the pooled features (`feature_key`s) of pooled heads, and the layers
    whose every position some per-token head reads."""
    pooled = {
        feature_key(h.config.pooling, model.layer_key(h.config.layer)) for h in model.heads.values() if not h.per_token
    }
    token_layers = {model.layer_key(h.config.layer) for h in model.heads.values() if h.per_token}
    return pooled, token_layers


def _stored_name(layer: int) -> str:
    return "tokens" if layer == LAST_LAYER else f"tokens@{layer}"


@torch.no_grad()
def compute_features(
    model: MultiHeadModel,
    data: EncodedData,
    poolings: set[str],
    token_layers: set[int],
    batch_size: int = 64,
    pad_id: int = 0,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> FeatureCache:
    """Run the backbone over `data` once (eval mode, no grad) and keep what the heads need:
    `poolings` (feature keys) and every position of `token_layers`.

    `shard` = (index, count): compute only every count-th batch from the index-th on, leaving
    zeros elsewhere, so that several processes each compute a share and a sum joins them."""
    was_training = model.training
    model.eval()
    n, device = len(data), model.device
    hidden_size = model.hidden_size
    pairs = data.pair_ids is not None  # 2 rows per example: the chosen text, then (at n + i) the rejected
    pooled = {key: torch.zeros(2 * n if pairs else n, hidden_size) for key in poolings}
    lengths = torch.tensor(data.lengths())
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    tokens = {layer: torch.zeros(int(offsets[-1]), hidden_size) for layer in token_layers}
    layers = {split_feature_key(key)[1] for key in poolings} | set(token_layers)
    index, count = shard
    batches = LengthGroupedBatches(data.lengths(), batch_size, seed=0, shuffle=False).batches()[index::count]
    for indices in tqdm(batches, desc="backbone features", unit="batch", disable=not progress, leave=False):
        batch = collate([data[i] for i in indices], pad_id, {}, {})
        hidden, mask = model.forward_layers(layers or {LAST_LAYER}, **model_inputs(batch, device))
        rows = indices + [n + i for i in indices] if pairs else indices
        for key in poolings:
            method, layer = split_feature_key(key)
            pooled[key][rows] = model.pool(hidden[layer].float(), mask, method).cpu()
        for layer, store in tokens.items():
            states = hidden[layer].float()
            for row, i in enumerate(indices):
                store[offsets[i] : offsets[i + 1]] = states[row, : int(lengths[i])].cpu()
    model.train(was_training)
    return FeatureCache(pooled, tokens, offsets)


def cached_features(
    model: MultiHeadModel,
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
) -> tuple[FeatureCache, bool]:
    """Load the features from the cache, or compute and store them. Returns (features, was_cached).

    `backbone_digest` (from `weights_digest`) saves re-hashing the weights when a caller asks for
    several datasets' features from the same backbone. Under several processes each computes its
    `shard`, `total` sums the shares across processes (every process then holds all features),
    and only the process with `write` stores the file.
    """
    kinds = ",".join(sorted(poolings) + sorted(_stored_name(layer) for layer in token_layers))
    digest = backbone_digest or weights_digest(model.backbone)
    key = hashlib.sha256(f"{digest}|{tokens_digest(data)}|{kinds}".encode()).hexdigest()
    path = (root or cache_dir() / "features") / f"{key[:32]}.safetensors"
    if path.is_file():
        try:
            stored = safetensors.torch.load_file(path)
            pooled = {k[len("pooled.") :]: v for k, v in stored.items() if k.startswith("pooled.")}
            tokens = {layer: stored[_stored_name(layer)] for layer in token_layers}
            return FeatureCache(pooled, tokens, stored["offsets"]), True
        except Exception:  # a damaged cache file is recomputed, never trusted
            path.unlink(missing_ok=True)
    features = compute_features(model, data, poolings, token_layers, batch_size, pad_id, progress, shard)
    if total is not None:  # each share holds zeros outside its own batches
        pooled = {m: total(v) for m, v in features.pooled.items()}
        tokens = {layer: total(v) for layer, v in features.tokens.items()}
        features = FeatureCache(pooled, tokens, features.offsets)
    if write:
        tensors = {f"pooled.{m}": v for m, v in features.pooled.items()} | {"offsets": features.offsets}
        tensors |= {_stored_name(layer): v for layer, v in features.tokens.items()}
        atomic_write_bytes(path, safetensors.torch.save(tensors))
    return features, False
