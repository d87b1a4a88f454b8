"""Tiny random members of every model family headkit claims, saved as real checkpoints, and the
matrix of what the conformance suite holds each of them to (tests/contracts/test_conformance.py).

Each family is saved as users meet it: a transformers checkpoint (the pretraining class where the
family has one, so its own head can be imported) with its own kind of tokenizer or processor:
  encoders          BERT, RoBERTa, DeBERTa-v2, DistilBERT, ELECTRA        [CLS] text [SEP]
  decoders          GPT-2 (tied), Llama tied and untied, Mistral (untied), Gemma (tied)   <s> text
  encoder-decoders  T5, BART (their encoders carry the heads)
  vision            ViT, ResNet, ConvNeXt (ConvNeXt's cropping image processor), EfficientNet
  speech            Wav2Vec2 (a layer-norm feature encoder that honours the attention mask)
Widths are 16-32, two layers: a checkpoint builds and saves in milliseconds.

`MATRIX` says which head types apply to each family and which strategies train it; a cell marked
refused must be refused with one clear HeadkitError line. scripts/supported_models.py renders the
supported-models table (docs/supported-models.md) from this matrix and the suite's results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

WORDS = [
    "the",
    "a",
    "film",
    "plot",
    "was",
    "very",
    "good",
    "bad",
    "great",
    "dull",
    "acting",
    "story",
    "paris",
    "london",
    "alice",
    "bob",
    "visited",
    "met",
    "and",
    "superb",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]
VOCAB = [*SPECIAL, *WORDS]
PAD, UNK, CLS, SEP, MASK, BOS, EOS = range(len(SPECIAL))
# initializer_range 0.2 (not 0.02): logits of a random model are then as far apart as a trained one's,
# so that a bf16 rounding does not flip near-ties that a real checkpoint never has
TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "initializer_range": 0.2,
}
DECODER = {**TEXT, "num_key_value_heads": 1, "max_position_embeddings": 64, "pad_token_id": PAD, "bos_token_id": BOS,
           "eos_token_id": EOS}  # fmt: skip

TEXTS = [
    "good",
    "the film was very good",
    "a dull plot and bad acting",
    "alice met bob",
    "the story was great and the acting superb",
    "bob visited paris",
    "bad",
    "a very very dull film",
    "alice visited london and met bob",
    "the plot",
    "superb film great story good acting",
    "london",
]


def many_texts(count: int = 60, seed: int = 0) -> list[str]:
    """Texts of 1 to 12 words, for measuring agreement over many decisions."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 13)))) for _ in range(count)]


TEXT_HEADS = ["classification", "multilabel", "regression", "token-classification", "span", "embedding",
              "multiple-choice", "cross-encoder"]  # fmt: skip
POOLED_HEADS = ["classification", "multilabel", "regression"]
HEADS: dict[str, dict] = {  # a head of every type, by type name (labels where the type needs them)
    "classification": {"labels": ["neg", "mixed", "pos"]},
    "multilabel": {"labels": ["drama", "comedy", "crime"], "hidden_layers": 1, "hidden_size": 24},  # an MLP head
    "regression": {"labels": ["stars", "length"]},
    "token-classification": {"labels": ["O", "B-PER", "I-PER", "B-LOC"]},
    "span": {},
    "masked-lm": {},
    "causal-lm": {},
    "reward": {"hidden_layers": 2, "activation": "tanh"},  # an MLP head, two hidden layers
    "embedding": {"dimensions": 24},  # a projection that changes the width
    "multiple-choice": {"dropout": 0.2},
    "cross-encoder": {"hidden_layers": 1, "activation": "tanh"},  # an MLP head
    "box": {},
    "ctc": {"labels": ["<blank>", "a", "b", "c", "d"]},
    "seq2seq": {"max_new_tokens": 6},
}
STRATEGIES = ["frozen", "partial:1", "full", "lora"]


@dataclass(frozen=True)
class Family:
    """One model family: how to build a tiny checkpoint of it and what applies to it."""

    name: str
    kind: str  # encoder | decoder | encoder-decoder | vision | speech
    config: Callable[[], transformers.PretrainedConfig]
    architecture: str  # the transformers class saved (its head is what `inspect` and import see)
    heads: list[str]
    refused: dict[str, str] = field(default_factory=dict)  # strategy -> the error's words, for refused cells
    template: str = "[CLS] $A [SEP]"  # how its tokenizer frames a text (text families)
    lm_import: bool = False  # its pretraining head is imported exactly by the LM head of its type
    exports: tuple[str, ...] = ()  # head types with an exact plain-transformers export (the others: refused)

    @property
    def text(self) -> bool:
        return self.kind in ("encoder", "decoder", "encoder-decoder")

    @property
    def lm_head(self) -> str | None:
        return next((h for h in self.heads if h in ("masked-lm", "causal-lm")), None)


# Pooled heads export to no plain transformers class on these families: BERT's reads the tanh pooler
# (pooling: pooler exports), RoBERTa's, DeBERTa's, DistilBERT's, ELECTRA's, T5's and BART's add a
# dense layer, decoders' have no bias; vision and speech classes are not AutoModelForSequenceClassification.
PER_TOKEN_EXPORTS = ("token-classification", "span")


def _encoder(name: str, config: Callable, architecture: str, lm_import: bool = True, more: tuple = (), **kw) -> Family:
    exports = (*PER_TOKEN_EXPORTS, "masked-lm", *more) if lm_import else (*PER_TOKEN_EXPORTS, *more)
    return Family(
        name, "encoder", config, architecture, [*TEXT_HEADS, "masked-lm"], lm_import=lm_import, exports=exports, **kw
    )


def _decoder(
    name: str, config: Callable, architecture: str, template: str = "<s> $A", exports=(*PER_TOKEN_EXPORTS, "causal-lm")
) -> Family:
    heads = [*TEXT_HEADS, "causal-lm", "reward"]
    return Family(name, "decoder", config, architecture, heads, template=template, lm_import=True, exports=exports)


CNN_REFUSALS = {"partial:1": "layer stack", "lora": "LoRA could not be applied"}
V = len(VOCAB)
FAMILIES: list[Family] = [
    _encoder("bert", lambda: transformers.BertConfig(vocab_size=V, max_position_embeddings=64, **TEXT),
             "BertForMaskedLM"),
    _encoder("roberta", lambda: transformers.RobertaConfig(vocab_size=V, max_position_embeddings=66, pad_token_id=PAD,
             bos_token_id=CLS, eos_token_id=SEP, layer_norm_eps=1e-5, **TEXT), "RobertaForMaskedLM",
             more=("cross-encoder",)),  # one tanh layer on cls: RoBERTa's own classification head
    _encoder("deberta-v2", lambda: transformers.DebertaV2Config(vocab_size=V, max_position_embeddings=64,
             relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"], position_buckets=16,
             norm_rel_ebd="layer_norm", share_att_key=True, layer_norm_eps=1e-7, **TEXT), "DebertaV2ForMaskedLM"),
    _encoder("distilbert", lambda: transformers.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=2,
             hidden_dim=64, max_position_embeddings=64, initializer_range=0.2), "DistilBertForMaskedLM"),
    # ELECTRA's generator projects to a narrower embedding: its head is not the LM head's shape, so
    # the masked-LM head starts new (untied) there instead of importing it
    _encoder("electra", lambda: transformers.ElectraConfig(vocab_size=V, embedding_size=16, max_position_embeddings=64,
             **TEXT), "ElectraForMaskedLM", lm_import=False),
    _decoder("gpt2", lambda: transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2,
             initializer_range=0.2, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD), "GPT2LMHeadModel",
             template="$A"),
    _decoder("llama-tied", lambda: transformers.LlamaConfig(vocab_size=V, tie_word_embeddings=True, **DECODER),
             "LlamaForCausalLM"),
    _decoder("llama-untied", lambda: transformers.LlamaConfig(vocab_size=V, tie_word_embeddings=False, **DECODER),
             "LlamaForCausalLM"),
    _decoder("mistral", lambda: transformers.MistralConfig(vocab_size=V, sliding_window=None, **DECODER),
             "MistralForCausalLM"),
    _decoder("gemma", lambda: transformers.GemmaConfig(vocab_size=V, head_dim=16, **DECODER), "GemmaForCausalLM",
             exports=("token-classification", "causal-lm")),  # transformers has no GemmaForQuestionAnswering
    Family("t5", "encoder-decoder", lambda: transformers.T5Config(vocab_size=V, d_model=32, d_kv=16, d_ff=64,
           num_layers=2, num_heads=2, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD),
           "T5ForConditionalGeneration", [*TEXT_HEADS, "seq2seq"], template="$A </s>"),
    Family("bart", "encoder-decoder", lambda: transformers.BartConfig(vocab_size=V, d_model=32, encoder_layers=2,
           decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
           decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
           decoder_start_token_id=EOS, forced_eos_token_id=None, init_std=0.2), "BartForConditionalGeneration",
           [*TEXT_HEADS, "seq2seq"], template="<s> $A </s>"),
    Family("vit", "vision", lambda: transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, **TEXT),
           "ViTModel", [*POOLED_HEADS, "box"]),
    Family("resnet", "vision", lambda: transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
           depths=[1, 1], layer_type="basic"), "ResNetModel", [*POOLED_HEADS, "box"], refused=CNN_REFUSALS),
    Family("convnext", "vision", lambda: transformers.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16],
           depths=[1, 1], num_stages=2), "ConvNextModel", [*POOLED_HEADS, "box"]),
    Family("efficientnet", "vision", lambda: transformers.EfficientNetConfig(image_size=32, width_coefficient=0.1,
           depth_coefficient=0.1, hidden_dim=128), "EfficientNetModel", [*POOLED_HEADS, "box"], refused=CNN_REFUSALS),
    Family("wav2vec2", "speech", lambda: transformers.Wav2Vec2Config(vocab_size=8, conv_dim=(16, 16),
           conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
           feat_extract_norm="layer", do_stable_layer_norm=True, **TEXT), "Wav2Vec2Model",
           ["classification", "regression", "ctc"], exports=("ctc",)),
]  # fmt: skip
BY_NAME = {f.name: f for f in FAMILIES}


def tokenizer(family: Family) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over the test words that frames texts as the family does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    pair = (
        family.template.replace("$A", "$A:0").replace("[SEP]", "[SEP]:0")
        + " $B:1"
        + (" [SEP]:1" if "[SEP]" in family.template else "")
    )
    specials = [(t, VOCAB.index(t)) for t in SPECIAL if t in family.template]
    core.post_processor = processors.TemplateProcessing(single=family.template, pair=pair, special_tokens=specials)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="<s>",
        eos_token="</s>",
    )


def processor(family: Family):
    """The tokenizer, image processor or feature extractor a checkpoint of the family ships."""
    if family.text:
        return tokenizer(family)
    if family.name == "vit":
        return transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    if family.name in ("resnet", "convnext"):  # what real ResNet / ConvNeXt checkpoints ship: it crops
        return transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    if family.name == "efficientnet":
        return transformers.EfficientNetImageProcessor(size={"height": 32, "width": 32})
    return transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True)


def save_checkpoint(family: Family, directory: Path) -> Path:
    """A tiny random checkpoint of the family (seeded), with its processor."""
    torch.manual_seed(0)
    model = getattr(transformers, family.architecture)(family.config())
    model.save_pretrained(directory)
    processor(family).save_pretrained(directory)
    return directory


def move_batchnorm_statistics(backbone: torch.nn.Module) -> None:
    """Running means and variances off their defaults (0 and 1), so a BatchNorm buffer lost on the
    way (a save, an export, a cast) changes the outputs instead of passing unseen."""
    with torch.no_grad():
        for name, buffer in backbone.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)


def images(count: int = 6, seed: int = 0) -> list:
    """RGB images of varied, mostly non-square sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(48, 32), (32, 48), (40, 40), (64, 24), (30, 50), (36, 36)]
    return [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
        for w, h in (sizes[i % len(sizes)] for i in range(count))
    ]


def waveforms(count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Audio clips of different lengths (16 kHz)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in (4000, 2400, 3200, 1600)[:count]]


# ----------------------------------------------------------------------------- the supported-models table

TABLE_HEADS = ["classification", "multilabel", "regression", "token-classification", "span", "masked-lm",
               "causal-lm", "reward", "seq2seq", "box", "ctc"]  # fmt: skip
KIND_NAMES = {"encoder": "encoder", "decoder": "decoder", "encoder-decoder": "enc-dec", "vision": "vision",
              "speech": "speech"}  # fmt: skip
MARKERS = ("<!-- supported-models:start -->", "<!-- supported-models:end -->")


def supported_models_table(failed: set[str] | None = None) -> str:
    """The supported-models table (docs/supported-models.md), from the matrix above: ✓ a cell every invariant holds
    for, — refused with one clear error, blank not applicable, ✗ a conformance test failed
    (`failed`: the family names, `family-head` and `family-strategy` cells with a failing test)."""
    failed = failed or set()

    def mark(cell: str, family: str, ok: str = "✓") -> str:
        return "✗" if cell in failed or family in failed else ok

    columns = ["family", "checkpoint", *TABLE_HEADS, *(s.split(":")[0] for s in STRATEGIES), "ONNX",
               "transformers export"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for f in FAMILIES:
        heads = [mark(f"{f.name}-{h}", f.name) if h in f.heads else "" for h in TABLE_HEADS]
        trains = f.kind != "speech"
        strategies = [
            (mark(f"{f.name}-{s}", f.name, "—" if s in f.refused else "✓") if trains else "") for s in STRATEGIES
        ]
        exports = ", ".join(h for h in f.heads if h in f.exports) or "—"
        lines.append(
            f"| {f.name} ({KIND_NAMES[f.kind]}) | `{f.architecture}` | " + " | ".join(heads + strategies)
            + f" | {mark(f'{f.name}-onnx', f.name)} | {exports} |"
        )  # fmt: skip
    return "\n".join(lines)
