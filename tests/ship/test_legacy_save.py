"""Saves written in the first format (one flat heads.safetensors beside heads.json) still load
with the same outputs, predictions and losses. The fixture was written by the headkit of
issue 35's starting commit (tests/fixtures/legacy_save_v1/make_fixture.py); it pins fitted
values kept outside the weights too (multilabel thresholds decide otherwise than 0.5, class
weights change the losses) and a masked-LM decoder tied to the input embeddings."""

import json
import math
from pathlib import Path

import pytest
import torch

import headkit
from headkit import MultiHeadModel
from headkit.ship.predict import predict_texts

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_save_v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))


def close(got, want, path: str = "") -> None:
    """Nested JSON-like values equal, floats within float32 noise."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list | tuple) and len(got) == len(want), f"{path}: length differs"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(float(got), want, rel_tol=1e-4, abs_tol=1e-5), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def check(model: MultiHeadModel) -> None:
    batch = {k: torch.tensor(v) for k, v in EXPECTED["batch"].items()}
    labels = {k: torch.tensor(v) for k, v in EXPECTED["labels"].items()}
    with torch.no_grad():
        out = model(**batch, labels=labels)
    close({k: v.float().tolist() for k, v in out.outputs.items()}, EXPECTED["outputs"], "outputs")
    close({k: v.item() for k, v in out.losses.items()}, EXPECTED["losses"], "losses")
    tokenizer = headkit.load_processor(FIXTURE / "full" / "backbone")
    close(predict_texts(model, tokenizer, EXPECTED["texts"]), EXPECTED["predictions"], "predictions")
    assert model.heads["mlm"].decoder.weight is model.backbone.get_input_embeddings().weight


def full_load() -> MultiHeadModel:
    return headkit.load(FIXTURE / "full")


def from_pretrained() -> MultiHeadModel:
    return MultiHeadModel.from_pretrained(FIXTURE / "full")


def heads_only() -> MultiHeadModel:
    return headkit.load_heads(FIXTURE / "heads_only", headkit.load_backbone(FIXTURE / "full" / "backbone"))


@pytest.mark.parametrize("loader", [full_load, from_pretrained, heads_only])
def test_a_first_format_save_loads_with_the_same_outputs(loader):
    model = loader()
    assert not model.training
    check(model)


def test_a_first_format_save_saved_again_loads_the_same(tmp_path):
    """Loading an old save and saving it writes the current format, which reads back the same."""
    headkit.save(full_load(), tmp_path / "again", processor=headkit.load_processor(FIXTURE / "full" / "backbone"))
    check(headkit.load(tmp_path / "again"))


def test_tuned_thresholds_stay_exact_when_the_model_is_loaded_or_cast_to_bf16(tmp_path):
    """A bf16 threshold of 0.45 is 0.4492: a probability between the two would change its label."""
    saved = [0.95, 0.001, 0.45]  # the fixture's tuned multi-label thresholds, in its heads.json
    model = headkit.load(FIXTURE / "full", dtype=torch.bfloat16)
    head = model.heads["genres"]
    assert head.classifier[-1].weight.dtype == torch.bfloat16  # the weights follow the dtype ...
    assert head.thresholds.dtype == torch.float32 and head.thresholds.tolist() == pytest.approx(saved, abs=1e-7)
    model.float().half()  # ... and casts back and forth leave the thresholds alone
    assert head.thresholds.dtype == torch.float32 and head.thresholds.tolist() == pytest.approx(saved, abs=1e-7)
    headkit.save(model, tmp_path / "again")
    assert headkit.load(tmp_path / "again").heads["genres"].thresholds.tolist() == pytest.approx(saved, abs=1e-7)
