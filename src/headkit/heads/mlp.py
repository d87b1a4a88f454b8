"""Deeper pooled heads: hidden layers between the pooled vector and the output layer.

A pooled head is one linear layer by default (BERT's task heads). Its config may ask for
`hidden_layers` (each `hidden_size` wide, `activation` after it), as adapters and
transformer-heads offer, for features a line cannot separate; frozen backbones gain most.

The layers are laid out as RoBERTa's classification head is (dropout, dense, activation, dropout,
out_proj), so one hidden layer of the backbone's width with `tanh` on `cls` pooling is exactly
`RobertaForSequenceClassification`'s head and exports to it; with none, the layout is the
linear head's (`classifier.1` is the output layer) and saved heads load as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from headkit.errors import HeadConfigError
from headkit.heads.base import HeadConfig


@dataclass(frozen=True)
class MLPConfig(HeadConfig):
    """The fields of a pooled head whose output layer may sit on hidden layers."""

    hidden_layers: int = 0  # 0: the linear head
    hidden_size: int | None = None  # each hidden layer's width; None: the input's (the backbone's hidden size)
    activation: str = "gelu"  # after each hidden layer: a name in transformers.activations.ACT2FN

    def __post_init__(self) -> None:
        if isinstance(self.hidden_layers, bool) or not isinstance(self.hidden_layers, int) or self.hidden_layers < 0:
            raise HeadConfigError(f"hidden_layers is a count of layers (0, 1, 2 ...), got {self.hidden_layers!r}")
        if self.hidden_size is not None and (not isinstance(self.hidden_size, int) or self.hidden_size < 1):
            raise HeadConfigError(f"hidden_size is a positive width, got {self.hidden_size!r}")
        if self.hidden_size is not None and not self.hidden_layers:
            raise HeadConfigError(
                f"hidden_size={self.hidden_size} sizes hidden layers and this head has none: set hidden_layers too"
            )
        from transformers.activations import ACT2CLS

        if self.activation not in ACT2CLS:
            raise HeadConfigError(f"unknown activation '{self.activation}'; known: {sorted(ACT2CLS)}")


def output_layers(config: MLPConfig, out_features: int) -> nn.Sequential:
    """dropout -> linear with no hidden layers; else dropout -> (linear -> activation -> dropout)
    per hidden layer -> linear. The last module is the output layer."""
    from transformers.activations import ACT2FN

    assert config.input_size is not None  # build_head refuses a config without it
    width = config.hidden_size or config.input_size
    layers: list[nn.Module] = [nn.Dropout(config.dropout)]
    size = config.input_size
    for _ in range(config.hidden_layers):
        layers += [nn.Linear(size, width), ACT2FN[config.activation], nn.Dropout(config.dropout)]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, out_features))
