"""The sequence-to-sequence head: a decoder that writes a text conditioned on the backbone's states.

    hidden (B, T, H), mask (B, T) = the encoder's memory  ->  decoder with cross-attention
        training:   teacher forcing: decoder reads [start, y1 .. yn] and predicts [y1 .. yn, end]
        decoding:   greedy or beam search from the start token until the end token

On an encoder backbone (BERT, RoBERTa, MiniLM ...) the decoder is the backbone's own
architecture as a causal LM with cross-attention added (`is_decoder`, `add_cross_attention`),
warm-started from the backbone's weights: the BERT2BERT recipe of Rothe et al. (2020), the one
transformers' `EncoderDecoderModel.from_encoder_decoder_pretrained` follows. Only the
cross-attention layers start from random weights; the LM output is tied to the decoder's word
embeddings.

On an encoder-decoder checkpoint (T5, BART, Marian, Whisper: `AutoModelForSeq2SeqLM`) the
backbone is the checkpoint's base model, heads read its encoder, and this head *is* the
checkpoint's own decoder: its `...ForConditionalGeneration` shares the backbone's encoder, decoder
and embeddings (so frozen / partial / full / LoRA apply to the decoder as to the rest of the
backbone) and owns only the LM output (`lm_head`, tied to the shared embeddings where the
checkpoint ties it, else imported from the checkpoint's weights) — the pretrained model, whole.

The head's output is its memory (the hidden states it attends to, unchanged): the loss runs the
decoder with teacher forcing on the labels, `decode` generates. So one backbone pass serves this
head and every other head of a MultiHeadModel. The head needs the tokenizer (start/end tokens,
text out): MultiHeadModel hands it over (`needs_processor`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
)

from headkit._typing import Backbone
from headkit.errors import HeadConfigError, HeadMismatchError
from headkit.heads.base import HeadBase, HeadConfig, zero_loss
from headkit.heads.codecs import TextCodec
from headkit.heads.codecs.sequence import special_tokens
from headkit.heads.export import ExportSpec
from headkit.heads.labels import IGNORE_INDEX
from headkit.heads.presentation import View
from headkit.heads.scoring import Scoring, perplexity

logger = logging.getLogger(__name__)

SEQ2SEQ = "seq2seq"
TOKENS = ("start_token_id", "end_token_id", "pad_token_id")
# keys of a backbone's config that describe the checkpoint, not the decoder built from it
NOT_ARCHITECTURE = ("architectures", "_name_or_path", "quantization_config", "torch_dtype", "dtype", "auto_map")


@dataclass(frozen=True)
class Seq2SeqConfig(HeadConfig):
    """A decoder head. `decoder` is the transformers config of the decoder (filled from the
    backbone's own when empty); the token ids come from the tokenizer when left None."""

    type: str = SEQ2SEQ
    pooling: str = "none"
    decoder: dict[str, Any] = field(default_factory=dict)
    decoder_layers: int | None = None  # None: as many layers as the backbone
    warm_start: bool = True  # start the decoder from the backbone's weights (BERT2BERT)
    start_token_id: int | None = None  # None: the tokenizer's (the head is handed it: use_processor)
    end_token_id: int | None = None
    pad_token_id: int | None = None
    max_new_tokens: int = 64  # generation length limit (a server or the CLI may ask for others: set_generation)
    num_beams: int = 1  # 1: greedy search

    def fitted_to(self, backbone: Backbone) -> Seq2SeqConfig:
        """The decoder's config, from the backbone's own when empty."""
        if self.decoder:
            return self
        decoder = {k: v for k, v in backbone.config.to_dict().items() if k not in NOT_ARCHITECTURE}
        if not decoder.get("is_encoder_decoder"):  # an encoder: its architecture as a decoder (BERT2BERT)
            decoder.update(is_decoder=True, add_cross_attention=True, tie_word_embeddings=True)
            if self.decoder_layers is not None:
                decoder["num_hidden_layers"] = self.decoder_layers
        return dataclasses.replace(self, decoder=decoder)

    @property
    def on_encoder_decoder(self) -> bool:
        """The backbone is an encoder-decoder checkpoint whose own decoder this head drives."""
        return bool(self.decoder.get("is_encoder_decoder"))


class TextScores(Scoring):
    """ROUGE of the generated texts against the targets; perplexity from the mean loss."""

    primary = "rougeL"
    metrics: ClassVar[dict[str, bool]] = {"rouge1": True, "rouge2": True, "rougeL": True, "perplexity": False}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        from rouge_score import rouge_scorer

        pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
        if not pairs:
            return {}
        kinds = ["rouge1", "rouge2", "rougeL"]
        scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
        as_text = [(_as_text(p), _as_text(r)) for p, r in pairs]
        scores = [scorer.score(r, p) for p, r in as_text]
        return {k: float(np.mean([s[k].fmeasure for s in scores])) for k in kinds}

    def scores_from_loss(self, mean_loss: float) -> dict[str, float]:
        return {"perplexity": perplexity(mean_loss)}


class TextView(View):
    writes_text = True

    def pipeline_output(self, prediction: Any) -> Any:
        return {"generated_text": prediction}


class Seq2SeqHead(HeadBase):
    """A text-generating head on any encoder backbone; see the module docstring."""

    per_token = True  # reads every position (the memory), no pooling
    needs_processor = True
    pretrained_lr = 1e-3  # a decoder of pretrained layers (warm-started from the encoder or a checkpoint)
    codec = TextCodec()
    scoring = TextScores()
    view = TextView()
    export = ExportSpec(
        pipeline_tag="text2text-generation",
        # T5ForConditionalGeneration, BartForConditionalGeneration, MarianMTModel, WhisperForConditionalGeneration ...
        architectures=(
            *MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values(),
            *MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.values(),
        ),
    )

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

        if not config.decoder:
            raise HeadConfigError("a seq2seq head needs its decoder config; attach it to a backbone (fitted_to)")
        self.config: Seq2SeqConfig = config
        settings = dict(config.decoder)
        model_type = settings.pop("model_type", None)
        auto = AutoModelForSeq2SeqLM if config.on_encoder_decoder else AutoModelForCausalLM
        try:
            decoder_config = AutoConfig.for_model(model_type, **settings)
            if "tie_word_embeddings" in settings:  # T5's config forces True in __init__; the saved value decides
                decoder_config.tie_word_embeddings = settings["tie_word_embeddings"]
            self.decoder = auto.from_config(decoder_config)
        except (ValueError, KeyError) as e:
            raise HeadMismatchError(
                f"a seq2seq head cannot be built on a '{model_type}' backbone: transformers has no causal-LM "
                f"decoder with cross-attention for it ({e}); use an encoder-decoder checkpoint (T5, BART) or a "
                "BERT-, RoBERTa- or GPT-2-style backbone"
            ) from e
        if not config.on_encoder_decoder and not getattr(self.decoder.config, "add_cross_attention", False):
            raise HeadMismatchError(f"the '{model_type}' decoder does not support cross-attention to an encoder")
        self.tokenizer: Any = None
        self.token_ids = {name: getattr(config, name) for name in TOKENS}  # None: the tokenizer's (use_processor)
        self.generation = {"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams}

    def use_processor(self, processor: Any) -> None:
        """Write text with `processor`; its start / end / padding ids where the config names none."""
        self.tokenizer = processor
        given, found = {name: getattr(self.config, name) for name in TOKENS}, special_tokens(processor)
        self.token_ids = {name: found[name] if given[name] is None else given[name] for name in TOKENS}

    def set_generation(self, max_new_tokens: int | None = None, num_beams: int | None = None) -> None:
        for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
            if value is not None:
                if value < 1:
                    raise HeadConfigError(f"{name} must be at least 1, got {value}")
                self.generation[name] = value

    def attach(self, backbone: Backbone) -> None:
        base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
        if self.config.on_encoder_decoder:
            self._share(base)
            return
        if not self.config.warm_start:
            return
        state = base.state_dict()
        result = self.decoder.base_model.load_state_dict(state, strict=False)
        if not set(state) - set(result.unexpected_keys):
            logger.info("note: the seq2seq decoder shares no weights with this backbone; it starts from random weights")

    def _share(self, base: Backbone) -> None:
        """Make the ...ForConditionalGeneration hold the backbone's own modules (T5: shared, encoder,
        decoder; BART: the whole base model) and tie or import its LM output."""
        theirs = dict(base.named_children())
        for name, child in list(self.decoder.named_children()):
            if type(child) is type(base):
                setattr(self.decoder, name, base)
            elif name in theirs and type(theirs[name]) is type(child):
                setattr(self.decoder, name, theirs[name])
        output = self.decoder.get_output_embeddings()
        if getattr(self.decoder.config, "tie_word_embeddings", False):
            output.weight = base.get_input_embeddings().weight
        if self.config.warm_start:
            self._import_output(getattr(base.config, "name_or_path", ""))

    def _import_output(self, checkpoint: str) -> None:
        """The checkpoint's own LM output (an untied lm_head, BART's final_logits_bias), when its files have it."""
        from pathlib import Path

        from safetensors import safe_open

        shared = {id(p) for n, p in self.decoder.named_parameters() if not n.startswith("lm_head")}
        own = dict(self.decoder.named_parameters()) | dict(self.decoder.named_buffers())
        names = {
            n for n, t in own.items() if (n.startswith("lm_head") or n == "final_logits_bias") and id(t) not in shared
        }
        for file in sorted(Path(checkpoint).glob("*.safetensors")) if checkpoint else []:
            with safe_open(str(file), framework="pt") as weights, torch.no_grad():
                for name in names & set(weights.keys()):
                    own[name].copy_(weights.get_tensor(name))

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return hidden  # (B, T, H): the memory the decoder attends to

    def _token(self, name: str) -> int:
        value = self.token_ids[name]
        if value is None:
            raise HeadConfigError(f"the seq2seq head has no {name}: give the model its tokenizer (set_processor)")
        return value

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, int]:
        present = (labels != IGNORE_INDEX).any(dim=1)  # (B,)
        n = int(present.sum())
        if n == 0:
            return zero_loss(output), 0
        labels = labels[present]
        inputs = labels[:, :-1]  # teacher forcing: [start, y1 .. yn] -> [y1 .. yn, end]
        targets = labels[:, 1:]
        logits = self._logits(
            inputs.masked_fill(inputs == IGNORE_INDEX, self._token("pad_token_id")),
            (inputs != IGNORE_INDEX).long(),
            output[present],
            mask[present],
        )  # (n, L - 1, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return loss, n

    def _logits(self, ids: Tensor, ids_mask: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        if self.config.on_encoder_decoder:
            from transformers.modeling_outputs import BaseModelOutput

            return self.decoder(
                encoder_outputs=BaseModelOutput(last_hidden_state=memory),
                attention_mask=mask,
                decoder_input_ids=ids,
                decoder_attention_mask=ids_mask,
                use_cache=False,
            ).logits
        return self.decoder(
            input_ids=ids,
            attention_mask=ids_mask,
            encoder_hidden_states=memory,
            encoder_attention_mask=mask,
            use_cache=False,
        ).logits

    @torch.no_grad()
    def generate(
        self, memory: Tensor, mask: Tensor, max_new_tokens: int | None = None, num_beams: int | None = None
    ) -> Tensor:
        """Token ids (B, <= max_new_tokens + 1) generated from the memory, the start token first."""
        from transformers import DynamicCache, EncoderDecoderCache

        options = {
            "max_new_tokens": max_new_tokens or self.generation["max_new_tokens"],
            "num_beams": num_beams or self.generation["num_beams"],
            "do_sample": False,
            "eos_token_id": self._token("end_token_id"),
            "pad_token_id": self._token("pad_token_id"),
        }
        if self.config.on_encoder_decoder:  # the checkpoint's own generate, on the memory
            from transformers.modeling_outputs import BaseModelOutput

            return self.decoder.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=memory),
                attention_mask=mask,
                decoder_start_token_id=self._token("start_token_id"),
                **options,
            )
        start = torch.full((memory.shape[0], 1), self._token("start_token_id"), device=memory.device)
        return self.decoder.generate(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            encoder_hidden_states=memory,
            encoder_attention_mask=mask,
            past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
            **options,
        )

    def text(self, ids: list[int]) -> str | list[int]:
        """Token ids -> the text they spell, up to the end token (ids where no tokenizer was given)."""
        start, end, pad = (self.token_ids[name] for name in TOKENS)
        ids = [i for i in ids if i not in (start, pad)]
        if end in ids:
            ids = ids[: ids.index(end)]
        if self.tokenizer is None:
            return ids
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def decode(self, output: Tensor, mask: Tensor) -> list[Any]:
        return [self.text(row) for row in self.generate(output, mask).tolist()]


def _as_text(value: Any) -> str:
    """ROUGE reads words: a prediction without a tokenizer (token ids) is scored id by id."""
    return value if isinstance(value, str) else " ".join(str(i) for i in value)
