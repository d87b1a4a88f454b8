"""Single-label classification, and what the pooled classifiers share (multilabel.py, regression.py).

All three are `pool -> dropout -> linear` (PooledHead; hidden layers before the linear one on
request, heads/mlp.py); they differ in labels, loss, decoding and metric. Label tensors:
single-label (B,) long with -100 for missing; multi-label (B, C) float 0/1 and regression (B, K)
float, NaN for missing values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headkit.heads.base import HeadBase, class_loss
from headkit.heads.codecs import IndexCodec
from headkit.heads.export import ExportSpec, label_maps
from headkit.heads.fewshot import FewShot, class_solution
from headkit.heads.mlp import MLPConfig, output_layers
from headkit.heads.pooling import check_pooling
from headkit.heads.presentation import View
from headkit.heads.scoring import ClassScores

SEQUENCE_CLASSIFICATION = "AutoModelForSequenceClassification"  # holds all three, told apart by problem_type


@dataclass(frozen=True)
class ClassificationConfig(MLPConfig):
    """`labels` are class names (classification, multilabel) or target names (regression)."""

    type: str = "classification"
    threshold: float = 0.5  # multi-label: a class is predicted when its probability exceeds this
    thresholds: list[float] | None = None  # multi-label: one threshold per label (tuned ones live in the head)
    class_weights: list[float] | None = None  # loss weight per label (multi-label: BCE's pos_weight)
    normalize: bool = False  # L2-normalise the pooled vector first (fewshot: contrastive tuning shapes directions)


def sequence_classification(problem_type: str) -> ExportSpec:
    """AutoModelForSequenceClassification with transformers' name for the kind of classification."""
    return ExportSpec(SEQUENCE_CLASSIFICATION, "text-classification", fill=label_maps(problem_type))


class PooledHead(HeadBase):
    """pool -> dropout -> linear (or an MLP: heads/mlp.py); the three types differ in labels,
    loss, decode and score."""

    min_labels = 1

    def __init__(self, config: ClassificationConfig):
        super().__init__()
        config.require_labels(self.min_labels)
        check_pooling(config.pooling)
        self.config: ClassificationConfig = config
        assert config.input_size is not None  # build_head refuses a config without it
        self.classifier = output_layers(config, len(config.labels))

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        """(B, H) -> (B, C): used directly with cached pooled features."""
        if self.config.normalize:
            pooled = F.normalize(pooled.float(), dim=-1).to(pooled.dtype)
        return self.classifier(pooled)

    @torch.no_grad()
    def scale_output(self, factor: float) -> None:
        """Multiply the outputs by `factor` in the output layer's own weights: a fitted temperature
        (1 / T) lives there, so every path that runs the head (predict, serve, ONNX, a
        transformers export) gives the calibrated scores without knowing of it."""
        output: nn.Linear = self.classifier[-1]  # type: ignore[assignment]  # output_layers ends in its Linear
        output.weight.mul_(factor)
        output.bias.mul_(factor)
        # inside an autocast region (a run's final scores) torch reuses its low-precision copy of a
        # weight cast before: without this, the heads would be scored again on the old weights
        torch.clear_autocast_cache()


class ClassView(View):
    """A class and every class's probability: {"label", "probs"}."""

    def brief(self, prediction: Any) -> str:
        return f"{prediction['label']} ({prediction['probs'][prediction['label']]:.2f})"

    def pipeline_output(self, prediction: Any) -> dict[str, Any]:
        """text-classification's {"label", "score"}."""
        return {"label": prediction["label"], "score": prediction["probs"][prediction["label"]]}

    def table_cells(self, prediction: Any) -> dict[str, Any]:
        return {"": prediction["label"], **{f".p.{k}": round(v, 6) for k, v in prediction["probs"].items()}}


class ClassificationHead(PooledHead):
    """Single-label classification: softmax over `labels`, cross-entropy loss."""

    min_labels = 2
    codec = IndexCodec()
    scoring = ClassScores()
    view = ClassView()
    export = sequence_classification("single_label_classification")
    fewshot = FewShot(class_solution)

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        return class_loss(output, labels, self.config.class_weights)

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[dict[str, Any]]:
        probs = output.float().softmax(-1).tolist()
        names = self.config.labels
        return [{"label": names[int(np.argmax(p))], "probs": dict(zip(names, p, strict=True))} for p in probs]
