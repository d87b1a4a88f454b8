"""Extractive question answering: start and end logits over the context tokens.

Labels are (B, 2) long token positions [start, end] (inclusive), -100 for a missing example.
Padding positions are masked out of both softmaxes, so an answer can never start in padding.
From tables, a span head reads a question column, a context column (`text_pair`, default
`context`) and SQuAD answers (`{"text": [...], "answer_start": [...]}`, empty for no answer); long
contexts are cut into overlapping windows and answers come back in the context's characters
(headkit.heads.qa).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headkit._typing import Backbone
from headkit.data.files import column_values, is_missing
from headkit.errors import HeadConfigError
from headkit.heads.base import HeadBase, HeadConfig, zero_loss
from headkit.heads.codecs import Codec
from headkit.heads.export import ExportSpec
from headkit.heads.labels import IGNORE_INDEX, LabelSource
from headkit.heads.pooling import first_real_position, last_real_position
from headkit.heads.qa import DOC_STRIDE
from headkit.heads.scoring import Scoring
from headkit.heads.squad import parse_answers

NULL_POSITIONS = ("first", "last")


@dataclass(frozen=True)
class SpanConfig(HeadConfig):
    type: str = "span"
    pooling: str = "none"
    max_answer_tokens: int = 30
    doc_stride: int = DOC_STRIDE  # tokens a context's windows overlap by
    # answer "" when a question's null score beats its best span's by more; None: never (SQuAD
    # 1.1). At the end of a run: None when no training question lacks an answer, else tuned on the
    # validation questions (training/null_threshold.py), unless a task's options set it.
    null_threshold: float | None = 0.0
    # where a window's null answer is read: "first" (its first token, [CLS] on BERT-style encoders,
    # as run_qa) or "last" (the end token closing a decoder's window: the only one that has read it
    # all). Set from the backbone when the head joins it, as the windows are cut for the backbone.
    null_position: str = "first"

    def __post_init__(self) -> None:
        counts = (self.doc_stride, self.max_answer_tokens)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
            raise HeadConfigError(f"a span head's doc_stride and max_answer_tokens are whole numbers, not {counts}")
        threshold = self.null_threshold
        if threshold is not None and (not isinstance(threshold, int | float) or isinstance(threshold, bool)):
            raise HeadConfigError(f"null_threshold is a number or None (never empty), not {threshold!r}")
        if self.doc_stride < 1 or self.max_answer_tokens < 1:
            raise HeadConfigError(
                f"a span head's doc_stride and max_answer_tokens are at least 1, not {self.doc_stride} and "
                f"{self.max_answer_tokens}"
            )
        if self.null_position not in NULL_POSITIONS:
            raise HeadConfigError(f"null_position is one of {NULL_POSITIONS}, not {self.null_position!r}")
        if self.null_threshold is not None and not math.isfinite(self.null_threshold):
            raise HeadConfigError(f"null_threshold is a finite number or None (never empty), not {self.null_threshold}")

    def task_options(self) -> dict[str, Any]:
        """The windows' overlap where it is not the default: a context is cut as the head trained on."""
        return {"doc_stride": self.doc_stride} if self.doc_stride != DOC_STRIDE else {}

    def fitted_to(self, backbone: Backbone) -> SpanConfig:
        """A decoder's windows read the question first and close with an end token, where the null
        answer is read (`heads.qa.qa_windows` with `causal`)."""
        from headkit.backbone_outputs import is_decoder

        return dataclasses.replace(self, null_position="last" if is_decoder(backbone) else "first")


def overlap_f1(pred: tuple[int, int], ref: tuple[int, int]) -> float:
    """SQuAD-style F1 between two inclusive token ranges."""
    common = max(0, min(pred[1], ref[1]) - max(pred[0], ref[0]) + 1)
    if common == 0:
        return 0.0
    precision = common / (pred[1] - pred[0] + 1)
    recall = common / (ref[1] - ref[0] + 1)
    return 2 * precision * recall / (precision + recall)


class SpanCodec(Codec):
    layout = "span"
    inputs = "qa"
    class_noun = "answer"
    suggested_name = "answer"

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return []  # answers are stretches of the context, not classes

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> list[dict[str, list[Any]] | None]:
        """Each row's SQuAD answers (None where it has none given); the windows turn them into token
        positions (headkit.heads.qa), once the context is known to hold them."""
        values = column_values(rows, self.label_column(where.column), where.source)
        return [None if is_missing(v) else parse_answers(v, f"row {i + 1}", where.source) for i, v in enumerate(values)]

    def label_column(self, column: str) -> str:
        """SQuAD's answers are in `answers`, which the default label column means here."""
        return "answers" if column == "label" else column

    def concat(self, parts: list[Any | None], sizes: list[int]) -> Any:
        missing = [np.full((n, 2), IGNORE_INDEX, np.int64) for n in sizes]
        return np.concatenate([p if p is not None else m for p, m in zip(parts, missing, strict=True)])

    def labelled_mask(self, y: Any) -> np.ndarray:
        return (np.asarray(y).reshape(-1, 2) != IGNORE_INDEX).all(axis=1)

    def collate(self, values: list[Any], length: int, width: int) -> Tensor:
        return torch.tensor(
            [[IGNORE_INDEX] * 2 if v is None else [int(x) for x in v] for v in values], dtype=torch.long
        )

    def references(
        self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()
    ) -> list[tuple[int, int] | None]:
        """Labels are token positions in the batch as collated (right-padded: from the text's start)."""
        return [None if IGNORE_INDEX in row else (row[0], row[1]) for row in labels.tolist()]


class SpanScores(Scoring):
    primary = "exact_match"
    metrics: ClassVar[dict[str, bool]] = {"exact_match": True, "f1": True}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score

        pairs = [((p["start"], p["end"]), r) for p, r in zip(predictions, references, strict=True) if r is not None]
        if not pairs:
            return {}
        return {
            "exact_match": float(accuracy_score([str(r) for _, r in pairs], [str(p) for p, _ in pairs])),
            "f1": float(sum(overlap_f1(p, r) for p, r in pairs) / len(pairs)),
        }


def answering_settings(head: Any, config: Any) -> None:
    """Record how the head answers in the exported config, under run_qa's argument names
    (transformers' QA classes have no place of their own for them): the tuned null threshold
    (None: never answer empty), the longest answer and the windows' overlap; and where a window's
    null answer is read ("last": a decoder's windows, question, end token, context, end token)."""
    config.null_score_diff_threshold = head.config.null_threshold
    config.max_answer_length = head.config.max_answer_tokens
    config.doc_stride = head.config.doc_stride
    config.null_position = head.config.null_position  # "last": a decoder's windows (heads/qa.py)


def start_end(out: Any) -> Tensor:
    """AutoModelForQuestionAnswering's start and end logits as (B, T, 2), as the head gives them."""
    return torch.stack([out.start_logits, out.end_logits], dim=-1)


class SpanHead(HeadBase):
    per_token = True
    codec = SpanCodec()
    scoring = SpanScores()
    export = ExportSpec("AutoModelForQuestionAnswering", "question-answering", fill=answering_settings, read=start_end)

    def __init__(self, config: SpanConfig):
        super().__init__()
        self.config: SpanConfig = config
        self.dropout = nn.Dropout(config.dropout)
        assert config.input_size is not None  # build_head refuses a config without it
        self.qa_outputs = nn.Linear(config.input_size, 2)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        logits = self.qa_outputs(self.dropout(hidden))  # (B, T, 2): start, end
        return logits.masked_fill((mask == 0).unsqueeze(-1), torch.finfo(logits.dtype).min)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        present = (labels != IGNORE_INDEX).all(dim=1)
        n = int(present.sum())
        if n == 0:
            return zero_loss(output), 0
        logits, positions = output.float()[present], labels.long()[present]
        start = F.cross_entropy(logits[..., 0], positions[:, 0])
        end = F.cross_entropy(logits[..., 1], positions[:, 1])
        return (start + end) / 2, n

    def decode(self, output: Tensor, mask: Tensor) -> list[dict[str, Any]]:
        """Best span with start <= end < start + max_answer_tokens, scored by summed log-probs, or
        the null answer (both ends on the row's null position: its first token, [CLS], or a
        decoder's last) when it scores higher; positions count from each text's first token. The
        answer across a long context's windows, in characters, is `heads.qa.best_answers` (what
        predict gives for (question, context) pairs)."""
        logp = output.float().log_softmax(dim=1)  # (B, T, 2)
        scores = logp[..., 0].unsqueeze(2) + logp[..., 1].unsqueeze(1)  # (B, T_start, T_end)
        t = scores.shape[1]
        idx = torch.arange(t, device=scores.device)
        allowed = (idx[None, :] >= idx[:, None]) & (idx[None, :] - idx[:, None] < self.config.max_answer_tokens)
        scores = scores.masked_fill(~allowed, float("-inf"))
        offset = first_real_position(mask)  # token positions count from each text's first token
        at = last_real_position(mask) if self.config.null_position == "last" else offset
        rows = torch.arange(len(offset), device=scores.device)
        null = scores[rows, at, at]
        scores[rows, at, at] = float("-inf")  # the null answer is weighed on its own below
        best = scores.flatten(1).argmax(dim=1)
        top = scores.flatten(1).max(dim=1).values
        # None never answers a *question* empty (best_answers); a window may still hold no answer
        threshold = self.config.null_threshold if self.config.null_threshold is not None else 0.0
        is_null = null - top > threshold
        starts = torch.where(is_null, at, best // t) - offset
        ends = torch.where(is_null, at, best % t) - offset
        score = torch.where(is_null, null, top).exp().tolist()
        return [
            {"start": s, "end": e, "score": p} for s, e, p in zip(starts.tolist(), ends.tolist(), score, strict=True)
        ]

    def window_logits(self, output: Tensor, mask: Tensor) -> list[Tensor]:
        """Each row's (tokens, 2) start/end logits without its padding, for `heads.qa.best_answers`."""
        return [row[m.bool()] for row, m in zip(output.float(), mask, strict=True)]
