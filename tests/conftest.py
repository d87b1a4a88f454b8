"""Tiny randomly initialised models, saved to temporary directories, for fast offline tests."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers

VOCAB = 100
TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_config(kind: str) -> transformers.PretrainedConfig:
    """A config small enough that a model builds in milliseconds."""
    if kind == "bert":
        return transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **TEXT)
    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    if kind == "llama":
        return transformers.LlamaConfig(
            vocab_size=VOCAB, max_position_embeddings=64, num_key_value_heads=1, tie_word_embeddings=True, **TEXT
        )
    if kind == "vit":
        return transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, **TEXT)
    if kind == "wav2vec2":
        return transformers.Wav2Vec2Config(
            vocab_size=12,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 4),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            **TEXT,
        )
    raise ValueError(kind)


ARCHITECTURES = {
    # class name: config kind
    "BertModel": "bert",
    "BertForMaskedLM": "bert",
    "BertForSequenceClassification": "bert",
    "BertForTokenClassification": "bert",
    "BertForQuestionAnswering": "bert",
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "Wav2Vec2ForCTC": "wav2vec2",
    "ViTForImageClassification": "vit",
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: class name -> directory holding a saved tiny random model of that class."""
    made: dict[str, Path] = {}

    def make(architecture: str) -> Path:
        if architecture not in made:
            torch.manual_seed(0)
            model = getattr(transformers, architecture)(tiny_config(ARCHITECTURES[architecture]))
            path = tmp_path_factory.mktemp(architecture)
            model.save_pretrained(path)
            made[architecture] = path
        return made[architecture]

    return make


@pytest.fixture
def bert_backbone():
    torch.manual_seed(0)
    return transformers.BertModel(tiny_config("bert")).eval()


def text_batch(batch: int = 4, length: int = 7, pad_last: int = 2) -> dict[str, torch.Tensor]:
    """Random token ids with the last `pad_last` positions of the final example padded."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if pad_last:
        attention_mask[-1, -pad_last:] = 0
        input_ids[-1, -pad_last:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
