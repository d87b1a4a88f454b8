"""Token classification (NER, POS): one label per token, no pooling.

Labels are (B, T) long with -100 at positions that carry no label (padding, special tokens,
continuation sub-words); an example whose positions are all -100 is missing for this head.
Predictions and references are per-example tag lists over real (mask == 1) positions, with None
where the reference has no label, so the scoring can align them exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from headkit.heads.base import HeadBase, HeadConfig, dropout_linear, weight_tensor, zero_loss
from headkit.heads.codecs import TagCodec
from headkit.heads.export import ExportSpec, label_maps
from headkit.heads.fewshot import FewShot, class_solution
from headkit.heads.labels import IGNORE_INDEX, real_positions
from headkit.heads.presentation import View
from headkit.heads.scoring import Scoring, report_dict, with_unseen


@dataclass(frozen=True)
class TokenClassificationConfig(HeadConfig):
    """`labels` are tag names; BIO tags (`B-PER`, `I-PER`, `O`) are scored entity-level by seqeval."""

    type: str = "token-classification"
    pooling: str = "none"
    normalize: bool = False  # L2-normalise each token vector first (fewshot: contrastive tuning shapes directions)
    class_weights: list[float] | None = None  # loss weight per tag


def is_bio(tags: list[str]) -> bool:
    return all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in tags)


def aligned(predictions: list[Any], references: list[Any]) -> tuple[list[list[str]], list[list[str]]]:
    """Predicted and true tags at the labelled positions of the labelled examples."""
    y_pred, y_true = [], []
    for pred, ref in zip(predictions, references, strict=True):
        if ref is None:
            continue
        kept = [(p, r) for p, r in zip(pred, ref, strict=False) if r is not None]
        y_pred.append([p for p, _ in kept])
        y_true.append([r for _, r in kept])
    return y_pred, y_true


class TagScores(Scoring):
    """BIO tags: seqeval's entity-level scores; other tag sets: per tag (macro F1, accuracy)."""

    primary = "f1"
    metrics: ClassVar[dict[str, bool]] = {"f1": True, "precision": True, "recall": True, "accuracy": True}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from seqeval.metrics import accuracy_score as seq_accuracy
        from seqeval.metrics import f1_score as seq_f1
        from seqeval.metrics import precision_score, recall_score
        from sklearn.metrics import accuracy_score, f1_score

        y_pred, y_true = aligned(predictions, references)
        if not y_true:
            return {}
        if is_bio(self.names):
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

    def chance(self, references: list[Any]) -> dict[str, float]:
        """BIO tags: entity F1 of tagging every word `O` (no entity found), 0 (none where the
        references hold no entity: then every answer scores 0); other tag sets: the macro F1 of
        always answering the most frequent tag."""
        tags = [t for ref in references if ref is not None for t in ref if t is not None]
        if is_bio(self.names):
            return {"f1": 0.0} if any(t != "O" for t in tags) else {}
        if not tags:
            return {}
        share = max(Counter(tags).values()) / len(tags)  # that tag's F1 (precision = share, recall 1); others 0
        return {"f1": 2 * share / (1 + share) / len(set(tags))}

    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None:
        """BIO tags: seqeval's entity-level report (one row per entity type); else per tag."""
        from seqeval.metrics import classification_report as seq_report
        from sklearn.metrics import classification_report

        y_pred, y_true = aligned(predictions, references)
        if not y_true:
            return None
        if is_bio(self.names):
            return report_dict(seq_report(y_true, y_pred, output_dict=True, zero_division=0))
        flat_true = [t for seq in y_true for t in seq]
        flat_pred = [t for seq in y_pred for t in seq]
        names = with_unseen(self.names, flat_true)
        report = classification_report(flat_true, flat_pred, labels=names, output_dict=True, zero_division=0)
        return report_dict(report)


class TagView(View):
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


class TokenClassificationHead(HeadBase):
    """Rows hold pre-split words (`tokens`) and one tag per word (`tags`); the data code gives
    each word's tag to its first sub-word token (the rest: -100)."""

    per_token = True
    codec = TagCodec()
    scoring = TagScores()
    view = TagView()
    export = ExportSpec(
        "AutoModelForTokenClassification",
        "token-classification",
        architectures=("ForTokenClassification",),
        fill=label_maps(None),
    )
    fewshot = FewShot(class_solution)  # features: one row per tagged token; y: their tag ids

    def __init__(self, config: TokenClassificationConfig):
        super().__init__()
        config.require_labels(2)
        self.config: TokenClassificationConfig = config
        assert config.input_size is not None  # build_head refuses a config without it
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
