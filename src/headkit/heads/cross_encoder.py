"""Cross-encoder heads: one relevance score per (query, document) pair, for reranking.

sentence-transformers' `CrossEncoder` with one label: the backbone reads the query and the
document as one sentence pair (`text` and `text_pair` columns), one linear layer scores it, and
the loss is binary cross-entropy with logits against a relevance in [0, 1] (1 relevant, 0 not;
graded relevance in between). `model.rank(query, documents)` and `headkit rank` order documents
by the score; a transformers export is `AutoModelForSequenceClassification` with one label, the
folder `CrossEncoder(dir)` loads (on pooling `pooler` for BERT-style backbones, as for
classification heads). The listwise counterpart, softmax over a query's candidates, is the
multiple-choice head (heads/multiple_choice.py): both score one pair per row and both rank.

Metrics per pair: accuracy at probability 0.5 and ROC AUC (how often a relevant pair scores
above an irrelevant one), with the references' relevance read as relevant above 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from headkit.data.files import column_values, is_missing
from headkit.errors import DataError
from headkit.heads.base import zero_loss
from headkit.heads.classification import SEQUENCE_CLASSIFICATION
from headkit.heads.codecs.base import Codec
from headkit.heads.export import ExportSpec
from headkit.heads.labels import NAN, LabelSource, rows_with_labels
from headkit.heads.mlp import MLPConfig
from headkit.heads.reward import ScoreHead, ScoreView
from headkit.heads.scoring import Scoring, same_score


@dataclass(frozen=True)
class CrossEncoderConfig(MLPConfig):
    type: str = "cross-encoder"


class RelevanceCodec(Codec):
    """A relevance per (query, document) row: (B, 1) float in [0, 1], NaN where missing."""

    layout = "vector"
    needs_text_pair = True  # a relevance belongs to a (query, document) pair, never to a text alone
    class_noun, suggested_name = "relevance", "relevance"

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return []  # one score, no classes

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        out = np.full((len(rows), 1), NAN, dtype=np.float32)
        for i, value in enumerate(column_values(rows, where.column, where.source)):
            if not is_missing(value):
                out[i, 0] = relevance(value, where, i + 1)
        return out

    def collate(self, values: list[Any], length: int, width: int) -> Tensor:
        return super().collate(values, length, 1)  # one column whatever the (empty) label map's width

    def references(self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()) -> list[Any]:
        present = rows_with_labels(labels).tolist()
        values = labels.reshape(labels.shape[0], -1)[:, 0].tolist()
        return [v if ok else None for v, ok in zip(values, present, strict=True)]


def relevance(value: Any, where: LabelSource, row: int) -> float:
    """A relevance cell as a number in [0, 1] (true/false and 0/1 strings too)."""
    text = str(value).strip().lower()
    number = {"true": 1.0, "false": 0.0}.get(text)
    if number is None:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise DataError(
            f"row {row} of {where.source}: relevance column '{where.column}' holds {value!r}; a cross-encoder learns "
            "a relevance from 0 (irrelevant) to 1 (relevant)"
        )
    return number


class RelevanceScores(Scoring):
    primary = "auc"
    metrics: ClassVar[dict[str, bool]] = {"auc": True, "accuracy": True}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from sklearn.metrics import roc_auc_score

        pairs = [(p, r > 0.5) for p, r in zip(predictions, references, strict=True) if r is not None]
        if not pairs:
            return {}
        scores, relevant = np.array([p for p, _ in pairs]), np.array([r for _, r in pairs])
        result = {"accuracy": float(np.mean((scores > 0) == relevant))}  # logit 0: probability 0.5
        if 0 < relevant.sum() < len(relevant):
            result["auc"] = float(roc_auc_score(relevant, scores))
        return result

    def same_decision(self, a: Any, b: Any) -> bool:
        return same_score(a, b)

    def chance(self, references: list[Any]) -> dict[str, float]:
        """Every pair alike: AUC 0.5; accuracy of the more frequent answer."""
        relevant = [r > 0.5 for r in references if r is not None]
        if not relevant:
            return {}
        share = float(np.mean(relevant))
        return {"auc": 0.5, "accuracy": max(share, 1 - share)}


class RelevanceView(ScoreView):
    def probabilities(self, scores: list[float]) -> list[float]:
        """Each pair's own probability of relevance (the sigmoid of its logit), as sentence-transformers'
        CrossEncoder.predict gives it: a document's relevance does not depend on the others ranked."""
        return (1.0 / (1.0 + np.exp(-np.array(scores, dtype=np.float64)))).tolist()


def one_label(head: Any, config: Any) -> None:
    """One output, as sentence-transformers' CrossEncoder saves a reranker (it applies the sigmoid)."""
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    config.problem_type = None


def first_logit(out: Any) -> Tensor:
    return out.logits[:, 0]


class CrossEncoderHead(ScoreHead):
    """One relevance logit per (query, document) row; binary cross-entropy against the relevance."""

    codec = RelevanceCodec()
    scoring = RelevanceScores()
    view = RelevanceView()
    export = ExportSpec(SEQUENCE_CLASSIFICATION, "text-ranking", fill=one_label, read=first_logit)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        target = labels.reshape(labels.shape[0], -1)[:, 0].to(output.device)
        present = ~torch.isnan(target)
        n = int(present.sum())
        if n == 0:
            return zero_loss(output), 0
        return F.binary_cross_entropy_with_logits(output.float()[present], target.float()[present]), n
