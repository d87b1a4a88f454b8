"""Vision multi-head: image data, the shapes generator, the box head and joint training on a tiny ViT."""

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import headkit
from headkit import DataError, MultiHeadModel, head_config
from headkit.data.shapes import SHAPES, draw_shape, save_small_vit, write_shapes
from headkit.data.tasks import TaskSpec
from headkit.heads import LabelSource, head_class
from headkit.heads.box import iou_and_giou
from headkit.training.recipe import TrainConfig, train

from conftest import write_csv


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return write_shapes(tmp_path_factory.mktemp("shapes"), train=24, validation=8, test=8, size=32)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    return save_small_vit(tmp_path_factory.mktemp("vit"), image_size=32, patch_size=8, hidden_size=32, layers=1)


def test_generator_is_seeded_and_boxes_are_tight():
    import numpy as np

    a = draw_shape(np.random.default_rng(3), 64)
    b = draw_shape(np.random.default_rng(3), 64)
    assert a[1] == b[1] and a[2] == b[2] and list(a[0].getdata()) == list(b[0].getdata())
    for seed in range(20):
        _, shape, (x1, y1, x2, y2) = draw_shape(np.random.default_rng(seed), 64)
        assert shape in SHAPES and 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64


def test_box_head_output_stays_in_the_unit_square():
    head = headkit.build_head(head_config("box", input_size=16))
    boxes = head.forward_pooled(torch.randn(64, 16) * 100)
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_giou_loss_matches_hand_computed_values():
    pred, target = torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    iou, giou = iou_and_giou(pred, target)
    # intersection 0.0625, union 0.4375, enclosing box 0.5625
    assert float(iou) == pytest.approx(0.0625 / 0.4375)
    assert float(giou) == pytest.approx(0.0625 / 0.4375 - (0.5625 - 0.4375) / 0.5625)
    head = headkit.build_head(head_config("box", input_size=4))  # l1_weight 5, giou_weight 2
    loss, n = head.loss(pred, target)
    assert n == 1 and float(loss) == pytest.approx(5 * 0.25 + 2 * (1 - float(giou)))


def test_joint_loss_is_the_weighted_sum_of_the_two(tiny_vit):
    heads = {
        "shape": head_config("classification", labels=list(SHAPES), loss_weight=0.7),
        "box": head_config("box", loss_weight=2.5),
    }
    model = MultiHeadModel.from_pretrained(tiny_vit, heads).eval()
    pixels = torch.randn(3, 3, 32, 32)
    labels = {"shape": torch.tensor([0, 1, 2]), "box": torch.tensor([[0.1, 0.1, 0.5, 0.6]] * 3)}
    out = model(pixel_values=pixels, labels=labels)
    assert float(out.loss) == pytest.approx(0.7 * float(out.losses["shape"]) + 2.5 * float(out.losses["box"]))


def test_boxes_are_normalised_by_each_images_own_size():
    rows = [{"x1": "8", "y1": "8", "x2": "24", "y2": "40"}, {"x1": "8", "y1": "8", "x2": "24", "y2": "40"}]
    where = LabelSource("box", "x1,y1,x2,y2", "d.csv")
    boxes = head_class("box").codec.encode_labels(rows, where, ["x1", "y1", "x2", "y2"], [(64, 64), (32, 64)])
    assert boxes.tolist() == [[0.125, 0.125, 0.375, 0.625], [0.25, 0.125, 0.75, 0.625]]


def config(tiny_vit, data, out, epochs=1, **extra) -> TrainConfig:
    tasks = [
        TaskSpec("shape", str(data), text="image", pooling="cls"),
        TaskSpec("box", str(data), text="image", label="x1,y1,x2,y2", type="box"),
    ]
    return TrainConfig(
        model=str(tiny_vit),
        tasks=tasks,
        strategy="full",
        epochs=epochs,
        batch_size=8,
        output_dir=str(out),
        progress=False,
        **extra,
    )


def test_joint_training_saves_and_predicts_images(tiny_vit, shapes, tmp_path, capsys):
    from headkit.cli.main import main

    train(config(tiny_vit, shapes["train"], tmp_path / "run"))
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    assert "mean_iou" in metrics and "accuracy" in metrics
    image = shapes["test"].parent / "images" / "test-00000.png"
    assert main(["predict", str(tmp_path / "run"), "--image", str(image)]) == 0
    printed = capsys.readouterr().out
    assert "shape:" in printed and "box:" in printed
    assert main(["predict", str(tmp_path / "run"), "--input", str(shapes["test"]), "--text_column", "image"]) == 0
    lines = (shapes["test"].with_suffix("").parent / "test.predictions.jsonl").read_text().splitlines()
    assert len(lines) == 8


def test_bad_images_and_boxes_are_clear_errors(tiny_vit, shapes, tmp_path, capsys):
    base = shapes["train"].parent
    good = {"image": "images/train-00000.png", "label": "circle", "x1": 1, "y1": 1, "x2": 10, "y2": 10}
    other = {**good, "image": "images/train-00001.png", "label": "square"}
    cases = {
        "missing image": ({"image": "images/nope.png"}, "not found"),
        "unreadable image": ({"image": "notes.png"}, "not a readable image"),
        "box outside the image": ({"x2": 99}, "not inside the 32x32 image"),
        "x2 < x1": ({"x1": 20, "x2": 5}, "x1 < x2"),
        "box not numbers": ({"y2": "tall"}, "not four numbers"),
    }
    (base / "notes.png").write_text("this is not a PNG")
    for name, (change, message) in cases.items():
        data = write_csv(base / f"bad-{name.replace(' ', '_')}.csv", [{**good, **change}, other, good, other])
        with pytest.raises(DataError, match=message):
            train(config(tiny_vit, data, tmp_path / "bad", overwrite=True))

    gray = Image.open(base / "images/train-00002.png").convert("L")
    gray.save(base / "gray.png")
    data = write_csv(base / "gray.csv", [{**good, "image": "gray.png"}, other, good, other])
    train(config(tiny_vit, data, tmp_path / "gray", val_fraction=0.25))
    notes = capsys.readouterr().err
    assert "1 of 4 images" in notes and "converted to RGB" in notes


def test_a_box_head_on_text_is_refused(tiny_text_model, tmp_path):
    from conftest import sentiment_rows

    data = write_csv(tmp_path / "t.csv", sentiment_rows(8))
    with pytest.raises(DataError, match="box head needs an image backbone"):
        train(
            TrainConfig(
                model=str(tiny_text_model),
                tasks=[TaskSpec("b", str(data), type="box")],
                output_dir=str(tmp_path / "r"),
                progress=False,
            )
        )


def test_server_answers_images_and_never_reads_paths(tiny_vit, shapes, tmp_path):
    import base64

    from fastapi.testclient import TestClient

    from headkit.ship.serve import load_app

    train(config(tiny_vit, shapes["train"], tmp_path / "run"))
    image = shapes["test"].parent / "images" / "test-00000.png"
    encoded = base64.b64encode(image.read_bytes()).decode()
    with TestClient(load_app(tmp_path / "run")) as client:
        response = client.post("/predict", json={"images": [encoded, encoded]})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 2 and set(predictions[0]) == {"shape", "box"}
        x1, y1, x2, y2 = predictions[0]["box"]
        assert 0 <= x1 <= x2 <= 32 and 0 <= y1 <= y2 <= 32  # pixels of the 32x32 image sent
        for bad, message in (
            ({"images": [str(image)]}, "paths and URLs are never read"),
            ({"images": ["aGVsbG8="]}, "images[0] is not a base64-encoded image"),
            ({"texts": ["a circle"]}, "this model reads images"),
            ({"texts": ["x"], "images": [encoded]}, "exactly one"),
        ):
            response = client.post("/predict", json=bad)
            assert response.status_code == 422 and message in response.json()["error"], response.text


def test_onnx_export_of_an_image_model_matches_pytorch(tiny_vit, shapes, tmp_path):
    from headkit.data.images import open_image
    from headkit.ship.export import export_onnx
    from headkit.ship.predict import load_for_inference, predict_images

    train(config(tiny_vit, shapes["train"], tmp_path / "run"))
    export_onnx(tmp_path / "run", tmp_path / "onnx")
    images = [open_image(p, "test")[0] for p in sorted((shapes["test"].parent / "images").glob("test-*.png"))[:5]]
    expected = predict_images(*load_for_inference(tmp_path / "run"), images)
    got = predict_images(*load_for_inference(tmp_path / "onnx", engine="onnx"), images)
    for g, e in zip(got, expected, strict=True):
        assert g["shape"]["label"] == e["shape"]["label"]
        assert g["box"] == pytest.approx(e["box"], abs=0.05)  # pixels, rounded to 2 decimals


@pytest.mark.parametrize(
    "processor",
    [
        transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875),  # ResNet, ConvNeXt, RegNet
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}),
        transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    ],
    ids=["convnext", "vit", "clip"],
)
def test_images_for_box_heads_keep_every_pixel_column_and_row(processor):
    """Box targets are normalised by the image's own width and height, so a box head's pixels must
    show the whole image, squeezed, never a centre crop (ConvNeXt-style processors crop a square
    out of a non-square image even at crop_pct 1.0)."""
    from PIL import Image

    from headkit.data.images import preprocess

    wide = np.zeros((32, 96, 3), dtype=np.uint8)
    wide[:, :12] = (0, 255, 0)  # a green strip along the left edge, a blue one along the right
    wide[:, -12:] = (0, 0, 255)
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))  # the strips along the top and bottom
    pixels = preprocess(processor, [Image.fromarray(wide), Image.fromarray(tall)], crop=False)
    assert pixels.shape[-2:] == (32, 32)
    green, blue = pixels[:, 1] > pixels[:, 0] + 0.5, pixels[:, 2] > pixels[:, 0] + 0.5  # (N, H, W)
    assert green[0, :, :2].all() and blue[0, :, -2:].all(), "the wide image lost its left or right edge"
    assert green[1, :2, :].all() and blue[1, -2:, :].all(), "the tall image lost its top or bottom edge"
