"""Token classification (NER, POS): one label per token, no pooling.

Labels are (B, T) long with -100 at positions that carry no label (padding, special tokens,
continuation sub-words); an example whose positions are all -100 is missing for this head.
Predictions and references are per-example tag lists over real (mask == 1) positions, with None
where the reference has no label, so `score` can align them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch.nn.functional as F
from seqeval.metrics import accuracy_score as seq_accuracy
from seqeval.metrics import classification_report as seq_report
from seqeval.metrics import f1_score as seq_f1
from seqeval.metrics import precision_score, recall_score
from sklearn.metrics import accuracy_score, classification_report, f1_score
from torch import Tensor

from headkit.data.files import column_values, is_missing
from headkit.errors import DataError
from headkit.heads import fewshot
from headkit.heads.base import (
    IGNORE_INDEX,
    HeadBase,
    HeadConfig,
    LabelSource,
    Pair,
    balanced_weights,
    dropout_linear,
    label_index,
    label_order,
    label_values,
    real_positions,
    report_dict,
    set_label_maps,
    weight_tensor,
    zero_loss,
)


@dataclass
class TokenClassificationConfig(HeadConfig):
    """`labels` are tag names; BIO tags (`B-PER`, `I-PER`, `O`) are scored entity-level by seqeval."""

    type: str = "token-classification"
    pooling: str = "none"
    normalize: bool = False  # L2-normalise each token vector first (fewshot: contrastive tuning shapes directions)
    class_weights: list[float] | None = None  # loss weight per tag


def is_bio(tags: list[str]) -> bool:
    return all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in tags)


def _tags_column(where: LabelSource) -> str:
    return "tags" if where.column == "label" else where.column  # CoNLL files name it `tags`


class TokenClassificationHead(HeadBase):
    """Rows hold pre-split words (`tokens`) and one tag per word (`tags`); the data code gives
    each word's tag to its first sub-word token (the rest: -100)."""

    per_token = True
    inputs = "words"
    label_layout = "per_token"
    primary_metric = "f1"
    metrics: ClassVar[dict[str, bool]] = {"f1": True, "precision": True, "recall": True, "accuracy": True}
    export_target = "AutoModelForTokenClassification"
    pipeline_tag = "token-classification"
    architectures = ("ForTokenClassification",)
    fewshot = True

    @classmethod
    def label_names(cls, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        """Sorted tags with `O` first (the usual id 0)."""
        values = label_values(rows, where, _tags_column(where))
        tags = {str(t) for v in values if not is_missing(v) for t in v if t is not None}
        declared = where.declared_names(_tags_column(where), present=tags)
        return declared or (["O"] if "O" in tags else []) + label_order(tags - {"O"})

    @classmethod
    def encode_labels(
        cls, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> list[list[int] | None]:
        """One tag id per word (None: the example has no tags), checked against the words."""
        lookup = label_index(labels, where)
        words = column_values(rows, "tokens", where.source)
        tag_lists = column_values(rows, _tags_column(where), where.source)
        encoded: list[list[int] | None] = []
        for i, (tokens, tags) in enumerate(zip(words, tag_lists, strict=True)):
            if is_missing(tags):
                encoded.append(None)
                continue
            if len(tokens) != len(tags):
                raise DataError(
                    f"head '{where.head}', example {i + 1}: {len(tokens)} tokens but {len(tags)} tags; "
                    "every token needs exactly one tag"
                )
            encoded.append([lookup(str(t), i + 1) for t in tags])
        return encoded

    @classmethod
    def fewshot_pairs(cls, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        """Pairs of tagged tokens: two of one tag (1.0), one of it and one of another tag (0.0)."""
        tags: list[list[int] | None] = y
        tokens = [(i, pos, t) for i, row in enumerate(tags) if row for pos, t in enumerate(row) if t != IGNORE_INDEX]
        by_tag: dict[int, list[tuple[int, int]]] = {}
        for i, pos, t in tokens:
            by_tag.setdefault(t, []).append((i, pos))
        anchors = sorted(t for t, items in by_tag.items() if len(items) >= 2)
        if len(by_tag) < 2 or not anchors:
            raise DataError(
                f"head '{head}': few-shot token tagging needs at least 2 tags and 2 tagged words of some tag; "
                f"the training data has {len(by_tag)} tag(s)"
            )
        sentences = sum(1 for row in tags if row and any(t != IGNORE_INDEX for t in row))
        pairs = []
        for _ in range(iterations * sentences):
            tag = anchors[rng.integers(len(anchors))]
            same = by_tag[tag]
            a, b = rng.choice(len(same), size=2, replace=False)
            others = [t for t in by_tag if t != tag]
            other = by_tag[others[rng.integers(len(others))]]
            c = other[rng.integers(len(other))]
            (i, pi), (j, pj) = same[a], same[b]
            pairs.append(Pair(head, i, j, 1.0, pi, pj))
            pairs.append(Pair(head, i, c[0], 0.0, pi, c[1]))
        return pairs

    @classmethod
    def auto_class_weights(cls, y: Any, width: int) -> list[float]:
        """Inverse tag frequency over labelled tokens (`O` usually weighs far below 1)."""
        tags = [t for row in y if row for t in row if t != IGNORE_INDEX]
        return balanced_weights(np.bincount(np.asarray(tags, dtype=np.int64), minlength=width))

    def fewshot_fit(self, features: np.ndarray, y: Any) -> None:
        """`features`: one row per tagged token; `y`: their tag ids."""
        fewshot.load_linear(self.classifier[-1], *fewshot.logistic(features, np.asarray(y), len(self.config.labels)))

    def for_text(self, prediction: Any, encoding: Any, text: str) -> Any:
        """Tags per sub-word token -> one tag per word (its first sub-word), with the word's text."""
        if encoding is None:  # a slow tokenizer has no offsets: tags stay per token
            return prediction
        words, previous = [], None
        for position, word in enumerate(encoding.word_ids):
            if word is None or word == previous or position >= len(prediction):
                previous = word if word is not None else previous
                continue
            start, end = encoding.offsets[position]
            words.append({"word": text[start:end], "tag": prediction[position], "start": start, "end": end})
            previous = word
        return words

    def pipeline_output(self, prediction: Any) -> list[dict[str, Any]]:
        """Entity spans, as token-classification pipelines give with aggregation_strategy="simple":
        B- starts an entity, I- of the same type continues it; {"entity_group", "word", "start", "end"}
        with character offsets into the text (the word's first sub-word decides its tag)."""
        if not prediction or not isinstance(prediction[0], dict) or "start" not in prediction[0]:
            return prediction  # a slow tokenizer gives no offsets: tags per token
        entities: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for word in prediction:
            prefix, _, kind = word["tag"].partition("-")
            if current is not None and prefix == "I" and kind == current["entity_group"]:
                gap = " " * max(0, word["start"] - current["end"])  # the text between words (spaces)
                current.update(word=current["word"] + gap + word["word"], end=word["end"])
                continue
            current = None  # O, or a new entity, ends the one before
            if word["tag"] != "O" and kind:
                current = {"entity_group": kind, "word": word["word"], "start": word["start"], "end": word["end"]}
                entities.append(current)
        return entities

    def brief(self, prediction: Any) -> str:
        if prediction and isinstance(prediction[0], dict):
            return " ".join(f"{w['word']}/{w['tag']}" for w in prediction if w["tag"] != "O") or "(no entities)"
        return " ".join(prediction)

    def export_config(self, config: Any) -> None:
        set_label_maps(config, list(self.config.labels), None)

    def __init__(self, config: TokenClassificationConfig):
        super().__init__()
        config.require_labels(2)
        self.config = config
        self.classifier = dropout_linear(config.input_size, len(config.labels), config.dropout)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.config.normalize:
            hidden = F.normalize(hidden.float(), dim=-1).to(hidden.dtype)
        return self.classifier(hidden)  # (B, T, C)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        n = int((labels != IGNORE_INDEX).any(dim=1).sum())
        if n == 0:
            return zero_loss(output), 0
        loss = F.cross_entropy(
            output.float().flatten(0, 1),
            labels.long().flatten(),
            weight=weight_tensor(self.config.class_weights, output),
            ignore_index=IGNORE_INDEX,
        )
        return loss, n

    def decode(self, output: Tensor, mask: Tensor) -> list[list[str]]:
        names = self.config.labels
        return [[names[i] for i in row] for row in real_positions(output.argmax(-1), mask)]

    def references(self, labels: Tensor, mask: Tensor) -> list[list[str | None] | None]:
        names = self.config.labels
        refs: list[list[str | None] | None] = []
        for row in real_positions(labels, mask):
            tags = [None if y == IGNORE_INDEX else names[y] for y in row]
            refs.append(None if all(t is None for t in tags) else tags)
        return refs

    @staticmethod
    def _aligned(predictions: list[Any], references: list[Any]) -> tuple[list[list[str]], list[list[str]]]:
        """Predicted and true tags at the labelled positions of the labelled examples."""
        y_pred, y_true = [], []
        for pred, ref in zip(predictions, references, strict=True):
            if ref is None:
                continue
            kept = [(p, r) for p, r in zip(pred, ref, strict=False) if r is not None]
            y_pred.append([p for p, _ in kept])
            y_true.append([r for _, r in kept])
        return y_pred, y_true

    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None:
        """BIO tags: seqeval's entity-level report (one row per entity type); else per tag."""
        y_pred, y_true = self._aligned(predictions, references)
        if not y_true:
            return None
        if is_bio(self.config.labels):
            return report_dict(seq_report(y_true, y_pred, output_dict=True, zero_division=0))
        flat_true = [t for seq in y_true for t in seq]
        flat_pred = [t for seq in y_pred for t in seq]
        labels = self.config.labels
        report = classification_report(flat_true, flat_pred, labels=labels, output_dict=True, zero_division=0)
        return report_dict(report)

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        y_pred, y_true = self._aligned(predictions, references)
        if not y_true:
            return {}
        if is_bio(self.config.labels):
            return {
                "f1": float(seq_f1(y_true, y_pred, zero_division=0)),
                "precision": float(precision_score(y_true, y_pred, zero_division=0)),
                "recall": float(recall_score(y_true, y_pred, zero_division=0)),
                "accuracy": float(seq_accuracy(y_true, y_pred)),
            }
        flat_true = [t for seq in y_true for t in seq]
        flat_pred = [t for seq in y_pred for t in seq]
        return {
            "f1": float(f1_score(flat_true, flat_pred, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(flat_true, flat_pred)),
        }
