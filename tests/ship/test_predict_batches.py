"""Prediction batches by tokens: whatever the budget (a few tokens a pass, or every text in one),
each text gets the same answers, in input order, with left- and right-padding tokenizers; the
budget reaches the backbone, and `model.predict`, `predict_file` and `headkit predict --max_tokens`
pass it on."""

from __future__ import annotations

import json
import random

import pytest
import torch

from headkit import MultiHeadModel, head_config, load_processor
from headkit.cli.main import main
from headkit.ship.predict import predict_texts

from conftest import WORDS, write_csv

HEADS = {
    "tags": head_config("token-classification", labels=["O", "B-X", "I-X"]),
    "span": head_config("span"),
    "first": head_config("classification", labels=["a", "b", "c"], pooling="cls"),
    "pooler": head_config("classification", labels=["a", "b"], pooling="pooler"),
    "mean": head_config("regression", labels=["y"], pooling="mean"),
}


def texts(n: int = 40, seed: int = 0) -> list[str]:
    """Texts of 1 to 40 words (tokens), in no order of length."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(n)]


def same(a, b, tol: float = 1e-4) -> bool:
    """Equal answers: labels, tags and positions exactly, numbers within `tol`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    return a == b


@pytest.fixture(scope="module")
def model(tiny_text_model) -> MultiHeadModel:
    model = MultiHeadModel.from_pretrained(tiny_text_model, HEADS)
    torch.manual_seed(0)
    for p in model.heads.parameters():  # decisive weights, so that any difference shows
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


@pytest.fixture
def shapes(model) -> list[tuple[int, int]]:
    """The (texts, padded length) of every backbone pass while the test runs."""
    recorded: list[tuple[int, int]] = []
    hook = model.backbone.register_forward_pre_hook(
        lambda _module, _args, kwargs: recorded.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    yield recorded
    hook.remove()


@pytest.mark.parametrize("side", ["right", "left"])
def test_answers_do_not_depend_on_the_token_budget(model, tiny_text_model, shapes, side):
    tokenizer = load_processor(tiny_text_model)
    tokenizer.padding_side = side
    items = texts()
    whole = predict_texts(model, tokenizer, items, batch_size=len(items), max_tokens=None)
    assert len(shapes) == 1  # every text in one pass: the reference
    shapes.clear()
    small = predict_texts(model, tokenizer, items, batch_size=len(items), max_tokens=24)
    assert len(shapes) > 5 and all(n * length <= 24 or n == 1 for n, length in shapes)
    assert any(n == 1 and length > 24 for n, length in shapes)  # a text over the budget went alone
    assert max(n for n, _ in shapes) > 1  # short texts still share a pass
    shapes.clear()
    one = predict_texts(model, tokenizer, items, batch_size=1)
    assert len(shapes) == len(items)
    for text, a, b, c in zip(items, whole, small, one, strict=True):
        assert same(a, b) and same(a, c), text
        assert a["first"]["label"] == b["first"]["label"] == c["first"]["label"]  # decisions exactly
        assert a["tags"] == b["tags"] == c["tags"]


def test_model_predict_and_headkit_predict_pass_the_budget_on(
    model, tiny_text_model, saved_multihead, shapes, tmp_path
):
    model.set_processor(load_processor(tiny_text_model))
    items = texts(12, seed=1)
    budgeted = model.predict(items, max_tokens=32)
    assert len(shapes) > 1 and all(n * length <= 32 or n == 1 for n, length in shapes)
    assert same(budgeted, model.predict(items, max_tokens=None))
    data = write_csv(tmp_path / "in.csv", [{"text": t} for t in items])
    outputs = []
    for budget in ("16", "null"):
        out = tmp_path / f"out-{budget}.jsonl"
        assert main(["predict", str(saved_multihead), "--input", str(data), "--output", str(out),
                     "--max_tokens", budget, "--no_progress"]) == 0  # fmt: skip
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert [o["text"] for o in outputs[0]] == items  # input order
    assert same(outputs[0], outputs[1])


def test_a_file_without_the_text_column_is_read_by_the_columns_the_model_trained_on(model, tiny_text_model, tmp_path):
    from headkit.errors import DataError
    from headkit.ship.predict import predict_file

    tokenizer = load_processor(tiny_text_model)
    model.set_processor(tokenizer)
    items, seconds = texts(6, seed=2), texts(6, seed=3)
    data = write_csv(tmp_path / "in.csv", [{"sentence": t, "other": s} for t, s in zip(items, seconds, strict=True)])
    model.columns = {"first": {"label": "y", "text": "sentence", "text_pair": "other"}}
    try:
        out = tmp_path / "out.jsonl"
        assert predict_file(model, tokenizer, str(data), "text", str(out)) == (6, 0)
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(o["text"], o["text_pair"]) for o in lines] == list(zip(items, seconds, strict=True))
        expected = model.predict(list(zip(items, seconds, strict=True)))  # read as pairs
        assert same(
            [(o["first"]["label"], o["mean"]) for o in lines], [(e["first"]["label"], e["mean"]) for e in expected]
        )
        assert not same([o["mean"] for o in lines], [e["mean"] for e in model.predict(items)])  # not single texts
        model.columns = {"first": {"label": "y", "text": "body", "text_pair": None}}  # in neither file nor flag
        with pytest.raises(DataError, match="column 'text' not found"):
            predict_file(model, tokenizer, str(data), "text", str(out))
        model.columns = {  # heads trained on different text columns: which one is not for predict to guess
            "first": {"label": "y", "text": "sentence", "text_pair": None},
            "mean": {"label": "z", "text": "other", "text_pair": None},
        }
        with pytest.raises(DataError, match="column 'text' not found"):
            predict_file(model, tokenizer, str(data), "text", str(out))
    finally:
        model.columns = {}
