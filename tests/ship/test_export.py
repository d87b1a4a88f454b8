"""Export to plain transformers models and to ONNX: exact parity, or a clear refusal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import headkit
import headkit.training.recipe
from headkit.errors import CheckpointError, ExportError
from headkit.ship.export import ExportResult, export_onnx, export_transformers, load_merged, probe_inputs
from headkit.ship.onnx_engine import OnnxModel
from headkit.ship.predict import load_for_inference, predict_texts

from conftest import SERVED_HEADS

TEXTS = ["the film was good", "alice visited paris and london with bob", "bad", "the plot was very dull and boring"]
EXPORTABLE = {
    "sentiment": ("AutoModelForSequenceClassification", "BertForSequenceClassification"),
    "stars": ("AutoModelForSequenceClassification", "BertForSequenceClassification"),
    "genres": ("AutoModelForSequenceClassification", "BertForSequenceClassification"),
    "tags": ("AutoModelForTokenClassification", "BertForTokenClassification"),
    "answer": ("AutoModelForQuestionAnswering", "BertForQuestionAnswering"),
    "mlm": ("AutoModelForMaskedLM", "BertForMaskedLM"),
}


def _ours(saved: Path, head: str):
    model, tokenizer = load_for_inference(saved)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(heads=[head], **enc)
    return enc, out.outputs[head], out.mask.bool()


@pytest.mark.parametrize("head", sorted(EXPORTABLE))
def test_single_head_export_matches_ours(saved_multihead, tmp_path, head):
    auto, expected_class = EXPORTABLE[head]
    result = export_transformers(saved_multihead, tmp_path / head, head=head)
    assert result.target == expected_class
    exported = getattr(transformers, auto).from_pretrained(tmp_path / head).eval()
    enc, ours, mask = _ours(saved_multihead, head)
    with torch.no_grad():
        out = exported(**enc)
    theirs = torch.stack([out.start_logits, out.end_logits], -1) if head == "answer" else out.logits
    if SERVED_HEADS[head].get("pooling") is None:  # per-token heads: compare real positions
        ours, theirs = ours[mask], theirs[mask]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), float((ours - theirs).abs().max())
    if head in ("sentiment", "genres", "tags"):
        assert list(exported.config.id2label.values()) == SERVED_HEADS[head]["labels"]
    assert exported.config.problem_type == {
        "sentiment": "single_label_classification",
        "stars": "regression",
        "genres": "multi_label_classification",
    }.get(head, exported.config.problem_type)


def test_exported_classifier_loads_in_a_pipeline_without_headkit(saved_multihead, tmp_path):
    export_transformers(saved_multihead, tmp_path / "plain", head="sentiment")
    script = (
        "import sys, json; sys.modules['headkit'] = None\n"  # importing headkit would now fail
        "from transformers import pipeline\n"
        f"p = pipeline('text-classification', model={str(tmp_path / 'plain')!r}, top_k=None)\n"
        f"print(json.dumps(p([{TEXTS[0]!r}])[0]))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = {d["label"]: d["score"] for d in json.loads(done.stdout.strip().splitlines()[-1])}
    model, tokenizer = load_for_inference(saved_multihead)
    ours = predict_texts(model, tokenizer, [TEXTS[0]], heads=["sentiment"])[0]["sentiment"]["probs"]
    assert scores == pytest.approx(ours, abs=1e-5)


def test_head_without_an_exact_mapping_is_refused_and_nothing_written(saved_multihead, tmp_path):
    with pytest.raises(ExportError, match="pooling: pooler") as e:
        export_transformers(saved_multihead, tmp_path / "topic", head="topic")
    assert "onnx" in str(e.value)
    assert not (tmp_path / "topic").exists()
    assert not list(tmp_path.glob(".topic*"))  # no staging directory left behind


def test_box_head_has_no_transformers_class(tiny_checkpoint, tmp_path):
    vit = tiny_checkpoint("ViTForImageClassification")
    model = headkit.MultiHeadModel.from_pretrained(vit, {"box": {"type": "box"}})
    headkit.save(model, tmp_path / "vit")
    with pytest.raises(ExportError, match="no AutoModelFor"):
        export_transformers(tmp_path / "vit", tmp_path / "out")


def test_multihead_export_writes_backbone_and_heads_and_says_why(saved_multihead, tmp_path):
    result = export_transformers(saved_multihead, tmp_path / "all")
    assert result.target == "backbone + heads"
    assert "--only_head" in result.message and "7 heads" in result.message
    transformers.AutoModel.from_pretrained(tmp_path / "all" / "backbone")  # plain, no headkit needed
    reloaded = headkit.load(tmp_path / "all")
    assert list(reloaded.heads) == list(SERVED_HEADS)


def test_export_refuses_unknown_head_existing_output_and_its_own_source(saved_multihead, tmp_path):
    with pytest.raises(ExportError, match="no head named 'nope'"):
        export_transformers(saved_multihead, tmp_path / "x", head="nope")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--overwrite"):
        export_transformers(saved_multihead, tmp_path / "busy", head="sentiment")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="would replace the model"):
        export_transformers(saved_multihead, saved_multihead, head="sentiment", overwrite=True)


@pytest.fixture(scope="module")
def onnx_export_result(saved_multihead, tmp_path_factory) -> ExportResult:
    return export_onnx(saved_multihead, tmp_path_factory.mktemp("onnx") / "export", quantize=True)


@pytest.fixture(scope="module")
def onnx_export(onnx_export_result) -> Path:
    return onnx_export_result.path


def test_onnx_graph_matches_pytorch_for_every_head(saved_multihead, onnx_export):
    model, tokenizer = load_for_inference(saved_multihead)
    onnx = OnnxModel(onnx_export)
    texts = [*TEXTS, "london", "bob met alice in paris " * 5]  # batch and lengths unlike the export probe
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**enc)
    theirs = onnx(**enc)
    assert list(theirs.outputs) == list(SERVED_HEADS)
    mask = enc["attention_mask"].bool()
    for name, expected in ours.outputs.items():
        got = theirs.outputs[name]
        if model.heads[name].per_token:
            expected, got = expected[mask], got[mask]
        assert float((expected - got).abs().max()) <= 1e-4, name
    one = tokenizer(["good"], return_tensors="pt")  # batch of one, length unlike the probe
    assert torch.allclose(onnx(**one).outputs["sentiment"], model(**one).outputs["sentiment"], atol=1e-4)


def test_the_onnx_graph_carries_onnxruntimes_fusions_and_says_which(saved_multihead, onnx_export, tmp_path):
    """The parity test above runs on this fused graph; --no_optimize keeps torch.onnx's graph."""
    import json

    import onnx

    fused = json.loads((onnx_export / "onnx.json").read_text())["graph_optimization"]
    assert "SkipLayerNormalization" in fused
    ops = {node.op_type for node in onnx.load(str(onnx_export / "model.onnx")).graph.node}
    assert "SkipLayerNormalization" in ops
    plain = export_onnx(saved_multihead, tmp_path / "plain", optimize=False)
    assert "not asked for" in plain.message
    assert "SkipLayerNormalization" not in {
        n.op_type for n in onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node
    }


def test_predict_with_onnx_engines_gives_the_pytorch_labels(saved_multihead, onnx_export):
    model, tokenizer = load_for_inference(saved_multihead)
    expected = predict_texts(model, tokenizer, TEXTS)
    for engine in ("onnx", "onnx-int8"):
        onnx, onnx_tokenizer = load_for_inference(onnx_export, engine=engine)
        got = predict_texts(onnx, onnx_tokenizer, TEXTS)
        assert [g["tags"] for g in got] == [e["tags"] for e in expected] or engine == "onnx-int8"
        for g, e in zip(got, expected, strict=True):
            assert set(g) == set(e)
            tolerance = 1e-4 if engine == "onnx" else 0.05  # int8 weights move probabilities a little
            assert g["sentiment"]["probs"]["pos"] == pytest.approx(e["sentiment"]["probs"]["pos"], abs=tolerance)


def test_the_int8_graph_comes_with_its_measured_error(saved_multihead, onnx_export_result):
    """One quantisation call, then int8 against fp32 on the export's own probe inputs: the figures
    are in the result, its message and onnx.json, and an independent run of both graphs agrees."""
    error = onnx_export_result.int8_error
    assert list(error) == list(SERVED_HEADS)
    assert json.loads((onnx_export_result.path / "onnx.json").read_text())["int8_error"] == error
    assert "|int8 - fp32|" in onnx_export_result.message and f"sentiment {error['sentiment']:.3g}" in (
        onnx_export_result.message
    )
    model, processor, _ = load_merged(saved_multihead)
    inputs = probe_inputs(model, processor)
    fp32, int8 = OnnxModel(onnx_export_result.path)(**inputs), OnnxModel(onnx_export_result.path, int8=True)(**inputs)
    for name, reported in error.items():
        assert reported == pytest.approx(float((fp32.outputs[name] - int8.outputs[name]).abs().max()), abs=1e-6)
    assert 0 < max(error.values()) < 1.0  # int8 moved the outputs, a little (random heads, std 0.5 weights)


REFUSAL = "[ShapeInferenceError] Inferred shape and existing shape differ in dimension 0: (384) vs (2)"


def test_a_graph_onnxruntime_cannot_quantise_is_one_clear_error_and_nothing_is_written(
    saved_multihead, tmp_path, monkeypatch
):
    """onnxruntime before 1.32 (1.23 on Python 3.10) refuses torch.onnx's graphs with this error;
    the export says what to do instead of trying other ways to quantise."""
    import onnxruntime.quantization

    calls = []

    def refuses(*args, **kwargs):  # onnxruntime 1.23's words on the MiniLM export (benchmarks/inference.py)
        calls.append(args)
        raise RuntimeError(REFUSAL)

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", refuses)
    expected = r"could not quantise.*ShapeInferenceError.*without --quantize.*1\.32 or newer"
    with pytest.raises(ExportError, match=expected):
        export_onnx(saved_multihead, tmp_path / "int8", quantize=True, optimize=False)
    assert len(calls) == 1
    assert not (tmp_path / "int8").exists() and not list(tmp_path.glob(".int8*"))


def test_corrupt_onnx_file_and_missing_export_are_refused(onnx_export, saved_multihead, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(onnx_export, broken)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        OnnxModel(broken)
    (broken / "model.int8.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"model\.int8\.onnx is missing \(export with --quantize"):
        OnnxModel(broken, int8=True)
    with pytest.raises(CheckpointError, match="export one with headkit export"):
        load_for_inference(saved_multihead, engine="onnx")


def test_cli_export_and_onnx_predict(saved_multihead, tmp_path, capsys):
    from headkit.cli.main import main

    assert (
        main(
            [
                "export",
                str(saved_multihead),
                "--to",
                "transformers",
                "--only_head",
                "tags",
                "--output",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    assert "BertForTokenClassification" in capsys.readouterr().out
    assert main(["export", str(saved_multihead), "--to", "pdf"]) == 2
    assert "--to 'pdf': choose one of transformers, onnx" in capsys.readouterr().err
    assert main(["export", str(saved_multihead), "--to", "transformers", "--quantize"]) == 2
    assert main(["predict", str(saved_multihead), "--engine", "tensorrt", "--text", "good"]) == 2
    assert "--engine 'tensorrt': choose one of auto, torch, torch-bf16, onnx, onnx-int8" in capsys.readouterr().err


def test_trained_pooler_head_round_trips_train_export_pipeline(tiny_text_model, tmp_path, capsys):
    """The user path: train with --pooling pooler (frozen, cached features), export, predict without headkit."""
    from headkit.cli.main import main

    from conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "reviews.csv", sentiment_rows(48))
    run = tmp_path / "run"
    flags = ["--head", "sentiment:label", "--pooling", "pooler", "--epochs", "2", "--no_progress"]
    assert main(["train", "--model", str(tiny_text_model), "--data", str(data), "--output_dir", str(run), *flags]) == 0
    assert main(["export", str(run), "--to", "transformers"]) == 0
    assert "BertForSequenceClassification" in capsys.readouterr().out
    exported = transformers.pipeline("text-classification", model=str(run / "export-transformers"), top_k=None)
    model, tokenizer = load_for_inference(run)
    ours = predict_texts(model, tokenizer, ["a very good film"])[0]["sentiment"]["probs"]
    theirs = {d["label"]: d["score"] for d in exported(["a very good film"])[0]}
    assert theirs == pytest.approx(ours, abs=1e-5)


def test_lora_run_exports_with_the_adapter_merged(tiny_text_model, tmp_path):
    from conftest import sentiment_rows, write_csv

    data = write_csv(tmp_path / "reviews.csv", sentiment_rows(32))
    run = tmp_path / "lora"
    config = headkit.training.recipe.TrainConfig(
        model=str(tiny_text_model), data=str(data), head=["sentiment:label"], pooling="pooler", strategy="lora",
        lora_r=4, lora_lr=5e-2, epochs=2, output_dir=str(run), progress=False,
    )  # fmt: skip
    headkit.training.recipe.train(config)
    export_transformers(run, tmp_path / "plain")  # refuses unless outputs match, so the adapter is in
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    base = transformers.AutoModel.from_pretrained(tiny_text_model)
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(exported.bert.state_dict()[query], base.state_dict()[query])  # LoRA moved it
    enc, ours, _ = _ours(run, "sentiment")
    with torch.no_grad():
        assert torch.allclose(exported(**enc).logits, ours, atol=1e-5)


def test_the_server_keeps_onnxruntimes_idle_threads_off_the_cores(onnx_export, monkeypatch):
    """A lone caller lets onnxruntime spin (faster runs); the server, whose cores also parse and
    tokenise requests, turns spinning off (benchmarks/serve_load.py measures the difference)."""
    from headkit.ship import predict
    from headkit.ship.serve import load_app

    def spinning(model: OnnxModel) -> str:
        try:
            return model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # onnxruntime raises for an entry never set: its default, spin, applies
            return "default"

    alone, _ = load_for_inference(onnx_export, engine="onnx-int8")
    assert spinning(alone) == "default"
    loaded = []
    real = predict.load_for_inference

    def keep_what_the_server_loads(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(predict, "load_for_inference", keep_what_the_server_loads)
    load_app(onnx_export, engine="onnx-int8")
    assert spinning(loaded[0][0]) == "0"
