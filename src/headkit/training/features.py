"""Cached backbone features for frozen training: run the backbone once, train heads for seconds.

A frozen backbone in eval mode maps the same tokens to the same hidden states every epoch, so
they are computed once and stored as safetensors under the headkit cache, keyed by a hash of
the backbone's weights, the token ids and the feature kinds. Pooled heads need one vector per
example per pooling method; per-token heads need every position, stored flat with offsets.
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
from headkit.model import MultiHeadModel


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
    lengths = np.array(data.lengths(), dtype=np.int64)
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in data.input_ids]) if len(data) else lengths
    return hashlib.sha256(lengths.tobytes() + flat.tobytes()).hexdigest()


@dataclass
class FeatureCache:
    """Backbone outputs for every example of one dataset."""

    pooled: dict[str, Tensor]  # pooling method -> (N, H)
    tokens: Tensor | None  # (sum of lengths, H), or None when no per-token head needs it
    offsets: Tensor  # (N + 1,) start of each example in `tokens`

    def batch(self, indices: Tensor) -> tuple[Tensor | None, Tensor, dict[str, Tensor]]:
        """Hidden states (padded), their mask, and pooled vectors for the given examples."""
        pooled = {m: v[indices] for m, v in self.pooled.items()}
        lengths = (self.offsets[indices + 1] - self.offsets[indices]).tolist()
        mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        if self.tokens is None:
            return None, mask, pooled
        hidden = self.tokens.new_zeros(len(lengths), max(lengths), self.tokens.shape[1])
        for i, (start, n) in enumerate(zip(self.offsets[indices].tolist(), lengths, strict=True)):
            hidden[i, :n] = self.tokens[start : start + n]
        return hidden, mask, pooled


def features_needed(model: MultiHeadModel) -> tuple[set[str], bool]:
    """What the heads read: the pooling methods of pooled heads, and whether any reads every token."""
    poolings = {h.config.pooling for h in model.heads.values() if not h.per_token}
    return poolings, any(h.per_token for h in model.heads.values())


@torch.no_grad()
def compute_features(
    model: MultiHeadModel,
    data: EncodedData,
    poolings: set[str],
    need_tokens: bool,
    batch_size: int = 64,
    pad_id: int = 0,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> FeatureCache:
    """Run the backbone over `data` once (eval mode, no grad) and keep what the heads need.

    `shard` = (index, count): compute only every count-th batch from the index-th on, leaving
    zeros elsewhere, so that several processes each compute a share and a sum joins them."""
    was_training = model.training
    model.eval()
    n, device = len(data), model.device
    hidden_size = model.hidden_size
    pooled = {m: torch.zeros(n, hidden_size) for m in poolings}
    lengths = torch.tensor(data.lengths())
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    tokens = torch.zeros(int(offsets[-1]), hidden_size) if need_tokens else None
    index, count = shard
    batches = LengthGroupedBatches(data.lengths(), batch_size, seed=0, shuffle=False).batches()[index::count]
    for indices in tqdm(batches, desc="backbone features", unit="batch", disable=not progress, leave=False):
        batch = collate([data[i] for i in indices], pad_id, {}, {})
        hidden, mask = model.forward_features(**model_inputs(batch, device))
        hidden = hidden.float()
        for method in poolings:
            pooled[method][indices] = model.pool(hidden, mask, method).cpu()
        if tokens is not None:
            for row, i in enumerate(indices):
                tokens[offsets[i] : offsets[i + 1]] = hidden[row, : int(lengths[i])].cpu()
    model.train(was_training)
    return FeatureCache(pooled, tokens, offsets)


def cached_features(
    model: MultiHeadModel,
    data: EncodedData,
    poolings: set[str],
    need_tokens: bool,
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
    kinds = ",".join(sorted(poolings)) + (",tokens" if need_tokens else "")
    digest = backbone_digest or weights_digest(model.backbone)
    key = hashlib.sha256(f"{digest}|{tokens_digest(data)}|{kinds}".encode()).hexdigest()
    path = (root or cache_dir() / "features") / f"{key[:32]}.safetensors"
    if path.is_file():
        try:
            stored = safetensors.torch.load_file(path)
            pooled = {k[len("pooled.") :]: v for k, v in stored.items() if k.startswith("pooled.")}
            return FeatureCache(pooled, stored.get("tokens"), stored["offsets"]), True
        except Exception:  # a damaged cache file is recomputed, never trusted
            path.unlink(missing_ok=True)
    features = compute_features(model, data, poolings, need_tokens, batch_size, pad_id, progress, shard)
    if total is not None:  # each share holds zeros outside its own batches
        pooled = {m: total(v) for m, v in features.pooled.items()}
        tokens = total(features.tokens) if features.tokens is not None else None
        features = FeatureCache(pooled, tokens, features.offsets)
    if write:
        tensors = {f"pooled.{m}": v for m, v in features.pooled.items()} | {"offsets": features.offsets}
        if features.tokens is not None:
            tensors["tokens"] = features.tokens
        atomic_write_bytes(path, safetensors.torch.save(tensors))
    return features, False
