"""The per-token feature cache lives on disk: a safetensors file preallocated before the backbone
pass, filled batch by batch through a memory map, in bfloat16 (fp32's range, half the bytes), and
read back a batch's rows at a time. Pooled vectors stay fp32 in RAM. A damaged file, or one that
does not fit the data (another format, other shapes), is recomputed, never trusted."""

import dataclasses

import pytest
import safetensors
import safetensors.torch
import torch

from headkit import MultiHeadModel, head_config
from headkit.adapter import LAST_LAYER
from headkit.data.batching import EncodedData
from headkit.training.features import cached_features, compute_features, features_needed

from conftest import mapped_file, needs_proc_maps

LENGTHS = [7, 3, 5, 1, 6, 4]


def setup(backbone) -> tuple[MultiHeadModel, EncodedData]:
    """A token head and a pooled head on examples of different lengths."""
    heads = {
        "tags": head_config("token-classification", labels=["O", "B", "I"]),
        "topic": head_config("classification", labels=["a", "b"], pooling="mean"),
    }
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(5, 100, (n,), generator=g).tolist() for n in LENGTHS]
    return MultiHeadModel(backbone, heads).eval(), EncodedData(ids)


def live_states(model: MultiHeadModel, data: EncodedData, i: int) -> torch.Tensor:
    """Example i's last hidden states, fp32, from the backbone itself."""
    with torch.no_grad():
        features = model.forward_features({"input_ids": torch.tensor([data.input_ids[i]])})
    return features.at(LAST_LAYER)[0].float()


@needs_proc_maps
def test_per_token_features_are_a_mapped_16_bit_file_and_pooled_ones_stay_fp32_in_ram(bert_backbone, tmp_path):
    model, data = setup(bert_backbone)
    cache, hit = cached_features(model, data, *features_needed(model), root=tmp_path, progress=False)
    (stored,) = tmp_path.glob("*.safetensors")
    tokens = cache.tokens[LAST_LAYER]
    assert not hit and tokens.shape == (sum(LENGTHS), 32)
    assert tokens.dtype == torch.bfloat16
    assert mapped_file(tokens) == str(stored.resolve())  # on disk, not in RAM
    assert cache.pooled["mean"].dtype == torch.float32 and mapped_file(cache.pooled["mean"]) is None
    with safetensors.safe_open(stored, framework="pt") as f:  # a valid safetensors file
        assert f.get_slice("tokens").get_dtype() == "BF16" and f.get_slice("pooled.mean").get_dtype() == "F32"
        assert torch.equal(f.get_slice("tokens")[2:5], tokens[2:5])


@needs_proc_maps
def test_a_later_run_maps_the_file_and_a_batch_reads_its_rows_as_padded_fp32(bert_backbone, tmp_path):
    model, data = setup(bert_backbone)
    first, _ = cached_features(model, data, *features_needed(model), root=tmp_path, progress=False)
    again, hit = cached_features(model, data, *features_needed(model), root=tmp_path, progress=False)
    (stored,) = tmp_path.glob("*.safetensors")
    assert hit and mapped_file(again.tokens[LAST_LAYER]) == str(stored.resolve())
    rows = torch.tensor([4, 1])
    got, expected = again.batch(rows), first.batch(rows)
    hidden, mask, pooled = got.hidden, got.mask, got.pooled
    expected_hidden, expected_mask, expected_pooled = expected.hidden, expected.mask, expected.pooled
    assert hidden[LAST_LAYER].dtype == torch.float32 and hidden[LAST_LAYER].shape == (2, 6, 32)
    assert torch.equal(hidden[LAST_LAYER], expected_hidden[LAST_LAYER]) and torch.equal(mask, expected_mask)
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]] and not hidden[LAST_LAYER][1, 3:].any()
    assert torch.equal(pooled["mean"], expected_pooled["mean"])
    for row, i in enumerate(rows.tolist()):  # the stored values are the live ones rounded to bfloat16
        live = live_states(model, data, i)
        assert torch.equal(hidden[LAST_LAYER][row, : LENGTHS[i]], live.bfloat16().float())


def test_the_16_bit_store_keeps_values_and_head_outputs_close_to_fp32_and_fp32s_range(bert_backbone, tmp_path):
    """bfloat16 rounds each value to 8 significant bits (relative error <= 2**-8) and keeps fp32's
    exponent range: hidden states beyond fp16's 65504 (some LLMs have them) survive."""
    model, data = setup(bert_backbone)
    cache, _ = cached_features(model, data, *features_needed(model), root=tmp_path, progress=False)
    features = cache.batch(torch.arange(len(data)))
    hidden = features.hidden
    with torch.no_grad():
        cached = model.forward_heads(features).outputs["tags"]
    for i, n in enumerate(LENGTHS):
        live = live_states(model, data, i)
        assert ((hidden[LAST_LAYER][i, :n] - live).abs() <= live.abs() * 2**-8 + 1e-6).all()
        with torch.no_grad():
            direct = model(input_ids=torch.tensor([data.input_ids[i]])).outputs["tags"][0]
        assert torch.allclose(cached[i, :n], direct, atol=1e-2, rtol=1e-2)
    original = model.adapter.forward_features

    def huge(*args, **kwargs):
        features = original(*args, **kwargs)
        return dataclasses.replace(features, hidden={layer: h * 1e6 for layer, h in features.hidden.items()})

    model.adapter.forward_features = huge
    big, _ = cached_features(model, data, *features_needed(model), root=tmp_path / "big", progress=False)
    values = big.tokens[LAST_LAYER].float()
    assert values.isfinite().all() and values.abs().max() > 65504


def test_a_damaged_or_foreign_file_is_recomputed_never_trusted(bert_backbone, tmp_path):
    model, data = setup(bert_backbone)
    need = features_needed(model)
    good, _ = cached_features(model, data, *need, root=tmp_path, progress=False)
    expected = good.batch(torch.arange(len(data)))
    (stored,) = tmp_path.glob("*.safetensors")
    tensors = safetensors.torch.load_file(stored)
    del good
    foreign = {  # loadable, the right names, but rows that do not fit this data
        "damaged": lambda: stored.write_bytes(stored.read_bytes()[:-100]),
        "other shapes": lambda: safetensors.torch.save_file({k: v[:2].clone() for k, v in tensors.items()}, stored),
        "no format mark": lambda: safetensors.torch.save_file(tensors, stored),
    }
    for name, spoil in foreign.items():
        spoil()
        cache, hit = cached_features(model, data, *need, root=tmp_path, progress=False)
        assert not hit, name
        got = cache.batch(torch.arange(len(data)))
        assert torch.equal(got.at(LAST_LAYER), expected.at(LAST_LAYER)), name
        assert torch.equal(got.pooled["mean"], expected.pooled["mean"]), name
        assert cached_features(model, data, *need, root=tmp_path, progress=False)[1], f"{name}: rewritten whole"


def test_shares_summed_in_ram_are_stored_like_a_single_pass(bert_backbone, tmp_path):
    """Under several processes (`total` given) the shares are summed in RAM, then written; a later
    run reads the same features from the file."""
    model, data = setup(bert_backbone)
    need = features_needed(model)
    single, _ = cached_features(model, data, *need, root=tmp_path / "a", progress=False)
    shared, hit = cached_features(model, data, *need, root=tmp_path / "b", progress=False, total=lambda t: t)
    reread, hit_again = cached_features(model, data, *need, root=tmp_path / "b", progress=False)
    rows = torch.arange(len(data))
    assert not hit and hit_again
    for cache in (shared, reread):
        assert cache.tokens[LAST_LAYER].dtype == torch.bfloat16
        assert torch.equal(cache.batch(rows).at(LAST_LAYER), single.batch(rows).at(LAST_LAYER))
        assert torch.equal(cache.batch(rows).pooled["mean"], single.batch(rows).pooled["mean"])


@pytest.mark.parametrize("layers", [set(), {LAST_LAYER}])
def test_an_empty_dataset_or_pooled_heads_only_need_no_token_rows(bert_backbone, tmp_path, layers):
    model, _ = setup(bert_backbone)
    empty = EncodedData([])
    cache, hit = cached_features(model, empty, {"mean"}, layers, root=tmp_path, progress=False)
    assert not hit and cache.pooled["mean"].shape == (0, 32) and len(cache.offsets) == 1
    assert cached_features(model, empty, {"mean"}, layers, root=tmp_path, progress=False)[1]


def test_a_file_laid_out_in_place_is_a_safetensors_file_read_copy_on_write_and_a_short_one_is_refused(tmp_path):
    from headkit._tensorfile import DamagedFile, mapped, writing

    values = {
        "a": torch.randn(5, 3).bfloat16(),
        "b": torch.arange(4),
        "c": torch.randn(2, 2),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "t.safetensors"
    with writing(path, {k: (v.dtype, tuple(v.shape)) for k, v in values.items()}, {"format": "x"}) as views:
        for name, value in values.items():
            views[name].copy_(value)
    loaded = safetensors.torch.load_file(path)
    assert loaded.keys() == values.keys() and all(torch.equal(loaded[k], v) for k, v in values.items())
    tensors, metadata = mapped(path)
    assert metadata == {"format": "x"} and all(torch.equal(tensors[k], v) for k, v in values.items())
    tensors["c"][0, 0] = 99.0  # a write to a view stays in memory: the file keeps its values
    assert torch.equal(safetensors.torch.load_file(path)["c"], values["c"])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DamagedFile, match=r"bytes where the header describes|short file"):
        mapped(path)


def test_the_features_do_not_depend_on_the_token_budget_and_heads_train_on_them(bert_backbone):
    """The backbone pass batches by tokens under inference mode; what it stores is the same whatever
    the batches, and ordinary tensors a head's loss can backpropagate through."""
    model, data = setup(bert_backbone)
    need = features_needed(model)
    whole = compute_features(model, data, *need, batch_size=64, max_tokens=None, progress=False)
    rows = torch.arange(len(data))
    for batch_size, max_tokens in ((64, 8), (1, None), (2, 12)):
        cache = compute_features(model, data, *need, batch_size=batch_size, max_tokens=max_tokens, progress=False)
        assert torch.allclose(cache.pooled["mean"], whole.pooled["mean"], atol=1e-5), (batch_size, max_tokens)
        got, expected = cache.batch(rows).at(LAST_LAYER), whole.batch(rows).at(LAST_LAYER)
        assert torch.allclose(got, expected, rtol=1e-2, atol=1e-2), (batch_size, max_tokens)  # bfloat16: 8 bits
    for i in range(len(data)):  # and they are the backbone's own states for each example
        assert torch.allclose(whole.batch(torch.tensor([i])).at(LAST_LAYER)[0], live_states(model, data, i), atol=2e-2)
    assert not whole.pooled["mean"].is_inference() and not whole.tokens[LAST_LAYER].is_inference()
    model.train()
    labels = {"topic": torch.tensor([0, 1, 0, 1, 0, 1]), "tags": torch.zeros(len(data), max(LENGTHS), dtype=torch.long)}
    (out := model.forward_heads(whole.batch(rows), labels)).loss.backward()
    assert set(out.losses) == {"topic", "tags"}
    assert all(p.grad is not None for p in model.heads.parameters())
    model.eval()
