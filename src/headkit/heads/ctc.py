"""CTC head for speech backbones (wav2vec2-style): per-frame logits over a symbol vocabulary.

`labels` is the vocabulary (index `blank_id` is the CTC blank). Label tensors are (B, L) long
symbol ids padded with -100; a row that is all -100 is missing for this head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein
from torch import Tensor

from headkit.heads.base import HeadBase, HeadConfig, dropout_linear, zero_loss
from headkit.heads.codecs import Codec
from headkit.heads.export import ExportSpec
from headkit.heads.labels import IGNORE_INDEX, real_positions
from headkit.heads.scoring import Scoring


@dataclass(frozen=True)
class CTCConfig(HeadConfig):
    type: str = "ctc"
    pooling: str = "none"
    blank_id: int = 0


def symbols(vocabulary: list[str], ids: list[int]) -> str:
    """Symbol ids -> the text they spell."""
    return "".join(vocabulary[i] for i in ids)


class SymbolCodec(Codec):
    """Labels are (B, L) symbol ids padded with -100; references are the texts they spell."""

    def references(self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()) -> list[str | None]:
        rows = [[y for y in row if y != IGNORE_INDEX] for row in labels.tolist()]
        return [symbols(self.names, r) if r else None for r in rows]


class CharacterErrors(Scoring):
    primary = "cer"
    metrics: ClassVar[dict[str, bool]] = {"cer": False}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
        if not pairs:
            return {}
        edits = sum(Levenshtein.distance(p, r) for p, r in pairs)
        return {"cer": edits / max(1, sum(len(r) for _, r in pairs))}


def ctc_vocabulary(head: Any, config: Any) -> None:
    """AutoModelForCTC's output size is the vocabulary, its padding id the CTC blank."""
    config.vocab_size = len(head.config.labels)
    config.pad_token_id = head.config.blank_id


class CTCHead(HeadBase):
    per_token = True
    codec = SymbolCodec()
    scoring = CharacterErrors()
    export = ExportSpec("AutoModelForCTC", "automatic-speech-recognition", ("ForCTC",), fill=ctc_vocabulary)

    def __init__(self, config: CTCConfig):
        super().__init__()
        config.require_labels(2)
        self.config: CTCConfig = config
        assert config.input_size is not None  # build_head refuses a config without it
        self.lm_head = dropout_linear(config.input_size, len(config.labels), config.dropout)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.lm_head(hidden)  # (B, T, V)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        present = (labels != IGNORE_INDEX).any(dim=1)
        n = int(present.sum())
        if n == 0:
            return zero_loss(output), 0
        if mask is None:
            mask = torch.ones(output.shape[:2], dtype=torch.long, device=output.device)
        lengths = mask.sum(dim=1)  # frames per example
        log_probs = output.float()[present].log_softmax(-1).transpose(0, 1)  # (T, n, V)
        targets = labels[present]
        target_lengths = (targets != IGNORE_INDEX).sum(dim=1)
        loss = F.ctc_loss(
            log_probs,
            targets[targets != IGNORE_INDEX],
            lengths[present].long(),
            target_lengths,
            blank=self.config.blank_id,
            zero_infinity=True,
        )
        return loss, n

    def decode(self, output: Tensor, mask: Tensor) -> list[str]:
        """Greedy CTC decoding: best symbol per frame, repeats merged, blanks dropped."""
        texts = []
        for row in real_positions(output.argmax(-1), mask):
            merged = [s for i, s in enumerate(row) if i == 0 or s != row[i - 1]]
            texts.append(symbols(self.config.labels, [s for s in merged if s != self.config.blank_id]))
        return texts
