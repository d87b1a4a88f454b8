"""Replaying a frozen bottom: the top layers see what the whole network would give them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from headkit import MultiHeadModel, head_config
from headkit.data.batching import EncodedData, collate, model_inputs
from headkit.model import LAST_LAYER
from headkit.training import replay as replay_module
from headkit.training.replay import replay_bottom
from headkit.training.strategies import freeze_bottom, layer_stack

from conftest import VOCAB, tiny_config


def _model(kind: str, layers: int = 3) -> MultiHeadModel:
    torch.manual_seed(0)
    config = tiny_config(kind)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, name):
            setattr(config, name, layers)
    config.pad_token_id = 0
    backbone = transformers.AutoModel.from_config(config)
    return MultiHeadModel(backbone, {"c": head_config("classification", labels=["a", "b"])})


def _data(n: int = 6) -> EncodedData:
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, VOCAB, size=3 + i % 4).tolist() for i in range(n)]  # lengths 3-6: padded batches
    return EncodedData(ids, {"c": np.arange(n) % 2})


def _last_hidden_and_grads(model: MultiHeadModel, data: EncodedData, rows: list[int], replay=None):
    batch = collate([data[i] for i in rows], 0, {}, {})
    if replay is not None:
        replay.select(rows, batch["attention_mask"])
    features = model.adapter(model_inputs(batch, model.device))
    hidden, mask = features.hidden, features.mask
    model.zero_grad()
    (hidden[LAST_LAYER][mask.bool()] ** 2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.backbone.named_parameters() if p.grad is not None}
    return hidden[LAST_LAYER][mask.bool()].detach(), grads


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_replayed_bottom_gives_the_top_layers_the_same_states_and_gradients(kind):
    model = _model(kind).eval()
    data = _data()
    freeze_bottom(model.backbone, 2)
    state_keys = list(model.backbone.state_dict())
    expected = _last_hidden_and_grads(model, data, [4, 1, 3])
    replay = replay_bottom(model, data, range(len(data)), passes=12, start=2, pad_id=0)
    assert replay is not None
    _, layers = layer_stack(model.backbone)
    assert all(type(layers[i]).__name__ == "_PassThrough" for i in range(2))
    hidden, grads = _last_hidden_and_grads(model, data, [4, 1, 3], replay)
    assert torch.allclose(hidden, expected[0], atol=1e-5)
    assert grads.keys() == expected[1].keys() and grads  # only the tuned top layer has gradients
    assert all(torch.allclose(grads[n], expected[1][n], atol=1e-5) for n in grads)
    replay.remove()
    assert list(model.backbone.state_dict()) == state_keys  # the real layers are back


def test_replay_is_skipped_where_it_cannot_pay_or_cannot_work(monkeypatch):
    model = _model("bert").eval()
    data = _data()
    assert replay_bottom(model, data, range(6), passes=12, start=0, pad_id=0) is None  # nothing frozen
    assert replay_bottom(model, data, range(6), passes=6, start=2, pad_id=0) is None  # no example seen twice
    monkeypatch.setattr(replay_module, "MAX_REPLAY_BYTES", 1000)
    assert replay_bottom(model, data, range(6), passes=12, start=2, pad_id=0) is None  # too much to keep
    monkeypatch.undo()
    model.heads["c"].config.layer = 1  # a head reading a layer below the tuned ones
    assert replay_bottom(model, data, range(6), passes=12, start=2, pad_id=0) is None


def test_a_stack_that_fails_the_self_check_runs_unreplayed_with_its_layers_intact(monkeypatch):
    model = _model("bert").eval()
    keys = list(model.backbone.state_dict())
    monkeypatch.setattr(replay_module.BottomReplay, "verify", lambda *args: False)
    assert replay_bottom(model, _data(), range(6), passes=12, start=2, pad_id=0) is None
    assert list(model.backbone.state_dict()) == keys
    _, layers = layer_stack(model.backbone)
    assert all(type(layer).__name__ == "BertLayer" for layer in layers)
