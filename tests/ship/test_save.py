import json
import re
from pathlib import Path

import pytest
import torch
import transformers

import headkit
from headkit import CheckpointError, FingerprintMismatchError, MultiHeadModel, head_config
from headkit._fs import atomic_write_bytes

from conftest import text_batch, tiny_config


def make_model(weighting="static") -> MultiHeadModel:
    torch.manual_seed(0)
    backbone = transformers.BertModel(tiny_config("bert"))
    heads = {
        "sentiment": head_config("classification", labels=["neg", "pos"], pooling="mean"),
        "ner": head_config("token-classification", labels=["O", "B-PER", "I-PER"]),
        "qa": head_config("span"),
        "mlm": head_config("masked-lm"),
    }
    return MultiHeadModel(backbone, heads, weighting=weighting).eval()


def outputs(model: MultiHeadModel) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(**text_batch()).outputs


def test_head_only_round_trip_is_bit_identical(tmp_path):
    model = make_model(weighting="uncertainty")
    with torch.no_grad():
        model.weighting.log_vars["ner"].fill_(0.7)
    headkit.save_heads(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads", "heads.json", "weighting.safetensors"]
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["mlm", "ner", "qa", "sentiment"]
    assert sorted(p.name for p in (tmp_path / "heads" / "ner").iterdir()) == ["config.json", "model.safetensors"]
    loaded = headkit.load_heads(tmp_path, model.backbone).eval()
    for name, tensor in outputs(model).items():
        assert torch.equal(tensor, outputs(loaded)[name]), name
    assert loaded.weighting.log_vars["ner"].item() == pytest.approx(0.7)
    assert loaded.head_configs == model.head_configs
    assert loaded.heads["mlm"].decoder.weight is loaded.backbone.get_input_embeddings().weight


def test_manifest_records_labels_weighting_and_fingerprint(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    manifest = json.loads((tmp_path / "heads.json").read_text())
    assert manifest["format_version"] == 2 and manifest["heads"]["ner"]["path"] == "heads/ner"
    assert json.loads((tmp_path / "heads" / "ner" / "config.json").read_text())["labels"] == ["O", "B-PER", "I-PER"]
    assert manifest["weighting"] == "static" and "weighting_state" not in manifest  # nothing learned to keep
    assert not (tmp_path / "weighting.safetensors").exists()
    assert manifest["backbone"]["model_type"] == "bert" and manifest["backbone"]["hidden_size"] == 32
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["backbone"]["structure_sha256"])
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["heads"]["ner"]["sha256"]["model.safetensors"])
    # the tied decoder weight belongs to the backbone: named in the manifest, not duplicated in the head file
    assert manifest["heads"]["mlm"]["tied"] == {"decoder.weight": "embeddings.word_embeddings.weight"}
    assert manifest["heads"]["sentiment"]["tied"] == {}
    from safetensors import safe_open

    with safe_open(tmp_path / "heads" / "mlm" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "decoder.weight" not in keys and "decoder.bias" in keys


def test_full_save_round_trip_is_bit_identical(tmp_path):
    model = make_model()
    target = tmp_path / "run"
    headkit.save(model, target)
    assert (target / "backbone" / "model.safetensors").is_file()
    loaded = headkit.load(target).eval()
    for name, tensor in outputs(model).items():
        assert torch.equal(tensor, outputs(loaded)[name]), name
    headkit.save(loaded, target)  # overwriting an existing save swaps it in
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary leftovers"


def test_directory_without_manifest_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"no heads.json"):
        headkit.load_heads(tmp_path, make_model().backbone)


def test_head_only_checkpoint_passed_to_full_load_says_so(tmp_path):
    headkit.save_heads(make_model(), tmp_path)
    with pytest.raises(CheckpointError, match=r"head-only checkpoint"):
        headkit.load(tmp_path)


def test_truncated_weights_are_refused(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    weights = tmp_path / "heads" / "ner" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"corrupt, truncated"):
        headkit.load_heads(tmp_path, model.backbone)


def test_corrupt_weights_without_checksum_are_refused(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    manifest = json.loads((tmp_path / "heads.json").read_text())
    del manifest["heads"]["qa"]["sha256"]
    (tmp_path / "heads.json").write_text(json.dumps(manifest))
    (tmp_path / "heads" / "qa" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file"):
        headkit.load_heads(tmp_path, model.backbone)


def test_bit_flip_is_caught_by_checksum(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    weights = tmp_path / "heads" / "sentiment" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sentiment.model\.safetensors does not match the checksum"):
        headkit.load_heads(tmp_path, model.backbone)


def test_a_head_config_edited_after_the_save_is_caught_by_checksum(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    path = tmp_path / "heads" / "sentiment" / "config.json"
    path.write_text(path.read_text().replace('"neg"', '"negative"'))
    with pytest.raises(CheckpointError, match=r"sentiment.config\.json does not match the checksum"):
        headkit.load_heads(tmp_path, model.backbone)


def test_damaged_manifest_is_refused(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    (tmp_path / "heads.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"not valid JSON"):
        headkit.load_heads(tmp_path, model.backbone)
    (tmp_path / "heads.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match=r"not a headkit manifest"):
        headkit.load_heads(tmp_path, model.backbone)


def test_fingerprint_mismatch_shows_both_backbones(tmp_path):
    model = make_model()
    headkit.save_heads(model, tmp_path)
    other = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
        )
    )
    with pytest.raises(FingerprintMismatchError) as info:
        headkit.load_heads(tmp_path, other)
    message = str(info.value)
    assert "different backbone" in message and "saved=" in message and "this backbone=" in message
    assert "structure_sha256" in message


def test_heads_of_a_changed_backbone_are_refused_on_the_pretrained_one(tmp_path, caplog):
    """Heads trained with full, partial, LoRA or few-shot sit on a changed backbone: loaded onto
    the pretrained checkpoint (same names and shapes) they would predict garbage without a word."""
    model = make_model()
    pretrained = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with torch.no_grad():  # what training does to a backbone: every weight moves a little
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    headkit.save_heads(model, tmp_path)
    original = transformers.BertModel(tiny_config("bert"))
    original.load_state_dict(pretrained)
    with pytest.raises(FingerprintMismatchError, match="trained on a backbone with other weights"):
        headkit.load_heads(tmp_path, original)
    with caplog.at_level("WARNING", logger="headkit"):
        forced = headkit.load_heads(tmp_path, original, allow_other_weights=True)
    assert forced.heads.keys() == model.heads.keys() and "loading them anyway" in caplog.text
    assert headkit.load_heads(tmp_path, model.backbone.to(torch.bfloat16)).heads.keys() == model.heads.keys()
    with pytest.raises(FingerprintMismatchError, match=r"saved in float32, loaded in float16: load it in float32"):
        headkit.load_heads(tmp_path, transformers.BertModel(tiny_config("bert")).half())
    pooler_only = transformers.BertModel(tiny_config("bert"))
    pooler_only.load_state_dict(model.backbone.float().state_dict())
    torch.nn.init.normal_(pooler_only.pooler.dense.weight)  # as a checkpoint without a pooler gets at load
    with pytest.raises(
        FingerprintMismatchError, match=r"2 of .* tensors differ: pooler.dense.bias, pooler.*only its pooler"
    ):
        torch.nn.init.normal_(pooler_only.pooler.dense.bias)
        headkit.load_heads(tmp_path, pooler_only)


def test_weights_a_checkpoint_lacks_are_the_same_at_every_load(tmp_path):
    """BERT's pooler is not in a masked-LM checkpoint: it is initialised at load, from a fixed seed,
    so heads saved on one load (pooling: pooler) fit and predict the same on the next."""
    torch.manual_seed(0)
    transformers.BertForMaskedLM(tiny_config("bert")).save_pretrained(tmp_path / "mlm")
    torch.manual_seed(123)
    first = headkit.MultiHeadModel.from_pretrained(
        tmp_path / "mlm", {"s": head_config("classification", labels=["a", "b"], pooling="pooler")}
    )
    headkit.save_heads(first, tmp_path / "heads")
    torch.manual_seed(456)
    again = headkit.load_heads(tmp_path / "heads", headkit.load_backbone(tmp_path / "mlm"))
    for name, tensor in outputs(first).items():
        assert torch.equal(tensor, outputs(again)[name]), name


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match=r"disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_no_pickle_is_ever_loaded():
    """Checkpoints are JSON + safetensors only: no module may unpickle anything."""
    source = Path(headkit.__file__).parent
    for path in source.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        for call in re.findall(r"(?<![\w.])torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def test_inspect_lists_the_heads_of_a_headkit_save(tmp_path, capsys, monkeypatch):
    from headkit.cli.main import main

    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: rich does not fold the table
    from headkit.ship.save import describe_heads

    model = make_model()
    headkit.save(model, tmp_path / "run")
    heads = describe_heads(tmp_path / "run")
    assert heads["ner"]["labels"] == ["O", "B-PER", "I-PER"] and heads["ner"]["type"] == "token-classification"
    assert heads["sentiment"]["params"] == 32 * 2 + 2
    assert heads["mlm"]["tied_to_embeddings"] and heads["mlm"]["params"] == 32 * 32 + 32 + 2 * 32 + 100
    assert describe_heads(tmp_path) is None
    assert main(["inspect", str(tmp_path / "run")]) == 0
    shown = capsys.readouterr().out
    assert "headkit heads" in shown and "B-PER" in shown and "(+ tied decoder)" in shown
