"""The head contract, tested the way a user extends it: a head type defined here, in a test file,
trains, saves, loads, predicts, evaluates and exports with no change to src/.

The head is a cosine classifier (normalised pooled vector against learned class prototypes,
times a scale), a real head type some papers prefer for few-shot classification. It defines its
module (forward_pooled, loss, decode) and picks ready-made parts for the rest: the label codec
of one class per example and that layout's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import headkit
from headkit.cli.main import main
from headkit.data.tasks import TaskSpec
from headkit.errors import ExportError
from headkit.heads import REGISTRY, HeadBase, HeadConfig, register_head
from headkit.heads.base import class_loss
from headkit.heads.codecs import IndexCodec
from headkit.heads.scoring import ClassScores
from headkit.ship.export import export_onnx, export_transformers
from headkit.ship.predict import load_for_inference, predict_texts
from headkit.training.evaluate import evaluate_dataset
from headkit.training.recipe import TrainConfig, train

from conftest import sentiment_rows, write_csv


@dataclass(frozen=True)
class CosineConfig(HeadConfig):
    type: str = "cosine"
    pooling: str = "mean"
    scale: float = 10.0


class CosineHead(HeadBase):
    codec = IndexCodec()  # one class per example: the label map, its encoding, the references
    scoring = ClassScores()  # accuracy and macro F1 of the decoded `label`

    def __init__(self, config: CosineConfig):
        super().__init__()
        self.config = config
        self.prototypes = nn.Parameter(torch.randn(len(config.labels), config.input_size) * 0.02)

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        return self.config.scale * F.normalize(pooled, dim=-1) @ F.normalize(self.prototypes, dim=-1).T

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        return class_loss(output, labels)

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[dict[str, Any]]:
        cosines = output.float() / self.config.scale
        best = cosines.argmax(-1).tolist()
        return [{"label": self.config.labels[i], "cosine": float(c[i])} for i, c in zip(best, cosines, strict=True)]


@pytest.fixture
def cosine_type():
    register_head("cosine", CosineConfig, CosineHead)
    yield "cosine"
    REGISTRY.pop("cosine")


def test_a_head_type_from_outside_src_goes_through_the_whole_life_cycle(cosine_type, tiny_text_model, tmp_path, capsys):
    data = str(write_csv(tmp_path / "reviews.csv", sentiment_rows(48)))
    run = tmp_path / "run"
    config = TrainConfig(
        model=str(tiny_text_model),
        tasks=[TaskSpec("mood", data, type=cosine_type), TaskSpec("sentiment", data)],
        output_dir=str(run),
        strategy="full",
        epochs=3,
        batch_size=8,
        lr=1e-2,
        backbone_lr=1e-3,
        val_fraction=0.25,
        progress=False,
    )
    result = train(config)  # train (and validate, plot, save)
    assert set(result.metrics["heads"]["mood"]) == {"accuracy", "f1_macro"}  # the metrics it picked, in metrics.json

    model, tokenizer = load_for_inference(run)  # load
    assert isinstance(model.heads["mood"], CosineHead)
    texts = ["the film was good", "the plot was awful"]
    predicted = predict_texts(model, tokenizer, texts)  # predict
    assert all(p["mood"]["label"] in ("neg", "pos") and -1.0 <= p["mood"]["cosine"] <= 1.0 for p in predicted)

    evaluation, n = evaluate_dataset(model, tokenizer, data, columns={"mood": "label"})  # evaluate
    assert n == 48 and 0.0 <= evaluation.scores["mood"]["accuracy"] <= 1.0

    export_onnx(run, tmp_path / "onnx")  # export: every head in one ONNX graph
    onnx_model, onnx_tokenizer = load_for_inference(tmp_path / "onnx", engine="onnx")
    from_onnx = predict_texts(onnx_model, onnx_tokenizer, texts)
    assert [p["mood"]["label"] for p in from_onnx] == [p["mood"]["label"] for p in predicted]
    assert from_onnx[0]["mood"]["cosine"] == pytest.approx(predicted[0]["mood"]["cosine"], abs=1e-4)
    with pytest.raises(ExportError, match="no AutoModelFor"):  # no transformers class: said, not crashed
        export_transformers(run, tmp_path / "hf", head="mood")

    assert main(["predict", str(run), "--text", "a lovely story"]) == 0  # the CLI prints it too
    assert "mood: label=" in capsys.readouterr().out
    assert isinstance(headkit.load(run / "model").heads["mood"], CosineHead)
