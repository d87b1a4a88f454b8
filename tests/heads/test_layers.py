"""Heads on any layer: one backbone pass serves heads on different layers, indices count like
Python's over the hidden states, the feature cache stores only the layers heads read, and a
layer survives save, load and ONNX export."""

import pytest
import safetensors.torch
import torch

from headkit import HeadConfigError, HeadMismatchError, MultiHeadModel, head_config
from headkit.heads.pooling import pool
from headkit.training.features import cached_features, features_needed

from conftest import text_batch, tiny_config


def probes(layers: list[int]) -> dict:
    return {
        f"at{i}": head_config("classification", labels=["a", "b"], pooling="mean", layer=layer)
        for i, layer in enumerate(layers)
    }


def test_heads_on_different_layers_share_one_backbone_pass(bert_backbone):
    model = MultiHeadModel(bert_backbone, probes([0, 1, -1])).eval()
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    batch = text_batch()
    with torch.no_grad():
        out = model(**batch)
        assert len(calls) == 1
        states = bert_backbone(**batch, output_hidden_states=True).hidden_states  # embeddings + 2 layers
    for name, layer in (("at0", 0), ("at1", 1), ("at2", 2)):
        expected = model.heads[name].forward_pooled(pool(states[layer], batch["attention_mask"], "mean"))
        assert torch.allclose(out.outputs[name], expected, atol=1e-6), name


def test_layer_indices_count_like_python_over_the_hidden_states(bert_backbone):
    model = MultiHeadModel(bert_backbone)  # 2 layers: hidden states 0 (embeddings), 1, 2
    assert [model.adapter.layer_key(k) for k in (0, 1, 2, -1, -2, -3)] == [0, 1, -1, -1, 1, 0]
    for bad in (3, -4):
        with pytest.raises(
            HeadConfigError,
            match=r"reads layer .*has 2 layers: use 0..2 \(0 = the embeddings, 2 = the last\) or -3..-1",
        ):
            model.add_head("probe", head_config("classification", labels=["a", "b"], layer=bad))
    assert "probe" not in model.heads


def test_a_layer_below_the_top_needs_a_backbone_that_counts_its_layers(tmp_path):
    import transformers

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    model = MultiHeadModel(transformers.ResNetModel(config))
    with pytest.raises(HeadMismatchError, match="does not say how many layers it has"):
        model.add_head("c", head_config("classification", labels=["a", "b"], pooling="mean", layer=1))


def test_the_cache_stores_only_the_layers_heads_read_and_feeds_the_same_outputs(bert_backbone, tmp_path):
    from headkit.data.batching import EncodedData

    heads = probes([0, -1]) | {"tags": head_config("token-classification", labels=["O", "B"], layer=1)}
    model = MultiHeadModel(bert_backbone, heads).eval()
    assert features_needed(model) == ({"mean@0", "mean"}, {1})
    batch = text_batch(pad_last=0)
    data = EncodedData(input_ids=batch["input_ids"].tolist())
    cache, hit = cached_features(model, data, *features_needed(model), root=tmp_path, progress=False)
    (stored,) = tmp_path.glob("*.safetensors")
    assert not hit and set(safetensors.torch.load_file(stored)) == {
        "pooled.mean",
        "pooled.mean@0",
        "tokens@1",
        "offsets",
    }
    with torch.no_grad():
        live = model(**batch)
        cached = model.forward_heads(cache.batch(torch.arange(len(data))))
    for name in model.heads:  # per-token features are stored in bfloat16 (8 significant bits), pooled ones in fp32
        atol = 1e-2 if model.heads[name].per_token else 1e-5
        assert torch.allclose(live.outputs[name], cached.outputs[name], atol=atol), name


def test_a_head_on_a_layer_survives_save_load_and_onnx(tiny_text_model, tmp_path):
    from headkit.backbone import load_processor
    from headkit.ship.export import export_onnx
    from headkit.ship.predict import load_for_inference, predict_texts
    from headkit.ship.save import save

    model = MultiHeadModel.from_pretrained(tiny_text_model, probes([1, -1])).eval()
    save(model, tmp_path / "save", load_processor(tiny_text_model))
    loaded, tokenizer = load_for_inference(tmp_path / "save")
    assert loaded.heads["at0"].config.layer == 1
    texts = ["the film was good", "a dull plot and boring acting"]
    expected = predict_texts(loaded, tokenizer, texts)
    export_onnx(tmp_path / "save", tmp_path / "onnx")
    got = predict_texts(*load_for_inference(tmp_path / "onnx", engine="onnx"), texts)
    for g, e in zip(got, expected, strict=True):
        for name in ("at0", "at1"):
            assert g[name]["probs"] == pytest.approx(e[name]["probs"], abs=1e-4)


def test_one_layer_flag_puts_every_head_of_a_run_on_that_layer(tiny_text_model, tmp_path):
    from headkit.training.recipe import TrainConfig, train

    from conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "d.csv", sentiment_rows(24))
    config = TrainConfig(
        model=str(tiny_text_model),
        data=str(data),
        head=["sentiment:label"],
        layer=1,
        epochs=1,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    assert train(config).model.heads["sentiment"].config.layer == 1
    assert tiny_config("bert").num_hidden_layers == 2
