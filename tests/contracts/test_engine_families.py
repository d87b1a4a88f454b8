"""`--engine auto`'s check on the families users load, not only tiny tied BERTs: untied and tied
decoders, which predict reads padded on the tokenizer's side, left or right (the check itself pads
right), bf16 judged like every other candidate, and a CNN whose BatchNorm statistics must travel
into the export."""

import random
from pathlib import Path

import pytest
import torch
from model_zoo import BY_NAME, images, many_texts, move_batchnorm_statistics, save_checkpoint

import headkit
from headkit import MultiHeadModel, head_config
from headkit.ship import engines
from headkit.ship.engines import EXPORT_DIR, validate_engines
from headkit.ship.export import export_onnx
from headkit.ship.predict import load_for_inference, predict_images, predict_texts

LABELS = ["pos", "neg", "mixed"]


def saved_model(family: str, directory: Path) -> Path:
    """A classifier on the family's tiny random backbone, weights large enough that its decisions
    are clear, BatchNorm statistics moved off their defaults; saved with its processor."""
    torch.manual_seed(1)
    base = save_checkpoint(BY_NAME[family], directory / "base")
    model = MultiHeadModel.from_pretrained(base, heads={"mood": head_config("classification", labels=LABELS)})
    with torch.no_grad():
        for p in model.heads.parameters():
            torch.nn.init.normal_(p, std=0.5)
    move_batchnorm_statistics(model.backbone)
    return headkit.save(model.eval(), directory / "run", processor=headkit.load_processor(base))


def labelled(inputs: list) -> list[dict]:
    rng = random.Random(0)
    return [{"text": x, "mood": rng.choice(LABELS)} for x in inputs]


def checked(record: dict) -> dict[str, dict]:
    return {c["engine"]: c for c in record["candidates"]}


@pytest.mark.parametrize("family", ["llama-untied", "gpt2"])
def test_a_decoders_onnx_engine_is_checked_and_answers_left_padded_text_as_torch_does(family, tmp_path):
    run = saved_model(family, tmp_path)
    export_onnx(run, run / EXPORT_DIR, optimize=False)
    texts = many_texts(40)
    record = validate_engines(run, labelled(texts), device="cpu")
    onnx = checked(record)["onnx"]
    assert onnx["valid"] and onnx["agreement"] == {"mood": 1.0}, onnx
    torch_model, tokenizer = load_for_inference(run, engine="torch", device="cpu")
    onnx_model, _ = load_for_inference(run, engine="onnx", device="cpu")
    for side in ("left", "right"):  # predict pads on the tokenizer's side; GPT-2's absolute positions shift
        tokenizer.padding_side = side
        ours = predict_texts(torch_model, tokenizer, texts, batch_size=8)
        theirs = predict_texts(onnx_model, tokenizer, texts, batch_size=8)
        assert [p["mood"]["label"] for p in ours] == [p["mood"]["label"] for p in theirs], side
        for a, b in zip(ours, theirs, strict=True):
            assert a["mood"]["probs"] == pytest.approx(b["mood"]["probs"], abs=1e-4), side


def test_bf16_is_checked_like_any_candidate_where_it_would_run(tmp_path, monkeypatch):
    """On an AMX CPU or a GPU torch-bf16 is a candidate: checked against fp32 on the same examples,
    chosen only if valid. (This machine's bf16 is emulated: the check runs, its speed is not the point.)"""
    run = saved_model("llama-untied", tmp_path)
    facts = engines.machine_facts("cpu")
    monkeypatch.setattr(engines, "machine_facts", lambda device: {**facts, "amx": True})
    record = validate_engines(run, labelled(many_texts(40)), device="cpu")
    bf16 = checked(record)["torch-bf16"]
    assert set(bf16["agreement"]) == {"mood"} and bf16["examples_per_s"] > 0, bf16
    assert bf16["valid"] == (bf16["agreement"]["mood"] >= engines.MIN_AGREEMENT and
                             bf16["metric_change"]["mood"] <= engines.MAX_METRIC_CHANGE)  # fmt: skip
    assert record["chosen"] in {c["engine"] for c in record["candidates"] if c["valid"]}


def test_a_cnn_run_is_checked_on_images_with_its_batchnorm_statistics(tmp_path):
    run = saved_model("resnet", tmp_path)
    export_onnx(run, run / EXPORT_DIR, optimize=False)
    pictures = images(12)
    files = [str(tmp_path / f"{i}.png") for i in range(len(pictures))]
    for picture, file in zip(pictures, files, strict=True):
        picture.save(file)
    record = validate_engines(run, labelled(files), device="cpu")  # labelled data names image files
    onnx = checked(record)["onnx"]
    assert onnx["valid"] and onnx["agreement"] == {"mood": 1.0}, onnx
    torch_model, processor = load_for_inference(run, engine="torch", device="cpu")
    onnx_model, _ = load_for_inference(run, engine="onnx", device="cpu")
    ours, theirs = predict_images(torch_model, processor, pictures), predict_images(onnx_model, processor, pictures)
    for a, b in zip(ours, theirs, strict=True):
        assert a["mood"]["label"] == b["mood"]["label"]
        assert a["mood"]["probs"] == pytest.approx(b["mood"]["probs"], abs=1e-4)
