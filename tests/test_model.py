import json

import pytest
import torch
import transformers

from headkit import HeadConfigError, HeadMismatchError, MultiHeadModel, head_config
from headkit.heads import IGNORE_INDEX

from conftest import VOCAB, text_batch, tiny_config

NAN = float("nan")


def three_heads(weights=(1.0, 0.5, 2.0)) -> dict:
    return {
        "sentiment": head_config("classification", labels=["neg", "pos"], loss_weight=weights[0]),
        "topics": head_config("multilabel", labels=["a", "b", "c"], pooling="mean", loss_weight=weights[1]),
        "score": head_config("regression", labels=["y"], pooling="max", loss_weight=weights[2]),
    }


def three_labels() -> dict:
    return {
        "sentiment": torch.tensor([0, 1, IGNORE_INDEX, 1]),
        "topics": torch.tensor([[1.0, 0, 0], [NAN] * 3, [0, 1, 1], [1, 1, 0]]),
        "score": torch.tensor([[0.5], [1.0], [NAN], [-0.3]]),
    }


def test_one_backbone_forward_feeds_all_heads(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads()).eval()
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    out = model(**text_batch())
    assert len(calls) == 1
    assert out.outputs["sentiment"].shape == (4, 2)
    assert out.outputs["topics"].shape == (4, 3)
    assert out.outputs["score"].shape == (4, 1)
    assert out.loss is None and out.losses == {}


def test_total_loss_is_weighted_sum_of_head_losses(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads((1.0, 0.5, 2.0))).eval()
    out = model(labels=three_labels(), **text_batch())
    expected = 1.0 * out.losses["sentiment"] + 0.5 * out.losses["topics"] + 2.0 * out.losses["score"]
    assert torch.allclose(out.loss, expected)
    assert out.counts == {"sentiment": 3, "topics": 3, "score": 3}
    # each head's loss is exactly its own loss on its own outputs
    for name, head in model.heads.items():
        own, _ = head.loss(out.outputs[name], three_labels()[name], out.mask)
        assert torch.allclose(out.losses[name], own)


def test_missing_labels_skip_only_that_heads_loss(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads()).eval()
    batch = text_batch()
    labels = three_labels()
    out = model(labels=labels, **batch)
    keep = torch.tensor([0, 1, 3])  # the examples that have a sentiment label
    sub = model(labels={"sentiment": labels["sentiment"][keep]}, **{k: v[keep] for k, v in batch.items()})
    assert torch.allclose(out.losses["sentiment"], sub.losses["sentiment"], atol=1e-6)
    # a head with no labels at all in the batch contributes nothing and never NaN
    labels["score"] = torch.full((4, 1), NAN)
    out = model(labels=labels, **batch)
    assert "score" not in out.losses and torch.isfinite(out.loss)
    assert torch.allclose(out.loss, out.losses["sentiment"] + 0.5 * out.losses["topics"])


def test_no_labels_at_all_gives_zero_loss_that_backpropagates(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads())
    labels = {"sentiment": torch.full((4,), IGNORE_INDEX)}
    out = model(labels=labels, **text_batch())
    assert out.loss.item() == 0.0
    out.loss.backward()


def test_uncertainty_weighting_follows_kendall_formula(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads((1.0, 1.0, 1.0)), weighting="uncertainty").eval()
    with torch.no_grad():
        for value, s in zip((0.3, -0.2, 1.0), model.weighting.log_vars.values(), strict=True):
            s.fill_(value)
    out = model(labels=three_labels(), **text_batch())
    expected = sum(
        torch.exp(-torch.tensor(s)) * out.losses[n] + s
        for n, s in zip(("sentiment", "topics", "score"), (0.3, -0.2, 1.0), strict=True)
    )
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in model.weighting.log_vars.values())


def test_backward_reaches_backbone_and_every_head(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads())
    model(labels=three_labels(), **text_batch()).loss.backward()
    assert model.backbone.embeddings.word_embeddings.weight.grad is not None
    for head in model.heads.values():
        assert all(p.grad is not None for p in head.parameters())


def test_head_that_does_not_fit_the_backbone_is_refused(bert_backbone):
    model = MultiHeadModel(bert_backbone)
    with pytest.raises(HeadMismatchError, match=r"expects input size 768.*hidden size 32"):
        model.add_head("x", head_config("classification", labels=["a", "b"], input_size=768))
    with pytest.raises(HeadMismatchError, match=r"cannot tie"):
        model.add_head("lm", head_config("masked-lm", vocab_size=VOCAB + 5, tie_embeddings=True))
    untied = model.add_head("lm", head_config("masked-lm", vocab_size=VOCAB + 5))  # default: tied only if it fits
    assert untied.config.tie_embeddings is False and not model.tied_parameter_names()
    model.remove_head("lm")
    with pytest.raises(HeadConfigError, match=r"Python identifier"):
        model.add_head("my head", head_config("classification", labels=["a", "b"]))
    model.add_head("x", head_config("classification", labels=["a", "b"]))
    with pytest.raises(HeadConfigError, match=r"already exists"):
        model.add_head("x", head_config("classification", labels=["a", "b"]))
    with pytest.raises(HeadConfigError, match=r"unknown head\(s\) \['y'\]"):
        model(heads=["y"], **text_batch())


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_lm_heads_tie_to_input_embeddings(kind):
    backbone = transformers.AutoModel.from_config(tiny_config(kind))
    head_type = "masked-lm" if kind == "bert" else "causal-lm"
    model = MultiHeadModel(backbone, {"lm": head_config(head_type)})
    assert model.heads["lm"].decoder.weight is backbone.get_input_embeddings().weight
    assert model.tied_parameter_names() == {"lm.decoder.weight"}
    batch = text_batch()
    out = model(labels={"lm": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)}, **batch)
    assert out.outputs["lm"].shape == (4, 7, VOCAB) and torch.isfinite(out.loss)


def test_remove_head(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads(), weighting="uncertainty")
    model.remove_head("topics")
    assert list(model.heads) == ["sentiment", "score"] and "topics" not in model.weighting.log_vars


def test_reset_head_replaces_one_head_and_leaves_the_callers_config_alone(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads(), weighting="uncertainty")
    new = head_config("classification", labels=["x", "y", "z"])  # pooling auto, input size unknown
    head = model.reset_head("sentiment", new)
    assert model.heads["sentiment"] is head and head.config.labels == ["x", "y", "z"]
    assert head.config.pooling == "cls" and head.config.input_size == 32  # resolved in the head's copy
    assert new.pooling == "auto" and new.input_size is None  # the caller's object as it was
    assert set(model.heads) == {"sentiment", "topics", "score"} and "sentiment" in model.weighting.log_vars
    batch = text_batch()
    assert model(**batch).outputs["sentiment"].shape == (batch["input_ids"].shape[0], 3)
    assert model.reset_head("score") is None and "score" not in model.heads  # None: only removed
    with pytest.raises(HeadConfigError, match="no head named 'nope'"):
        model.remove_head("nope")


def test_forward_is_forward_features_then_forward_heads_and_the_top_holds_no_backbone(bert_backbone):
    model = MultiHeadModel(bert_backbone, three_heads()).eval()
    batch = text_batch()
    with torch.no_grad():
        whole = model(**batch, labels=three_labels())
        features = model.forward_features(batch)
        parts = model.forward_heads(features, labels=three_labels())
        on_top = model.trainable_top()(features, labels=three_labels())
    assert set(features.pooled) == {"cls", "mean", "max"}  # each head's pooling, computed once
    for out in (parts, on_top):
        assert torch.equal(out.loss, whole.loss)
        assert all(torch.equal(out.outputs[h], whole.outputs[h]) for h in whole.outputs)
    top = {id(p) for p in model.trainable_top().parameters()}
    assert top == {id(p) for p in [*model.heads.parameters(), *model.weighting.parameters()]}
    assert not top & {id(p) for p in model.backbone.parameters()}


def test_assigning_the_backbone_replaces_the_adapters_own(bert_backbone):
    """`model.backbone = get_peft_model(model.backbone)` is how PEFT users wrap a backbone: the
    adapter must read through the new module, and no second copy may join the state dict."""
    model = MultiHeadModel(bert_backbone, three_heads())
    wrapper = torch.nn.Module()
    wrapper.config, wrapper.inner = bert_backbone.config, bert_backbone
    model.backbone = wrapper
    assert model.backbone is wrapper and model.adapter.backbone is wrapper
    assert "backbone" not in model._modules
    assert all(k.startswith(("adapter.backbone.inner.", "heads.", "weighting.")) for k in model.state_dict())


def test_vision_backbone_with_class_and_box_heads():
    backbone = transformers.AutoModel.from_config(tiny_config("vit"))
    model = MultiHeadModel(
        backbone,
        {"shape": head_config("classification", labels=["circle", "square", "triangle"]), "box": head_config("box")},
    )
    pixels = torch.randn(2, 3, 32, 32)
    out = model(
        labels={"shape": torch.tensor([0, 2]), "box": torch.tensor([[0.1, 0.1, 0.6, 0.5]] * 2)}, pixel_values=pixels
    )
    assert out.outputs["box"].shape == (2, 4) and out.mask.shape == (2, 17)
    assert torch.allclose(out.loss, out.losses["shape"] + out.losses["box"])


def test_speech_backbone_ctc_head_maps_sample_mask_to_frames():
    backbone = transformers.AutoModel.from_config(tiny_config("wav2vec2"))
    vocab = ["<blank>", *"abcdefghijk"]
    model = MultiHeadModel(backbone, {"asr": head_config("ctc", labels=vocab)}).eval()
    audio = torch.randn(2, 1600)
    sample_mask = torch.ones(2, 1600, dtype=torch.long)
    sample_mask[1, 800:] = 0
    out = model(
        labels={"asr": torch.tensor([[1, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]])},
        input_values=audio,
        attention_mask=sample_mask,
    )
    frames = out.outputs["asr"].shape[1]
    assert out.mask.shape == (2, frames) and out.mask[1].sum() < out.mask[0].sum()
    assert torch.isfinite(out.loss)


def test_a_backbone_whose_width_headkit_cannot_tell_is_refused_by_name(tmp_path):
    config = transformers.MobileNetV2Config(image_size=32, depth_multiplier=0.2)  # no hidden_size(s) in its config
    transformers.MobileNetV2Model(config).save_pretrained(tmp_path)
    with pytest.raises(HeadMismatchError, match=r"cannot drive a 'mobilenet_v2' backbone.*no width at all"):
        MultiHeadModel.from_pretrained(tmp_path, {"c": head_config("classification", labels=["a", "b"])})


# ----------------------------------------------------------------------------- loading as transformers does


def test_output_tuple_starts_with_the_loss(bert_backbone):
    """transformers.Trainer and users read `out[0]` / `out.to_tuple()[0]` as the loss."""
    model = MultiHeadModel(bert_backbone, three_heads()).eval()
    out = model(labels=three_labels(), **text_batch())
    assert out.to_tuple()[0] is out.loss and out[0] is out.loss and out["loss"] is out.loss
    assert next(iter(out.keys())) == "loss"


def test_a_loaded_model_is_in_eval_mode_and_casts_its_heads_to_dtype(tiny_text_model, tmp_path):
    """As transformers' from_pretrained: eval mode (no live dropout), and dtype= covers the heads too."""
    import headkit

    heads = {
        "s": {"type": "classification", "labels": ["a", "b"]},
        "t": {"type": "token-classification", "labels": ["O", "X"]},
    }
    fresh = MultiHeadModel.from_pretrained(tiny_text_model, heads=heads)
    assert not any(m.training for m in fresh.modules())
    headkit.save(fresh, tmp_path / "saved")
    for model in (headkit.load(tmp_path / "saved"), MultiHeadModel.from_pretrained(tmp_path / "saved")):
        assert not any(m.training for m in model.modules())
    tokenizer = headkit.load_processor(tiny_text_model)
    batch = tokenizer(["the film was good", "bad"], padding=True, return_tensors="pt")
    for loaded in (
        MultiHeadModel.from_pretrained(tiny_text_model, heads=heads, dtype=torch.bfloat16),
        headkit.load(tmp_path / "saved", dtype=torch.bfloat16),
    ):
        assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
        out = loaded(**batch)
        assert out.outputs["s"].dtype == torch.bfloat16 and out.outputs["t"].shape[:2] == batch["input_ids"].shape


# ----------------------------------------------------------------------------- pooling: one default, auto


def test_auto_pooling_follows_the_checkpoint_then_the_family(tiny_text_model, tmp_path):
    """One default everywhere (library, CLI, task files): a sentence-transformers checkpoint's own
    pooling, else the family's: [CLS] on BERT-style encoders, the last token on decoders, global
    average on CNN maps, the mean on speech; heads.json records what it resolved to."""
    import shutil

    import headkit
    from headkit.data.tasks import TaskSpec
    from headkit.training.config import TrainConfig

    from conftest import save_decoder

    assert TaskSpec("a", "d").pooling == TrainConfig().pooling == head_config("classification").pooling == "auto"
    heads = {"c": head_config("classification", labels=["a", "b"]), "r": head_config("reward")}
    cases = {
        tiny_text_model: "cls",
        save_decoder(tmp_path / "llama", "llama"): "last",
    }
    st = tmp_path / "sentence-transformer"
    shutil.copytree(tiny_text_model, st)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (st / "modules.json").write_text(json.dumps(modules))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}')
    cases[st] = "mean"
    for path, expected in cases.items():
        model = MultiHeadModel.from_pretrained(path, heads)
        assert {n: h.config.pooling for n, h in model.heads.items()} == {"c": expected, "r": expected}, path
        headkit.save_heads(model, tmp_path / "heads")
        saved = headkit.load_heads(tmp_path / "heads", model.backbone)
        assert saved.heads["c"].config.pooling == expected
    assert heads["c"].pooling == "auto"  # the caller's config is not changed by add_head
    resnet = transformers.ResNetModel(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    )
    assert MultiHeadModel(resnet, {"c": heads["c"]}).heads["c"].config.pooling == "mean"
    speech = MultiHeadModel(transformers.Wav2Vec2Model(tiny_config("wav2vec2")), {"c": heads["c"]})
    assert speech.heads["c"].config.pooling == "mean"
    vit = MultiHeadModel(transformers.ViTModel(tiny_config("vit")), {"c": heads["c"]})
    assert vit.heads["c"].config.pooling == "cls"  # ViT classifies with its class token
    swin_config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1])
    swin = MultiHeadModel(transformers.SwinModel(swin_config), {"c": heads["c"]})
    assert swin.heads["c"].config.pooling == "mean"  # no class token: Swin averages its patches
    with pytest.raises(HeadConfigError, match="pooling 'auto' is resolved when the head joins a backbone"):
        headkit.build_head(head_config("classification", labels=["a", "b"], input_size=4))(
            torch.zeros(1, 2, 4), torch.ones(1, 2)
        )


def test_only_token_inputs_are_aligned_and_loading_seeds_no_other_device(tiny_text_model, monkeypatch):
    """Left-padded rows are rolled token-wise; pixels or an encoder's states of the same length never
    are. Loading a backbone seeds its missing weights from the CPU generator alone: a GPU's
    dropout stream stays the one --seed set."""
    import headkit
    from headkit.backbone_outputs import right_aligned

    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    pixels = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2).float()  # dim 1 (channels) == T by chance
    aligned, shift = right_aligned({"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]), "attention_mask": mask,
                                    "pixel_values": pixels})  # fmt: skip
    assert aligned["input_ids"].tolist() == [[5, 6, 0], [7, 8, 9]] and aligned["attention_mask"].tolist() == [
        [1, 1, 0],
        [1, 1, 1],
    ]
    assert torch.equal(aligned["pixel_values"], pixels) and shift.tolist() == [1, 0]
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    state = torch.get_rng_state()
    headkit.load_backbone(tiny_text_model)
    assert seeded == [] and torch.equal(state, torch.get_rng_state())
