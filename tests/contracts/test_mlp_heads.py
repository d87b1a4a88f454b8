"""Pooled heads with hidden layers (heads/mlp.py): their layout, their settings' errors, training
through a task's options, and the one exact transformers export an MLP has (RoBERTa's head)."""

import json

import pytest
import torch
import transformers

import headkit
from headkit import HeadConfigError, build_head, head_config
from headkit.errors import ExportError
from headkit.ship.export import export_transformers

from conftest import sentiment_rows

POOLED = ["classification", "multilabel", "regression", "reward"]
LABELS = {"classification": ["a", "b"], "multilabel": ["a", "b"], "regression": ["y"], "reward": []}


def config(head_type: str, **fields):
    return head_config(head_type, labels=LABELS[head_type], input_size=8, pooling="cls", **fields)


@pytest.mark.parametrize("head_type", POOLED)
def test_no_hidden_layers_keeps_the_linear_heads_layout_and_hidden_layers_stack_before_it(head_type):
    linear = build_head(config(head_type))
    assert next(k for k in linear.state_dict() if k.endswith("weight")).endswith(".1.weight")  # saved heads load
    deep = build_head(config(head_type, hidden_layers=2, hidden_size=16, activation="relu", dropout=0.0))
    shapes = [tuple(p.shape) for name, p in deep.named_parameters() if name.endswith("weight")]
    width = max(1, len(LABELS[head_type]))
    assert shapes == [(16, 8), (16, 16), (width, 16)]
    layers = next(deep.children())
    pooled = torch.randn(5, 8)
    by_hand = layers[7](torch.relu(layers[4](torch.relu(layers[1](pooled)))))
    assert torch.allclose(deep.forward_pooled(pooled).reshape(by_hand.shape), by_hand.float(), atol=1e-6)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"hidden_layers": -1}, "count of layers"),
        ({"hidden_layers": 1.5}, "count of layers"),
        ({"hidden_layers": 1, "hidden_size": 0}, "positive width"),
        ({"hidden_size": 64}, "set hidden_layers too"),
        ({"hidden_layers": 1, "activation": "gleu"}, "unknown activation 'gleu'"),
    ],
)
def test_bad_settings_are_refused_in_one_line(fields, words):
    with pytest.raises(HeadConfigError, match=words) as refused:
        config("classification", **fields)
    assert "\n" not in str(refused.value)


def test_fewshot_refuses_a_head_with_hidden_layers_it_could_not_solve(tiny_text_model):
    heads = {"sentiment": {"label": "label", "options": {"hidden_layers": 1}}}
    with pytest.raises(HeadConfigError, match="no closed-form few-shot solution"):
        headkit.train(tiny_text_model, heads, train_dataset=sentiment_rows(24), strategy="fewshot", progress=False)


def test_fewshot_refuses_to_train_further_a_head_the_model_has_with_hidden_layers(tiny_text_model):
    heads = {"sentiment": {"label": "label", "options": {"hidden_layers": 1}}}
    rows = sentiment_rows(24)
    model = headkit.train(tiny_text_model, heads, train_dataset=rows, epochs=1, progress=False).model
    before = {k: v.clone() for k, v in model.heads.state_dict().items()}
    with pytest.raises(HeadConfigError, match="no closed-form few-shot solution"):
        headkit.train(model, {"sentiment": "label"}, train_dataset=rows, strategy="fewshot", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.heads.state_dict().items())


def test_hidden_layers_train_from_a_tasks_options_and_are_saved_with_the_head(tiny_text_model, tmp_path):
    rows = sentiment_rows(48)
    heads = {"sentiment": {"label": "label", "options": {"hidden_layers": 1, "hidden_size": 24}}}
    result = headkit.train(
        tiny_text_model, heads, train_dataset=rows, output_dir=tmp_path / "run", epochs=2, batch_size=8,
        lr=1e-2, progress=False,
    )  # fmt: skip
    head = result.model.heads["sentiment"]
    assert (head.config.hidden_layers, head.config.hidden_size) == (1, 24)
    saved = json.loads((tmp_path / "run" / "model" / "heads" / "sentiment" / "config.json").read_text())
    assert (saved["hidden_layers"], saved["hidden_size"], saved["activation"]) == (1, 24, "gelu")
    loaded = headkit.load(tmp_path / "run" / "model")
    inputs = headkit.load_processor(tiny_text_model)(
        ["the film was good", "a dull plot"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        assert torch.equal(
            loaded.eval()(**inputs).outputs["sentiment"], result.model.eval()(**inputs).outputs["sentiment"]
        )
    assert loaded.heads["sentiment"].config.hidden_size == 24


def _roberta(tmp_path):
    """A tiny random RoBERTa checkpoint with its tokenizer, as the conformance zoo saves it."""
    from model_zoo import BY_NAME, save_checkpoint

    return save_checkpoint(BY_NAME["roberta"], tmp_path / "roberta")


def _saved(tmp_path, checkpoint, **fields):
    torch.manual_seed(0)
    heads = {"topic": head_config("classification", labels=["x", "y", "z"], pooling="cls", **fields)}
    model = headkit.MultiHeadModel.from_pretrained(checkpoint, heads=heads)
    with torch.no_grad():
        for p in model.heads.parameters():
            torch.nn.init.normal_(p, std=0.5)
    return headkit.save(model.eval(), tmp_path / "saved", processor=headkit.load_processor(checkpoint)), model


def test_one_tanh_layer_on_the_first_token_exports_exactly_to_robertas_classification_head(tmp_path):
    checkpoint = _roberta(tmp_path)
    saved, model = _saved(tmp_path, checkpoint, hidden_layers=1, activation="tanh")
    result = export_transformers(saved, tmp_path / "export")
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(result.path).eval()
    assert type(exported).__name__ == "RobertaForSequenceClassification"
    processor = headkit.load_processor(checkpoint)
    inputs = dict(processor(["a b c", "d e f g h"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert torch.allclose(model(**inputs).outputs["topic"], exported(**inputs).logits, atol=1e-5)


def test_an_mlp_no_transformers_class_computes_is_refused_in_one_line(tmp_path):
    saved, _ = _saved(tmp_path, _roberta(tmp_path), hidden_layers=1)  # gelu: RoBERTa's head has tanh
    with pytest.raises(ExportError) as refused:
        export_transformers(saved, tmp_path / "export")
    assert "\n" not in str(refused.value) and "onnx" in str(refused.value)
