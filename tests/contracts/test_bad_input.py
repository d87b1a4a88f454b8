"""The bad-input matrix: every entry point, fed bad input, answers with a HeadkitError that says
what to fix — never a traceback from deep inside torch, pandas or transformers.

Library cases call the public functions; CLI cases run `headkit.cli.main.main` (exit code 2, one
line on stderr); the server's bad requests (11 kinds, each a 4xx) are in test_serve.py.
Property-based tests (hypothesis) cover the readers and label encoding.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headkit
from headkit import HeadkitError
from headkit.data.batching import split_indices
from headkit.data.readers import read_rows
from headkit.data.tasks import TaskSpec
from headkit.heads import LabelSource, head_class
from headkit.training.recipe import TrainConfig, train

from conftest import sentiment_rows, write_csv

LIBRARY: dict[str, tuple[Callable, str]] = {}


def case(name: str, message: str):
    """Register a library case: fn(ctx) must raise HeadkitError whose message contains `message`."""

    def register(fn: Callable) -> Callable:
        LIBRARY[name] = (fn, message)
        return fn

    return register


class Ctx:
    def __init__(self, tmp: Path, model: Path, saved: Path):
        self.tmp, self.model, self.saved = tmp, model, saved

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def train(self, data: Path | str, **fields) -> None:
        config = dict(model=str(self.model), output_dir=str(self.tmp / "run"), epochs=1, progress=False)
        config.update(fields)
        if "tasks" not in config:
            config["tasks"] = [TaskSpec("sentiment", str(data))]
        train(TrainConfig(**config))

    def good_csv(self) -> Path:
        return write_csv(self.tmp / "good.csv", sentiment_rows(16))

    def copy_saved(self) -> Path:
        target = self.tmp / "copy"
        shutil.copytree(self.saved, target)
        return target


# ------------------------------------------------------------------ data files
@case("csv: ragged row", "not a well-formed CSV")
def _(c):
    read_rows(c.file("a.csv", "text,label\nfine,pos\nbad,neg,extra,more\n"))


@case("csv: unterminated quote", "not a well-formed CSV")
def _(c):
    read_rows(c.file("a.csv", 'text,label\n"never closed,pos\nx,neg\n'))


@case("csv: latin-1 bytes", "not UTF-8")
def _(c):
    read_rows(c.file("a.csv", "text,label\ncaf\xe9,pos\n".encode("latin-1")))


@case("csv: utf-16", "not UTF-8")
def _(c):
    read_rows(c.file("a.csv", "text,label\nok,pos\n".encode("utf-16")))


@case("csv: binary garbage", "not a well-formed CSV")
def _(c):
    read_rows(c.file("a.csv", bytes(range(256)) * 8))


@case("csv: empty file", "is empty")
def _(c):
    read_rows(c.file("a.csv", ""))


@case("csv: header only", "no data rows")
def _(c):
    read_rows(c.file("a.csv", "text,label\n"))


@case("jsonl: broken line", "line 2: not valid JSON")
def _(c):
    read_rows(c.file("a.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": \n'))


@case("jsonl: line is not an object", "not a JSON object")
def _(c):
    read_rows(c.file("a.jsonl", '{"text": "a"}\n[1, 2]\n'))


@case("json: array of strings", "not a JSON object")
def _(c):
    read_rows(c.file("a.json", '["a", "b"]'))


@case("parquet: damaged file", "not a readable Parquet")
def _(c):
    read_rows(c.file("a.parquet", b"PAR1" + b"\x00garbage" * 20 + b"PAR1"))


@case("unsupported extension", "unsupported file type")
def _(c):
    read_rows(c.file("a.xlsx", "text,label\na,b\n"))


@case("a directory as data", "not found")
def _(c):
    read_rows(c.tmp)


@case("missing text column", "'review'")
def _(c):
    c.train(None, tasks=[TaskSpec("sentiment", str(c.good_csv()), text="review")])


@case("missing label column", "'stars'")
def _(c):
    c.train(None, tasks=[TaskSpec("sentiment", str(c.good_csv()), label="stars")])


@case("regression target not a number", "not a number")
def _(c):
    c.train(None, tasks=[TaskSpec("s", str(c.good_csv()), label="label", type="regression")])


@case("one class only", "at least 2")
def _(c):
    rows = [{"text": f"text {i}", "label": "pos"} for i in range(8)]
    c.train(write_csv(c.tmp / "one.csv", rows))


@case("empty text cells", "text")
def _(c):
    rows = [{"text": "" if i % 2 else f"text {i}", "label": "pos" if i % 3 else "neg"} for i in range(12)]
    c.train(write_csv(c.tmp / "blank.csv", rows))


@case("unknown head type", "cannot be trained from files")
def _(c):
    c.train(None, tasks=[TaskSpec("s", str(c.good_csv()), type="ranking")])


@case("conll: tag missing on a line", "")
def _(c):
    read_rows(c.file("a.conll", "Alice\tB-PER\nvisited\nParis\tB-LOC\n"))


# ------------------------------------------------------------------ training options
@case("unknown strategy", "strategy")
def _(c):
    c.train(c.good_csv(), strategy="everything")


@case("partial without a number", "partial")
def _(c):
    c.train(c.good_csv(), strategy="partial:x")


@case("zero epochs", "epochs")
def _(c):
    c.train(c.good_csv(), epochs=0)


@case("zero batch size", "batch_size")
def _(c):
    c.train(c.good_csv(), batch_size=0)


@case("negative learning rate", "lr")
def _(c):
    c.train(c.good_csv(), lr=-1.0)


@case("validation fraction above 1", "val_fraction")
def _(c):
    c.train(c.good_csv(), val_fraction=1.5)


@case("zero max_length", "max_length")
def _(c):
    c.train(c.good_csv(), max_length=0)


@case("unknown weighting", "weighting")
def _(c):
    c.train(c.good_csv(), weighting="magic")


@case("resume without a checkpoint", "resume")
def _(c):
    c.train(c.good_csv(), resume=True)


@case("output_dir is a file", "output_dir")
def _(c):
    c.train(c.good_csv(), output_dir=str(c.file("taken", "x")))


# ------------------------------------------------------------------ models and checkpoints
@case("head wider than the backbone", "hidden size 32")
def _(c):
    headkit.MultiHeadModel.from_pretrained(
        c.model, {"s": {"type": "classification", "labels": ["a", "b"], "input_size": 64}}
    )


@case("pooler pooling on a backbone without one", "no pooling layer")
def _(c):
    import transformers

    from conftest import tiny_config

    headkit.MultiHeadModel(
        transformers.GPT2Model(tiny_config("gpt2")),
        {"s": headkit.head_config("classification", labels=["a", "b"], pooling="pooler")},
    )


@case("a truncated head weights file", "checksum")
def _(c):
    saved = c.copy_saved()
    weights = saved / "heads" / "sentiment" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    headkit.load(saved)


@case("heads.json not JSON", "not valid JSON")
def _(c):
    saved = c.copy_saved()
    (saved / "heads.json").write_text("{ not json")
    headkit.load(saved)


@case("heads.json without heads", "heads")
def _(c):
    saved = c.copy_saved()
    manifest = json.loads((saved / "heads.json").read_text())
    del manifest["heads"]
    (saved / "heads.json").write_text(json.dumps(manifest))
    headkit.load(saved)


@case("a head config with an unknown head type", "unknown head type")
def _(c):
    saved = c.copy_saved()
    path = saved / "heads" / "sentiment" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "type": "telepathy"}))
    manifest = json.loads((saved / "heads.json").read_text())  # vouch for the edit: the type is what is wrong
    manifest["heads"]["sentiment"]["sha256"]["config.json"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (saved / "heads.json").write_text(json.dumps(manifest))
    headkit.load(saved)


@case("backbone weights truncated", "backbone")
def _(c):
    saved = c.copy_saved()
    data = (saved / "backbone" / "model.safetensors").read_bytes()
    (saved / "backbone" / "model.safetensors").write_bytes(data[:1000])
    headkit.load(saved)


@case("backbone config not JSON", "config")
def _(c):
    saved = c.copy_saved()
    (saved / "backbone" / "config.json").write_text("{ broken")
    headkit.load(saved)


@case("heads from another backbone", "different backbone")
def _(c):
    import transformers

    from conftest import tiny_config

    config = tiny_config("bert")
    config.num_hidden_layers = 3
    headkit.load_heads(c.saved, transformers.BertModel(config))


@case("predict on a non-string item", "not a text or a (text, text_pair) pair")
def _(c):
    from headkit.ship.predict import load_for_inference, predict_texts

    model, tokenizer = load_for_inference(c.saved)
    predict_texts(model, tokenizer, ["fine", 42])


@case("disk full while saving", "No space left")
def _(c):
    import headkit._fs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    original = headkit._fs.tempfile.mkstemp
    headkit._fs.tempfile.mkstemp = full
    try:
        headkit.save_heads(headkit.load(c.saved), c.tmp / "out")
    finally:
        headkit._fs.tempfile.mkstemp = original


@case("read-only output directory", "Read-only file system")
def _(c):
    import headkit._fs

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    original = headkit._fs.tempfile.mkdtemp
    headkit._fs.tempfile.mkdtemp = read_only
    try:
        headkit.save(headkit.load(c.saved), c.tmp / "out")
    finally:
        headkit._fs.tempfile.mkdtemp = original


@pytest.fixture
def ctx(tmp_path, tiny_text_model, saved_multihead):
    return Ctx(tmp_path, tiny_text_model, saved_multihead)


@pytest.mark.parametrize("name", list(LIBRARY))
def test_library_bad_input_is_a_clear_headkit_error(ctx, name):
    fn, message = LIBRARY[name]
    with pytest.raises(HeadkitError) as e:
        fn(ctx)
    assert message in str(e.value), str(e.value)
    assert len(str(e.value)) < 2000


# name -> (argv, what the error says, exit code: argparse's 2 for a command line that is wrong in
# itself, 1 for a well-formed command whose run failed)
CLI = {
    "unknown option": (["train", "--bogus", "1"], "bogus", 2),
    "unknown command": (["launch"], "launch", 2),
    "predict without a run": (["predict", "/nonexistent/run", "--text", "x"], "neither a training run", 1),
    "serve without a run": (["serve", "/nonexistent/run"], "neither a training run", 1),
    "evaluate a missing file": (
        ["evaluate", "{saved}", "--data", "/nonexistent.csv", "--head", "sentiment:label"],
        "not found",
        1,
    ),
    "export to an unknown target": (
        ["export", "{saved}", "--to", "pdf"],
        "--to 'pdf': choose one of transformers, onnx",
        2,
    ),
    "bad --head spec": (["train", "--data", "{csv}", "--head", "sentiment"], "NAME:COLUMN", 2),
    "inspect a file": (["inspect", "{csv}"], "is a file", 1),
}


@pytest.mark.parametrize("name", list(CLI))
def test_cli_bad_input_exits_with_argparse_codes_and_one_readable_line(name, tmp_path, saved_multihead, capsys):
    from headkit.cli.main import main

    args, message, expected = CLI[name]
    csv = write_csv(tmp_path / "d.csv", sentiment_rows(8))
    args = [a.format(saved=saved_multihead, csv=csv) for a in args]
    try:
        code = main(args)
    except SystemExit as e:  # argument errors exit from the parser with usage
        code = e.code
    err = capsys.readouterr().err
    assert code == expected, (code, err)
    assert message in err, err
    assert "Traceback" not in err


def test_huge_field_and_too_long_text_work_and_are_marked(tmp_path, saved_multihead):
    from headkit.ship.predict import load_for_inference, predict_file

    huge = "good " * 400_000  # 2 MB in one CSV cell
    data = write_csv(tmp_path / "huge.csv", [{"text": huge}, {"text": "fine"}])
    model, tokenizer = load_for_inference(saved_multihead)
    count, truncated = predict_file(model, tokenizer, str(data), "text", str(tmp_path / "out.jsonl"))
    assert (count, truncated) == (2, 1)
    from headkit.ship.predict import predict_texts

    assert predict_texts(model, tokenizer, []) == []  # nothing in, nothing out (not a tokenizer crash)


# ------------------------------------------------------------------ property-based
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXT, st.sampled_from(["pos", "neg", "mixed"])), min_size=1, max_size=20))
def test_csv_and_jsonl_round_trip_any_text(tmp_path, rows):
    records = [{"text": t, "label": y} for t, y in rows]
    csv_rows = read_rows(write_csv(tmp_path / "p.csv", records))
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    assert read_rows(jsonl) == records
    assert [r["label"] for r in csv_rows] == [y for _, y in rows]
    assert all(isinstance(r["text"], str) or r["text"] is None for r in csv_rows)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])), min_size=1, max_size=50))
def test_label_encoding_round_trips_and_marks_missing(values):
    present = [v for v in values if v is not None]
    if len(set(present)) < 2:
        return
    codec, where = head_class("classification").codec, LabelSource("y", "label", "x")
    rows = [{"label": v} for v in values]
    labels = codec.label_names(rows, where)
    assert sorted(labels) == sorted(set(present))
    ids = codec.encode_labels(rows, where, labels, None)
    decoded = [None if i == -100 else labels[i] for i in list(ids)]
    assert decoded == values


@given(n=st.integers(2, 500), fraction=st.floats(0.01, 0.9), seed=st.integers(0, 1000))
def test_split_is_a_disjoint_cover_or_a_clear_refusal(n, fraction, seed):
    try:
        train_idx, val_idx = split_indices(n, fraction, seed)
    except HeadkitError as e:  # only when the data cannot give both parts an example
        assert "too few" in str(e) and n - max(1, round(n * fraction)) < 1
        return
    assert sorted([*train_idx.tolist(), *val_idx.tolist()]) == list(range(n))
    assert len(train_idx) > 0 and len(val_idx) > 0
