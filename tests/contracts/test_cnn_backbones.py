"""Convolutional backbones from transformers (ResNet, ConvNeXt, EfficientNet) keep every promise of
the ViT path: the feature map becomes positions, widths come from the config, and training,
head-only saves, predict --image, ONNX and serving work with a class head and a box head."""

from pathlib import Path

import pytest
import torch
import transformers

from headkit import HeadMismatchError, MultiHeadModel, head_config
from headkit.backbone import inspect_model
from headkit.data.shapes import SHAPES, write_shapes
from headkit.data.tasks import TaskSpec
from headkit.training.recipe import TrainConfig, train

CONFIGS = {
    "resnet": lambda: transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    ),
    "convnext": lambda: transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
    "efficientnet": lambda: transformers.EfficientNetConfig(
        image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128
    ),
}
WIDTHS = {"resnet": 16, "convnext": 16, "efficientnet": 128}


def save_cnn(directory: Path, kind: str) -> Path:
    torch.manual_seed(0)
    transformers.AutoModel.from_config(CONFIGS[kind]()).save_pretrained(directory)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return write_shapes(tmp_path_factory.mktemp("shapes"), train=24, validation=8, test=8, size=32)


@pytest.fixture(scope="module", params=["resnet", "convnext"])
def cnn(request, tmp_path_factory) -> Path:
    return save_cnn(tmp_path_factory.mktemp(request.param), request.param)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_the_feature_map_becomes_positions_of_the_last_stage_width(kind, tmp_path):
    heads = {
        "shape": head_config("classification", labels=list(SHAPES), pooling="mean"),
        "box": head_config("box", pooling="max"),
    }
    model = MultiHeadModel.from_pretrained(save_cnn(tmp_path, kind), heads).eval()
    assert model.hidden_size == WIDTHS[kind]
    pixels = torch.randn(2, 3, 32, 32)
    features = model.forward_features({"pixel_values": pixels})
    hidden, mask = features.at(-1), features.mask
    feature_map = model.backbone(pixel_values=pixels).last_hidden_state  # (B, C, H, W)
    assert hidden.shape == (2, feature_map.shape[2] * feature_map.shape[3], WIDTHS[kind]) and bool(mask.all())
    # mean pooling over positions is global average pooling of the map
    assert torch.allclose(model.adapter.pooled(features, "mean"), feature_map.mean(dim=(2, 3)), atol=1e-6)
    labels = {"shape": torch.tensor([0, -100]), "box": torch.tensor([[float("nan")] * 4, [0.1, 0.2, 0.5, 0.6]])}
    out = model(pixel_values=pixels, labels=labels)
    assert out.counts == {"shape": 1, "box": 1} and out.outputs["box"].shape == (2, 4)


@pytest.mark.parametrize("pooling", ["cls", "last", "pooler"])
def test_a_pooling_that_reads_one_position_is_refused_on_a_feature_map(pooling, tmp_path):
    model = MultiHeadModel.from_pretrained(save_cnn(tmp_path, "resnet"))
    with pytest.raises(
        HeadMismatchError, match=r"the resnet backbone returns a convolutional feature map.*'mean', 'max'"
    ):
        model.add_head("c", head_config("classification", labels=["a", "b"], pooling=pooling))


def test_inspect_splits_an_image_classifier_into_backbone_and_classifier(tmp_path):
    transformers.ResNetForImageClassification(CONFIGS["resnet"]()).save_pretrained(tmp_path)
    report = inspect_model(tmp_path)
    assert (report.backbone_module, report.head_modules, report.hidden_size) == (
        "resnet",
        {"classifier": "Sequential"},
        16,
    )
    assert report.head_kind == "image-classification" and report.output_in == 16


def tasks(data: Path) -> list[TaskSpec]:
    return [
        TaskSpec("shape", str(data), text="image", pooling="mean"),
        TaskSpec("box", str(data), text="image", label="x1,y1,x2,y2", type="box", pooling="mean"),
    ]


@pytest.mark.parametrize("strategy", ["frozen", "full"])
def test_a_cnn_trains_both_heads_and_predicts_images(cnn, shapes, strategy, tmp_path, capsys):
    from headkit.cli.main import main

    train(
        TrainConfig(
            model=str(cnn),
            tasks=tasks(shapes["train"]),
            strategy=strategy,
            weighting="uncertainty",
            epochs=2,
            batch_size=8,
            output_dir=str(tmp_path / "run"),
            progress=False,
        )
    )
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    assert "mean_iou" in metrics and "accuracy" in metrics
    image = shapes["test"].parent / "images" / "test-00000.png"
    assert main(["predict", str(tmp_path / "run"), "--image", str(image)]) == 0
    printed = capsys.readouterr().out
    assert "shape:" in printed and "box:" in printed


def test_missing_labels_are_masked_and_heads_save_alone(cnn, shapes, tmp_path):
    import csv

    from headkit.model import load_heads
    from headkit.ship.save import save_heads

    with open(shapes["train"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows[::2]:
        row.update(x1="", y1="", x2="", y2="")  # half the images have no box
    for row in rows[1::3]:
        row["label"] = ""
    data = shapes["train"].parent / "partial.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = TrainConfig(
        model=str(cnn), tasks=tasks(data), strategy="frozen", epochs=1, batch_size=8, output_dir=str(tmp_path / "run")
    )
    config.progress = False
    trained = train(config).model.eval()
    save_heads(trained, tmp_path / "heads")
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["heads", "heads.json"]
    model = load_heads(tmp_path / "heads", MultiHeadModel.from_pretrained(cnn).backbone)  # the untouched backbone
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = trained.eval()(pixel_values=pixels), model.eval()(pixel_values=pixels)
    for name in ("shape", "box"):
        assert torch.allclose(expected.outputs[name], got.outputs[name], atol=1e-5)


def test_onnx_export_and_server_answer_a_cnn(cnn, shapes, tmp_path):
    import base64

    from fastapi.testclient import TestClient

    from headkit.data.images import open_image
    from headkit.ship.export import export_onnx
    from headkit.ship.predict import load_for_inference, predict_images
    from headkit.ship.serve import load_app

    config = TrainConfig(
        model=str(cnn), tasks=tasks(shapes["train"]), epochs=1, batch_size=8, output_dir=str(tmp_path / "run")
    )
    config.progress = False
    train(config)
    export_onnx(tmp_path / "run", tmp_path / "onnx")
    paths = sorted((shapes["test"].parent / "images").glob("test-*.png"))[:4]
    images = [open_image(p, "test")[0] for p in paths]
    expected = predict_images(*load_for_inference(tmp_path / "run"), images)
    got = predict_images(*load_for_inference(tmp_path / "onnx", engine="onnx"), images)
    for g, e in zip(got, expected, strict=True):
        assert g["shape"]["label"] == e["shape"]["label"] and g["box"] == pytest.approx(e["box"], abs=0.05)
    with TestClient(load_app(tmp_path / "run")) as client:
        response = client.post("/predict", json={"images": [base64.b64encode(paths[0].read_bytes()).decode()]})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["box"] == pytest.approx(expected[0]["box"], abs=0.05)


def test_a_backbone_that_returns_no_hidden_state_is_a_clear_error(tmp_path):
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

    model = MultiHeadModel.from_pretrained(save_cnn(tmp_path, "resnet"))
    model.backbone.forward = lambda **_: BaseModelOutputWithPoolingAndNoAttention(pooler_output=torch.zeros(1, 16))
    with pytest.raises(HeadMismatchError, match=r"returned no last_hidden_state \(it returned \['pooler_output'\]\)"):
        model.forward_features({"pixel_values": torch.zeros(1, 3, 32, 32)})
