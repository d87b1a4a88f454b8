"""`--engine auto`: engines validated against torch fp32 on the run's validation split, the choice
recorded next to the model and reused; a damaged export is refused; no onnxruntime means torch."""

import json
import logging
import shutil

import pytest
import torch

import headkit
from headkit.cli.main import main
from headkit.errors import UsageError
from headkit.ship import engines
from headkit.ship.engines import CHOICE_FILE, EXPORT_DIR, auto_engine, read_choice, resolve_engine, validate_engines
from headkit.ship.export import export_onnx
from headkit.ship.predict import load_for_inference
from headkit.training.validation_set import VALIDATION_FILE, load_validation_set

from conftest import sentiment_rows, write_csv

HEADS = {"sentiment": "label", "stars": {"type": "regression", "label": "score"}}


@pytest.fixture(scope="module")
def run(tiny_text_model, tmp_path_factory):
    """A trained two-head run (a classifier and a regression head) with its ONNX export: the export
    checks the engines on the validation split training kept."""
    path = tmp_path_factory.mktemp("engines") / "run"
    rows = [dict(r, score=float(r["score"])) for r in sentiment_rows(64)]
    headkit.train(str(tiny_text_model), HEADS, train_dataset=rows, output_dir=path, epochs=2, batch_size=8,
                  lr=1e-2, val_fraction=0.5, progress=False, seed=0)  # fmt: skip
    result = export_onnx(path, path / EXPORT_DIR, quantize=True)
    return path, result


def test_training_keeps_its_validation_split_for_the_engine_check(run):
    path, _ = run
    kept = load_validation_set(path)
    metrics = json.loads((path / "metrics.json").read_text())
    assert kept is not None and len(kept) == metrics["val_examples"] == 32
    assert set(kept.labels) == {"sentiment", "stars"}
    # scored again from the file, the torch model gives the validation scores training reported
    model, _ = load_for_inference(path, engine="torch")
    from headkit.training.evaluate import evaluate

    again = evaluate(model, kept, pad_id=0)
    assert again.scores["sentiment"]["accuracy"] == pytest.approx(metrics["heads"]["sentiment"]["accuracy"])


def test_export_checks_every_engine_and_records_the_fastest_valid_one(run):
    path, result = run
    record = result.engines
    assert record is not None and record == read_choice(path)
    checks = {c["engine"]: c for c in record["candidates"]}
    assert {"torch", "onnx", "onnx-int8", "torch-bf16"} <= set(checks)
    for name in ("onnx", "onnx-int8"):
        assert set(checks[name]["agreement"]) == {"sentiment", "stars"}, checks[name]
        assert checks[name]["examples_per_s"] > 0
    assert checks["onnx"]["valid"], checks["onnx"]  # fp32 ONNX answers as torch fp32 does
    valid = [c for c in checks.values() if c["valid"] and c["examples_per_s"]]
    assert record["chosen"] == max(valid, key=lambda c: c["examples_per_s"])["engine"]
    assert record["machine"] == engines.machine_facts("cpu")


def test_the_recorded_choice_is_reused_without_measuring_again(run, monkeypatch):
    path, _ = run
    chosen = read_choice(path)["chosen"]
    monkeypatch.setattr(engines, "validate_engines", lambda *a, **k: pytest.fail("measured again"))
    assert auto_engine(path, "cpu") == chosen
    model, _ = load_for_inference(path)  # the default engine is auto
    assert type(model).__name__ == ("OnnxModel" if chosen.startswith("onnx") else "MultiHeadModel")
    assert headkit.pipeline(path, device="cpu")("good film")["sentiment"]["label"] in ("pos", "neg")


@pytest.mark.parametrize("change", ["machine", "model", "export gone"])
def test_another_machine_model_or_missing_export_measures_again(run, tmp_path, monkeypatch, change):
    path, _ = run
    copy = tmp_path / "copied"
    shutil.copytree(path, copy)
    record = json.loads((copy / CHOICE_FILE).read_text())
    if change == "machine":
        record["machine"]["cpu"] = "another CPU"
    elif change == "model":
        record["model"] = "0" * 64  # as after a retrain that kept the record
    else:
        record["chosen"] = "onnx"
        shutil.rmtree(copy / EXPORT_DIR / "..") if False else (copy / EXPORT_DIR / "model.onnx").unlink()
    (copy / CHOICE_FILE).write_text(json.dumps(record))
    measured = []
    monkeypatch.setattr(engines, "validate_engines", lambda root, data, **k: measured.append(root) or record)
    auto_engine(copy, "cpu")
    assert measured == [copy]


def test_training_again_in_the_run_directory_drops_what_was_measured_on_the_old_model(run, tiny_text_model, tmp_path):
    path, _ = run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    rows = [dict(r, score=float(r["score"])) for r in sentiment_rows(32, seed=3)]
    headkit.train(str(tiny_text_model), HEADS, train_dataset=rows, output_dir=copy, epochs=1, batch_size=8,
                  progress=False, overwrite=True, val_fraction=0.25)  # fmt: skip
    assert not (copy / CHOICE_FILE).exists() and not (copy / EXPORT_DIR).exists()
    assert len(load_validation_set(copy)) == 8  # the new run's split
    assert resolve_engine(copy, "auto", "cpu", "auto")[0] == "torch"  # no export of the new model: torch


def test_evaluate_runs_on_the_chosen_engine(run, tmp_path, capsys):
    path, _ = run
    rows = [dict(r, score=float(r["score"])) for r in sentiment_rows(16, seed=7)]
    data = write_csv(tmp_path / "eval.csv", rows)
    for engine in ("auto", "onnx", "torch"):
        assert main(["evaluate", str(path), "--data", str(data), "--head", "sentiment:label", "--head",
                     "stars:score", "--engine", engine, "--output", str(tmp_path / f"{engine}.json")]) == 0  # fmt: skip
    scores = {e: json.loads((tmp_path / f"{e}.json").read_text())["scores"] for e in ("onnx", "torch")}
    assert scores["onnx"]["sentiment"]["accuracy"] == scores["torch"]["sentiment"]["accuracy"]


def test_a_dtype_named_with_auto_means_torch_and_bf16_contradictions_are_refused(run):
    path, _ = run
    assert resolve_engine(path, "auto", "cpu", "float32") == ("torch", "float32")
    assert resolve_engine(path, "torch-bf16", "cpu", "auto") == ("torch", "bfloat16")
    with pytest.raises(UsageError, match="torch-bf16"):
        resolve_engine(path, "torch-bf16", "cpu", "float32")
    chosen = read_choice(path)["chosen"]
    expected = ("torch", "float32") if chosen == "torch" else (chosen, "auto")  # a checked torch runs as checked
    assert resolve_engine(path, "auto", "cpu", "auto") == expected


def test_each_head_type_judges_the_same_decision():
    from headkit.heads import build_head, head_config

    classes = build_head(head_config("classification", labels=["a", "b"], input_size=8)).scoring
    assert classes.same_decision({"label": "a", "probs": {"a": 0.6}}, {"label": "a", "probs": {"a": 0.9}})
    assert not classes.same_decision({"label": "a", "probs": {}}, {"label": "b", "probs": {}})
    values = build_head(head_config("regression", labels=["label"], input_size=8)).scoring  # a target named "label"
    assert values.same_decision({"label": 1.0}, {"label": 1.005})
    assert not values.same_decision({"label": 0.2}, {"label": 5.0})
    assert not values.same_decision({"label": 0.001}, {"label": 0.009})  # no absolute slack near zero
    scores = build_head(head_config("cross-encoder", input_size=8)).scoring  # a logit that ranks: slack near zero
    assert scores.same_decision(0.004, 0.0041) and not scores.same_decision(-0.3, 0.3)
    labels = build_head(head_config("multilabel", labels=["x", "y"], input_size=8)).scoring
    assert labels.same_decision({"labels": ["y", "x"], "probs": {}}, {"labels": ["x", "y"], "probs": {"x": 1}})


def test_a_damaged_export_is_refused_and_never_chosen(run, tmp_path):
    """An export whose heads answer otherwise (an export of other weights left in export-onnx) fails
    the agreement bar; torch runs instead."""
    path, _ = run
    copy = tmp_path / "run"
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns(EXPORT_DIR))
    other = headkit.MultiHeadModel.from_pretrained(copy / "model")
    with torch.no_grad():
        for p in other.heads["sentiment"].parameters():
            p.neg_()  # flips the classifier's decisions
    other.save_pretrained(tmp_path / "other")
    export_onnx(tmp_path / "other", copy / EXPORT_DIR, quantize=True)  # not the run's model: no check at export
    record = validate_engines(copy, device="cpu")
    checks = {c["engine"]: c for c in record["candidates"]}
    for name in ("onnx", "onnx-int8"):
        assert not checks[name]["valid"] and "sentiment: agreement" in checks[name]["why"], checks[name]
        assert checks[name]["agreement"]["sentiment"] < engines.MIN_AGREEMENT
    assert record["chosen"] == "torch"
    assert auto_engine(copy, "cpu") == "torch"


def test_labelled_data_with_a_class_training_never_had_is_checked_not_refused(run, tmp_path):
    """A user's own labelled set may hold a class the run never saw: every engine misses it alike."""
    path, _ = run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    rows = [dict(r, score=float(r["score"])) for r in sentiment_rows(24, seed=3)]
    rows[0]["label"] = "mixed"  # not one of the sentiment head's classes
    record = validate_engines(copy, rows, device="cpu")
    checks = {c["engine"]: c for c in record["candidates"]}
    assert record["examples"] == 24 and checks["onnx"]["valid"], checks["onnx"]
    assert checks["onnx"]["agreement"]["sentiment"] == 1.0


def test_data_that_labels_one_head_checks_the_engines_on_that_head(run, tmp_path):
    """Data for some of a model's heads: the others are not decoded on it, so not judged (nor failed)."""
    path, _ = run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    from headkit.training.evaluate import encode_dataset

    model, tokenizer = load_for_inference(copy, engine="torch")
    rows = [{"text": r["text"], "label": r["label"]} for r in sentiment_rows(24, seed=3)]  # no stars column
    data = encode_dataset(model, tokenizer, rows, {"sentiment": "label"}, name="rows", unseen_labels=True)
    record = validate_engines(copy, data, device="cpu")
    checks = {c["engine"]: c for c in record["candidates"]}
    assert checks["onnx"]["valid"], checks["onnx"]
    assert set(checks["onnx"]["agreement"]) == {"sentiment"}


def test_without_onnxruntime_auto_runs_torch_and_says_so_once(run, tmp_path, monkeypatch, caplog):
    import importlib.util

    path, _ = run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    (copy / CHOICE_FILE).unlink()
    find_spec = importlib.util.find_spec
    without_ort = lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", without_ort)
    facts = engines.machine_facts("cpu")
    monkeypatch.setattr(engines, "machine_facts", lambda device: {**facts, "amx": False})  # no bf16 candidate
    with caplog.at_level(logging.WARNING, logger="headkit"):
        assert resolve_engine(copy, "auto", "cpu", "auto") == ("torch", "auto")
    said = [r.getMessage() for r in caplog.records if "onnxruntime is not installed" in r.getMessage()]
    assert len(said) == 1, said
    names, notes = engines.candidates(copy, "cpu")
    assert names == [] and "onnxruntime is not installed" in notes["onnx"]


def test_a_run_without_a_validation_split_runs_torch(run, tmp_path):
    path, _ = run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    (copy / CHOICE_FILE).unlink()
    (copy / VALIDATION_FILE).unlink()
    assert auto_engine(copy, "cpu") is None  # nothing to check on: torch, as it always ran
    assert resolve_engine(copy, "auto", "cpu", "auto") == ("torch", "auto")
    assert not (copy / CHOICE_FILE).exists()


def test_inspect_shows_the_engines_and_predict_runs_the_choice(run, capsys):
    path, _ = run
    assert main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert (
        "engines checked on 32 validation examples" in shown
        and f"--engine auto runs {read_choice(path)['chosen']}" in shown
    )
    assert main(["predict", str(path), "--text", "good film"]) == 0
    assert "sentiment:" in capsys.readouterr().out
