"""Format 2's layout: a folder per head, tensors shared with the backbone or within a head stored
once and tied again by name, stale files of an earlier save in the same directory cleaned up."""

import json

import pytest
import torch
import transformers
from torch import nn

import headkit
from headkit import CheckpointError, MultiHeadModel, head_config
from headkit.heads import storage

from conftest import text_batch, tiny_config


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)


class Head(nn.Module):
    """A decoder whose weight may be the backbone's embeddings, and an output that may be its own input."""

    def __init__(self, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.decoder = nn.Linear(4, 10)
        self.inner = nn.Linear(4, 4, bias=False)
        self.outer = nn.Linear(4, 4, bias=False)
        if backbone is not None:
            self.decoder.weight = backbone.embed.weight
            self.outer.weight = self.inner.weight


def test_tied_and_shared_tensors_are_stored_once_and_tied_again_by_name():
    backbone = Backbone()
    tied = Head(backbone)
    state, to_backbone, within = storage.split_state(tied, backbone)
    assert set(state) == {"decoder.bias", "inner.weight"}
    assert to_backbone == {"decoder.weight": "embed.weight"} and within == {"outer.weight": "inner.weight"}
    fresh = Head()  # built without the ties: loading makes them from the names alone
    storage.load_head(fresh, state, backbone, to_backbone, within, "test")
    assert fresh.decoder.weight is backbone.embed.weight and fresh.outer.weight is fresh.inner.weight
    assert torch.equal(fresh.inner.weight, tied.inner.weight) and torch.equal(fresh.decoder.bias, tied.decoder.bias)


def test_a_tie_to_a_tensor_the_backbone_lacks_is_refused():
    backbone = Backbone()
    state, _, _ = storage.split_state(Head(backbone), backbone)
    with pytest.raises(CheckpointError, match=r"ties a tensor to embed.missing, which the backbone"):
        storage.load_head(Head(), state, backbone, {"decoder.weight": "embed.missing"}, {}, "test")


def test_stored_tensors_that_do_not_fit_the_head_are_refused():
    backbone = Backbone()
    state, tied, shared = storage.split_state(Head(backbone), backbone)
    with pytest.raises(CheckpointError, match=r"does not fit its head: missing \['inner.weight'\], unexpected \[\]"):
        storage.load_head(Head(), {"decoder.bias": state["decoder.bias"]}, backbone, tied, shared, "x.safetensors")


def make_model(weighting: str = "static") -> MultiHeadModel:
    torch.manual_seed(0)
    heads = {
        "sentiment": head_config("classification", labels=["neg", "pos"], pooling="mean"),
        "mlm": head_config("masked-lm"),
    }
    return MultiHeadModel(transformers.BertModel(tiny_config("bert")), heads, weighting=weighting).eval()


def test_saving_again_into_a_directory_removes_what_the_new_manifest_does_not_list(tmp_path):
    model = make_model(weighting="uncertainty")
    headkit.save_heads(model, tmp_path)
    (tmp_path / "heads.safetensors").write_bytes(b"format 1's weights file, from an older save")
    (tmp_path / "heads" / "notes").mkdir()
    (tmp_path / "heads" / "notes" / "mine.txt").write_text("not headkit's")
    model.remove_head("mlm")
    model.weighting = type(model.weighting)("static")
    headkit.save_heads(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads", "heads.json"]
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["notes", "sentiment"]  # a stranger's: kept
    assert list(headkit.load_heads(tmp_path, model.backbone).heads) == ["sentiment"]


def test_a_head_folder_outside_the_save_is_refused(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    manifest = json.loads((tmp_path / "heads.json").read_text())
    manifest["heads"]["sentiment"]["path"] = "../elsewhere"
    (tmp_path / "heads.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"lists head 'sentiment' without a folder inside the save"):
        headkit.load_heads(tmp_path, model.backbone)


def test_loss_weights_that_do_not_fit_the_weighting_are_refused(tmp_path):
    model = make_model(weighting="uncertainty")
    headkit.save_heads(model, tmp_path)
    manifest = json.loads((tmp_path / "heads.json").read_text())
    manifest["weighting"] = "static"
    (tmp_path / "heads.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"loss weights in .*weighting.safetensors do not fit"):
        headkit.load_heads(tmp_path, model.backbone)


def test_a_head_folder_missing_is_refused(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    (tmp_path / "heads" / "mlm" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"mlm.model.safetensors is missing"):
        headkit.load_heads(tmp_path, model.backbone)


def test_the_loaded_tied_decoder_is_the_embeddings_and_predicts_the_same(tmp_path):
    model = make_model()
    headkit.save(model, tmp_path / "save")
    loaded = headkit.load(tmp_path / "save")
    assert loaded.heads["mlm"].decoder.weight is loaded.backbone.get_input_embeddings().weight
    with torch.no_grad():
        for name, tensor in model(**text_batch()).outputs.items():
            assert torch.equal(tensor, loaded(**text_batch()).outputs[name]), name
