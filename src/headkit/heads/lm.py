"""Language-modelling heads: masked-LM (BERT-style) and causal-LM (GPT/Llama-style).

Both map every hidden vector to vocabulary logits. With `tie_embeddings` the decoder shares its
weight with the backbone's input embeddings (as in BERT, GPT-2, Gemma and SmolLM2), which saves
vocab_size x hidden parameters; left unset it follows the checkpoint's own `tie_word_embeddings`,
so an untied checkpoint (Llama-3, Mistral, Qwen2-7B, Pythia: a separate `lm_head`) keeps a
decoder of its own, and a head whose decoder is not the embeddings' shape (ELECTRA's generator
projects to a narrower embedding) is untied. `MultiHeadModel` does the tying because only it
sees both.
Labels are (B, T) token ids with -100 where no prediction is wanted; the causal head shifts
them itself, so labels = input_ids (padding set to -100) is correct.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from headkit._typing import Backbone
from headkit.errors import HeadConfigError, HeadMismatchError
from headkit.heads.base import HeadBase, HeadConfig, zero_loss
from headkit.heads.codecs import Codec
from headkit.heads.export import ExportSpec
from headkit.heads.labels import IGNORE_INDEX, real_positions
from headkit.heads.scoring import Scoring, perplexity

MASKED_LM, CAUSAL_LM = "masked-lm", "causal-lm"  # the two type names (heads/__init__.py registers them)
LAYER_NORM_EPS = 1e-12  # BERT's, for a backbone whose config names none


@dataclass(frozen=True)
class LMConfig(HeadConfig):
    type: str = "masked-lm"  # or "causal-lm"
    pooling: str = "none"
    dropout: float = 0.0
    vocab_size: int = 0
    tie_embeddings: bool | None = None  # None: as the checkpoint ties (resolved when the head is attached)
    layer_norm_eps: float | None = None  # None: the backbone's (BERT 1e-12, RoBERTa 1e-5, DeBERTa 1e-7)

    def fitted_to(self, backbone: Backbone) -> LMConfig:
        """The vocabulary (0: the backbone's own), the layer-norm eps, and whether the decoder is
        the input embeddings: as the checkpoint ties (`tie_word_embeddings`), where the shapes allow."""
        config = backbone.config
        vocab_size = self.vocab_size or int(config.vocab_size)
        eps = self.layer_norm_eps
        if eps is None:
            eps = float(getattr(config, "layer_norm_eps", None) or LAYER_NORM_EPS)
        tie = self.tie_embeddings
        if tie is None:
            weight = getattr(backbone.get_input_embeddings(), "weight", None)
            fits = weight is not None and tuple(weight.shape) == (vocab_size, self.input_size)
            tie = bool(getattr(config, "tie_word_embeddings", True)) and fits
        return dataclasses.replace(self, vocab_size=vocab_size, layer_norm_eps=eps, tie_embeddings=tie)


class TokenIdCodec(Codec):
    """Labels are token ids (B, T), -100 where no prediction is wanted; references are the ids at
    an example's real positions (the causal head's shifted: position t is scored against t + 1)."""

    def __init__(self, causal: bool):
        self.causal = causal

    def references(self, labels: Tensor, mask: Tensor, unseen: Sequence[str] = ()) -> list[list[int | None] | None]:
        if self.causal:  # position t is scored against token t + 1
            labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        refs: list[list[int | None] | None] = []
        for row in real_positions(labels, mask):
            ids = [None if y == IGNORE_INDEX else y for y in row]
            refs.append(None if all(y is None for y in ids) else ids)
        return refs


class TokenScores(Scoring):
    """Accuracy of the predicted token at the scored positions; perplexity from the mean loss."""

    primary = "accuracy"
    metrics: ClassVar[dict[str, bool]] = {"accuracy": True, "perplexity": False}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score

        pairs = [
            (p, r)
            for pred, ref in zip(predictions, references, strict=True)
            if ref is not None
            for p, r in zip(pred, ref, strict=False)
            if r is not None
        ]
        if not pairs:
            return {}
        return {"accuracy": float(accuracy_score([r for _, r in pairs], [p for p, _ in pairs]))}

    def scores_from_loss(self, mean_loss: float) -> dict[str, float]:
        return {"perplexity": perplexity(mean_loss)}


def tie_word_embeddings(head: Any, config: Any) -> None:
    """The exported model ties its output to the input embeddings exactly when the head does."""
    config.tie_word_embeddings = bool(head.config.tie_embeddings)


class LMHead(HeadBase):
    """Shared by the two language-modelling heads below, which differ in `causal`."""

    per_token = True
    scoring = TokenScores()
    pretrained_lr = 1e-3  # its decoder comes from the checkpoint (or is the tied input embeddings)
    causal: bool

    def __init__(self, config: LMConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise HeadConfigError(f"a '{config.type}' head needs vocab_size > 0 (the tokenizer's size)")
        self.config: LMConfig = config
        assert config.input_size is not None  # build_head refuses a config without it
        h = config.input_size
        # BERT's MLM head transforms before decoding; causal heads decode directly.
        self.transform = (
            nn.Identity()
            if self.causal
            else nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=config.layer_norm_eps or LAYER_NORM_EPS))
        )
        self.decoder = nn.Linear(h, config.vocab_size, bias=not self.causal)

    def tie_to(self, embeddings: nn.Module) -> None:
        """Share the decoder weight with the backbone's input embeddings."""
        weight = getattr(embeddings, "weight", None)
        if weight is None or tuple(weight.shape) != tuple(self.decoder.weight.shape):
            got = None if weight is None else tuple(weight.shape)
            raise HeadMismatchError(
                f"cannot tie the '{self.config.type}' head: its decoder is {tuple(self.decoder.weight.shape)} "
                f"(vocab x hidden) but the backbone's input embeddings are {got}; set vocab_size to the "
                "tokenizer's size, or tie_embeddings=False"
            )
        self.decoder.weight = weight

    def attach(self, backbone: Backbone) -> None:
        if self.config.tie_embeddings:  # resolved from the checkpoint before the head was built (fitted_to)
            self.tie_to(backbone.get_input_embeddings())

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden))  # (B, T, V)

    def _aligned(self, output: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.causal:  # position t predicts token t + 1
            return output[:, :-1], labels[:, 1:]
        return output, labels

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        logits, targets = self._aligned(output, labels)
        n = int((targets != IGNORE_INDEX).any(dim=1).sum())
        if n == 0:
            return zero_loss(output), 0
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.long().flatten(), ignore_index=IGNORE_INDEX)
        return loss, n

    def decode(self, output: Tensor, mask: Tensor) -> list[list[int]]:
        return real_positions(output.argmax(-1), mask)


class MaskedLMHead(LMHead):
    """BERT-style: predicts the token at each masked position (transform, then a tied decoder)."""

    causal = False
    codec = TokenIdCodec(causal=False)
    export = ExportSpec("AutoModelForMaskedLM", "fill-mask", ("ForMaskedLM",), fill=tie_word_embeddings)


class CausalLMHead(LMHead):
    """GPT/Llama-style: position t predicts token t + 1 (a tied decoder, no transform)."""

    causal = True
    codec = TokenIdCodec(causal=True)
    export = ExportSpec(
        "AutoModelForCausalLM", "text-generation", ("ForCausalLM", "LMHeadModel"), fill=tie_word_embeddings
    )
