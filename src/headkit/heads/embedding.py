"""Embedding heads: one vector per text, trained so that a text lands next to its partner.

The head is a sentence-transformers bi-encoder's tail: the pooled vector, a projection (a Dense
layer) and L2 normalisation. It trains on pairs, an anchor (the text column) and its positive
(the label column), with in-batch negatives: sentence-transformers' MultipleNegativesRankingLoss,
where for anchor i the right answer among every positive of the batch is its own, cross-entropy
over `scale` x cosine similarity (scale 20, as there). A batch of B pairs is 2B rows, anchors
first (the pair layout reward heads read, its texts read alone rather than joined: codecs/pair.py).
Triplets (label columns POSITIVE,NEGATIVE) add each anchor's hard negative: 3B rows, and every
negative of the batch joins the candidates, as MNRL does with (anchor, positive, negative) rows.

The projection starts as the identity (when it keeps the width), so training starts from the
backbone's own embeddings, and a frozen backbone has a layer to train. The metrics rank over the
whole validation split: each anchor retrieves among every validation positive (recall@1, MRR@10).
At prediction time the head embeds each text given: `model.encode(texts)`, ONNX, and a
sentence-transformers folder (ship/export/sentence_transformers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headkit.errors import HeadConfigError
from headkit.heads.base import HeadBase, HeadConfig, zero_loss
from headkit.heads.codecs import TextPairCodec
from headkit.heads.labels import rows_with_labels
from headkit.heads.pooling import check_pooling
from headkit.heads.presentation import View
from headkit.heads.scoring import Scoring

MRR_CUTOFF = 10
RANK_BLOCK = 1024  # anchors ranked at a time (a block of similarities: 1024 x the distinct positives)
# headkit pooling -> the flag of sentence-transformers' Pooling module that computes it
SENTENCE_POOLING = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "last": "pooling_mode_lasttoken",
}


@dataclass(frozen=True)
class SentenceModule:
    """One sentence-transformers module after the Transformer: its folder, type, config and weights."""

    path: str
    type: str
    config: dict[str, Any] | None = None
    weights: dict[str, Tensor] | None = None


@dataclass(frozen=True)
class EmbeddingConfig(HeadConfig):
    type: str = "embedding"
    dropout: float = 0.0
    dimensions: int | None = None  # the vectors' width; None: the backbone's
    normalize: bool = True  # unit vectors (cosine similarity is then a dot product)
    scale: float = 20.0  # the loss's inverse temperature on cosine similarities

    def __post_init__(self) -> None:
        if self.dimensions is not None and (not isinstance(self.dimensions, int) or self.dimensions < 1):
            raise HeadConfigError(f"dimensions is a positive width, got {self.dimensions!r}")
        if not self.scale > 0:
            raise HeadConfigError(f"scale multiplies cosine similarities and must be positive, got {self.scale!r}")


class RetrievalScores(Scoring):
    """Each validation anchor ranks every validation positive by cosine similarity."""

    primary = "mrr@10"
    metrics: ClassVar[dict[str, bool]] = {"recall@1": True, "mrr@10": True}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        ranks = self._ranks(predictions, references)
        if ranks is None:
            return {}
        return {
            "recall@1": float(np.mean(ranks == 1)),
            "mrr@10": float(np.mean(np.where(ranks <= MRR_CUTOFF, 1.0 / ranks, 0.0))),
        }

    def chance(self, references: list[Any]) -> dict[str, float]:
        """Ranking blind to the texts: the positive is at any of the n places (distinct positives) alike."""
        n = len({r[2] for r in references if r is not None and r[0] == "anchor"})
        if n < 2:
            return {}
        return {"recall@1": 1 / n, "mrr@10": sum(1 / k for k in range(1, min(n, MRR_CUTOFF) + 1)) / n}

    def same_decision(self, a: Any, b: Any) -> bool:
        """Two engines' vectors for one text agree when they point the same way (cosine >= 0.99)."""
        u, v = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return bool(u @ v >= 0.99 * np.linalg.norm(u) * np.linalg.norm(v))

    @staticmethod
    def _ranks(predictions: list[Any], references: list[Any]) -> np.ndarray | None:
        """Each anchor's positive's place (1 = first) among the distinct positives (a text that is
        several anchors' partner is ranked once, by its partner id); ties count against it. In
        blocks of anchors, so that a large split never holds all similarities at once."""
        pairs = [(i, i + r[1], r[2]) for i, r in enumerate(references) if r is not None and r[0] == "anchor"]
        if len(pairs) < 2:
            return None
        first: dict[Any, int] = {}  # partner id -> the row of its first copy, in order
        for _, j, key in pairs:
            first.setdefault(key, j)
        positives = unit(np.array([predictions[j] for j in first.values()], dtype=np.float32))
        anchors = unit(np.array([predictions[i] for i, _, _ in pairs], dtype=np.float32))
        column = {key: k for k, key in enumerate(first)}
        target = np.array([column[key] for _, _, key in pairs])  # each anchor's positive among the distinct ones
        ranks = np.empty(len(pairs), dtype=np.int64)
        for start in range(0, len(pairs), RANK_BLOCK):
            block = anchors[start : start + RANK_BLOCK] @ positives.T
            own = block[np.arange(len(block)), target[start : start + RANK_BLOCK]][:, None]
            ranks[start : start + RANK_BLOCK] = (block >= own).sum(axis=1)  # itself included: 1 when none is as close
        return ranks


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None)


class VectorView(View):
    gives_vectors = True

    def for_text(self, prediction: Any, encoding: Any, text: str) -> Any:
        return {"embedding": prediction}

    def brief(self, prediction: Any) -> str:
        vector = prediction["embedding"] if isinstance(prediction, dict) else prediction
        return f"{len(vector)}-d vector [{', '.join(f'{v:.3f}' for v in vector[:3])}, ...]"

    def pipeline_output(self, prediction: Any) -> Any:
        """The vector, as transformers' feature-extraction pipeline gives one (a list of floats)."""
        return prediction["embedding"] if isinstance(prediction, dict) else prediction


class EmbeddingHead(HeadBase):
    """pool -> dropout -> projection -> L2 normalisation; in-batch negatives on (anchor, positive) pairs."""

    codec = TextPairCodec()
    scoring = RetrievalScores()
    view = VectorView()
    # frozen's head rate (1e-2) undid the identity start in one epoch: on 445 held-out BBC training pairs
    # (benchmarks/retrieval.py's data) recall@1 was 0.793 at 1e-2, 0.831 at 1e-3, 0.840 at 1e-4, 0.827 at 3e-5
    lr_scale = 0.01

    def __init__(self, config: EmbeddingConfig):
        super().__init__()
        check_pooling(config.pooling)
        self.config: EmbeddingConfig = config
        assert config.input_size is not None  # build_head refuses a config without it
        width = config.dimensions or config.input_size
        self.dropout = nn.Dropout(config.dropout)
        self.projection = nn.Linear(config.input_size, width)
        if width == config.input_size:  # start from the backbone's own embeddings
            with torch.no_grad():
                self.projection.weight.copy_(torch.eye(width))
                self.projection.bias.zero_()

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        vectors = self.projection(self.dropout(pooled)).float()
        return F.normalize(vectors, dim=-1) if self.config.normalize else vectors  # (B, D)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        pairs = labels.shape[0]
        if output.shape[0] not in (2 * pairs, 3 * pairs):
            raise HeadConfigError(
                f"an embedding head trains on text pairs (2 x {pairs} rows: anchors, then positives) or triplets "
                f"(3 x {pairs}: then hard negatives), got {output.shape[0]} rows"
            )
        present = rows_with_labels(labels)
        n = int(present.sum())
        if n == 0:
            return zero_loss(output), 0
        anchors = F.normalize(output[:pairs][present].float(), dim=-1)
        positives = F.normalize(output[pairs : 2 * pairs][present].float(), dim=-1)
        similarity = self.config.scale * anchors @ positives.T  # (n, n): row i's right column is i
        ids = labels.reshape(pairs, -1)[:, 0][present]  # each partner's text id (codecs/pair.py)
        same = (ids[:, None] == ids[None, :]) & ~torch.eye(n, dtype=torch.bool, device=output.device)
        similarity = similarity.masked_fill(same, float("-inf"))  # another pair's copy of my partner: no negative
        if output.shape[0] == 3 * pairs:  # triplets: every text's hard negative is one more wrong answer for all
            negatives = F.normalize(output[2 * pairs :][present].float(), dim=-1)
            hard = self.config.scale * anchors @ negatives.T
            if labels.reshape(pairs, -1).shape[1] > 1:  # a negative that is my own partner's text: no negative
                negative_ids = labels.reshape(pairs, -1)[:, 1][present]
                hard = hard.masked_fill(ids[:, None] == negative_ids[None, :], float("-inf"))
            similarity = torch.cat([similarity, hard], dim=1)  # (n, 2n)
        return F.cross_entropy(similarity, torch.arange(n, device=output.device)), n

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[list[float]]:
        return output.float().tolist()

    def sentence_modules(self, hidden_size: int) -> list[SentenceModule]:
        """This head as the modules a SentenceTransformer runs after its Transformer: Pooling, Dense
        (the projection, no activation) and Normalize (ship/export/sentence_transformers.py)."""
        config = self.config
        if config.pooling not in SENTENCE_POOLING:
            raise HeadConfigError(
                f"the head pools with '{config.pooling}', which sentence-transformers' Pooling has no mode for; "
                f"train it with pooling {sorted(SENTENCE_POOLING)}"
            )
        flags = {flag: False for flag in (*SENTENCE_POOLING.values(), "pooling_mode_mean_sqrt_len_tokens")}
        pooling = {"word_embedding_dimension": hidden_size, **flags, SENTENCE_POOLING[config.pooling]: True}
        projection = self.projection
        dense = {
            "in_features": projection.in_features,
            "out_features": projection.out_features,
            "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity",
        }
        weights = {"linear.weight": projection.weight, "linear.bias": projection.bias}
        modules = [
            SentenceModule("1_Pooling", "sentence_transformers.models.Pooling", pooling),
            SentenceModule("2_Dense", "sentence_transformers.models.Dense", dense, weights),
        ]
        if config.normalize:
            modules.append(SentenceModule("3_Normalize", "sentence_transformers.models.Normalize"))
        return modules
