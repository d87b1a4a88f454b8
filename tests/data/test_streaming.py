"""Training on a stream (datasets.IterableDataset): read as it passes, never materialised; frozen
runs cache its features in one pass, the other strategies train max_steps over it."""

import numpy as np
import pytest
import torch
import transformers

from headkit.data import streaming
from headkit.data.streaming import StreamedData, prepare_stream
from headkit.data.tasks import TaskSpec, prepare
from headkit.errors import DataError, HeadkitError
from headkit.model import MultiHeadModel
from headkit.training.config import TrainConfig
from headkit.training.features import compute_features, features_needed, stream_features
from headkit.training.loop import fit

from conftest import has_package, sentiment_rows

datasets = pytest.importorskip("datasets")


class Counted:
    """A generator source whose rows drawn are counted (a stream must never be read whole)."""

    def __init__(self, rows):
        self.rows, self.drawn = rows, 0

    def __call__(self):
        for row in self.rows:
            self.drawn += 1
            yield dict(row)

    def stream(self, features=None):
        stream = datasets.IterableDataset.from_generator(self, features=features)
        stream.to_list = _never  # would read it all
        return stream


def _never(*args, **kwargs):
    raise AssertionError("a stream was read into a list")


def rows(n=48, seed=0):
    return [{"text": r["text"], "label": r["label"]} for r in sentiment_rows(n, seed)]


@pytest.fixture(scope="module")
def model_dir(tiny_text_model, tmp_path_factory):
    """The tiny BERT without dropout: a stream and a list of the same rows train to the same weights."""
    path = tmp_path_factory.mktemp("no-dropout")
    model = transformers.AutoModel.from_pretrained(tiny_text_model, hidden_dropout_prob=0.0,
                                                   attention_probs_dropout_prob=0.0)  # fmt: skip
    model.save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(tiny_text_model).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return transformers.AutoTokenizer.from_pretrained(model_dir)


def run(model_dir, tokenizer, tmp_path, source, strategy, eval_source=None, **options):
    """What recipe.train does, with the data prepared by `prepare` (a stream goes to prepare_stream)."""
    from accelerate.utils import set_seed

    max_steps = options.pop("max_steps", None)
    config = TrainConfig(model=str(model_dir), strategy=strategy, output_dir=str(tmp_path / "run"), progress=False,
                         val_fraction=0.0, tune_thresholds=False, **options)  # fmt: skip
    config.max_steps = max_steps  # a TrainConfig field requested of training/config.py
    config.keep_files = False  # as headkit.train without output_dir: no saved model, report or plots
    task = TaskSpec("sentiment", "train", dropout=0.0, eval_data="eval" if eval_source is not None else None)
    sources = {"train": source, **({"eval": eval_source} if eval_source is not None else {})}
    data = prepare([task], tokenizer, 32, 0.0, config.seed, sources=sources)
    set_seed(config.seed)
    model = MultiHeadModel.on_backbone(str(model_dir), data.heads, processor=tokenizer)
    return fit(config, model, tokenizer, data), data


def head_weights(result):
    return torch.cat([p.detach().flatten().float().cpu() for p in result.model.heads.parameters()])


def test_label_maps_come_from_given_maps_classlabels_or_a_bounded_first_look(tokenizer, monkeypatch):
    monkeypatch.setattr(streaming, "PROBE_ROWS", 10)
    source = Counted(rows(48))
    data = prepare_stream([TaskSpec("s", "d")], tokenizer, 32, 0, {"d": source.stream()}, None)
    assert data.heads["s"].labels == ["neg", "pos"] and source.drawn <= 11  # the first look only
    assert isinstance(data.train, StreamedData) and len(data.val) == 0
    names = ["pos", "neg"]  # not sorted: the ClassLabel's order is kept
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    labelled = Counted([{**r, "label": names.index(r["label"])} for r in rows(48)])
    data = prepare_stream([TaskSpec("s", "d")], tokenizer, 32, 0, {"d": labelled.stream(features)}, None)
    assert data.heads["s"].labels == names
    assert [len(c) for c in data.train.chunks()] == [48] and len(data.train) == 48
    given = prepare_stream([TaskSpec("s", "d")], tokenizer, 32, 0, {"d": source.stream()}, {"s": ["pos", "neg", "meh"]})
    assert given.heads["s"].labels == ["pos", "neg", "meh"]
    first = prepare_stream([TaskSpec("s", "d", limit=5)], tokenizer, 32, 0, {"d": source.stream()}, None)
    assert sum(len(c) for c in first.train.chunks()) == 5  # a stream's limit: its first rows
    splits = datasets.IterableDatasetDict({"train": source.stream(), "validation": Counted(rows(6)).stream()})
    assert len(prepare_stream([TaskSpec("s", "d")], tokenizer, 32, 0, {"d": splits}, None).val) == 6


def test_a_label_after_the_first_look_says_how_to_give_the_labels(tokenizer, monkeypatch):
    monkeypatch.setattr(streaming, "PROBE_ROWS", 4)
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 8)
    late = rows(12)
    late[10]["label"] = "meh"
    data = prepare_stream([TaskSpec("s", "d")], tokenizer, 32, 0, {"d": Counted(late).stream()}, None)
    with pytest.raises(DataError, match=r"'meh'.*rows 9-12 of the stream.*first 4 rows.*labels=\[\.\.\.\]"):
        list(data.train.chunks())


def test_bad_streamed_setups_are_refused_with_what_to_do(tokenizer, model_dir, tmp_path):
    with pytest.raises(DataError, match="the stream is empty"):
        prepare_stream([TaskSpec("s", "d")], tokenizer, 32, 0, {"d": Counted([]).stream()}, None)
    two = {"a": Counted(rows(8)).stream(), "b": Counted(rows(8)).stream()}
    with pytest.raises(DataError, match="interleave_datasets"):
        prepare_stream([TaskSpec("s", "a"), TaskSpec("t", "b")], tokenizer, 32, 0, two, None)
    with pytest.raises(HeadkitError, match="give max_steps"):
        run(model_dir, tokenizer, tmp_path, Counted(rows(8)).stream(), "full")
    with pytest.raises(HeadkitError, match="cannot be indexed"):
        prepare_stream([TaskSpec("s", "d")], tokenizer, 32, 0, {"d": Counted(rows(8)).stream()}, None).train[0]


def test_full_training_on_a_stream_equals_training_on_the_same_rows_in_memory(model_dir, tokenizer, tmp_path):
    train = rows(24)
    source = Counted(train)
    # one batch a step over all 24 rows: the in-memory run's 3 epochs are the stream's 3 passes
    options = {"batch_size": 24, "epochs": 3, "lr": 0.01, "backbone_lr": 0.001, "patience": 0}
    streamed, _ = run(model_dir, tokenizer, tmp_path / "s", source.stream(), "full", max_steps=3, **options)
    assert source.drawn == 24 + 3 * 24  # the first look (24 < PROBE_ROWS rows), then 3 passes
    assert len(streamed.metrics["epochs"]) == 1  # max_steps over the stream: one stretch, validated at its end
    in_memory, _ = run(model_dir, tokenizer, tmp_path / "m", datasets.Dataset.from_list(train), "full", **options)
    torch.testing.assert_close(head_weights(streamed), head_weights(in_memory), atol=2e-5, rtol=1e-4)
    assert streamed.metrics["train_examples"] == 24 and streamed.metrics["heads"] == {}  # no validation given


def test_frozen_training_caches_a_stream_in_one_pass_and_trains_epochs_on_it(model_dir, tokenizer, tmp_path):
    train, held_out = rows(40), rows(12, seed=3)
    source, eval_source = Counted(train), Counted(held_out)
    options = {"batch_size": 8, "epochs": 4}
    streamed, _ = run(model_dir, tokenizer, tmp_path / "s", source.stream(), "frozen", eval_source.stream(), **options)
    assert source.drawn == 40 + 40  # the first look, then one pass for the features: 4 epochs on the cache
    assert eval_source.drawn == 12  # the eval stream, read once into memory
    in_memory, _ = run(model_dir, tokenizer, tmp_path / "m", datasets.Dataset.from_list(train), "frozen",
                       datasets.Dataset.from_list(held_out), **options)  # fmt: skip
    torch.testing.assert_close(head_weights(streamed), head_weights(in_memory), atol=1e-5, rtol=1e-4)
    assert streamed.metrics["heads"]["sentiment"] == pytest.approx(in_memory.metrics["heads"]["sentiment"])
    assert streamed.metrics["train_examples"] == 40 and streamed.metrics["val_examples"] == 12


@pytest.mark.skipif(not has_package("peft"), reason="needs peft")
def test_lora_and_partial_train_max_steps_over_a_stream_reread_as_needed(model_dir, tokenizer, tmp_path):
    for strategy in ("lora", "partial:1", "lp-ft"):
        source = Counted(rows(10))
        result, _ = run(model_dir, tokenizer, tmp_path / strategy.replace(":", ""), source.stream(), strategy,
                        max_steps=4, batch_size=4, lp_epochs=2)  # fmt: skip
        metrics = result.metrics
        probe = strategy == "lp-ft"  # lp-ft: 2 epochs on the cached features (one pass), then max_steps
        assert len(metrics["epochs"]) == 1 + 2 * probe and result.metrics["train_examples"] == 10
        # 4 steps of 4 rows: a pass gives 3 batches (4, 4, 2), so the stream is read twice
        assert source.drawn == 10 + 10 * probe + 2 * 10


def test_stream_features_equal_the_in_memory_ones_per_token_and_pooled(tiny_text_model, tokenizer, tmp_path):
    from headkit.heads import head_config

    heads = {"tags": head_config("token-classification", labels=["O", "B"]),
             "s": head_config("classification", labels=["neg", "pos"], pooling="mean")}  # fmt: skip
    model = MultiHeadModel.on_backbone(str(tiny_text_model), heads, processor=tokenizer)
    tasks = [TaskSpec("s", "d")]
    data = prepare(tasks, tokenizer, 32, 0.0, sources={"d": rows(20)}).train
    poolings, layers = features_needed(model)
    assert poolings and layers
    expected = compute_features(model, data, poolings, layers, progress=False)
    chunks = [data.subset(range(0, 7)), data.subset(range(7, 20))]
    got, labels = stream_features(model, chunks, poolings, layers, progress=False, root=tmp_path)
    assert not any(tmp_path.iterdir())  # the files are unlinked once mapped
    assert torch.equal(got.offsets, expected.offsets)
    for key in poolings:
        torch.testing.assert_close(got.pooled[key], expected.pooled[key], atol=1e-5, rtol=1e-5)
    for layer in layers:
        torch.testing.assert_close(got.tokens[layer].float(), expected.tokens[layer].float(), atol=2e-2, rtol=1e-2)
    assert np.array_equal(np.concatenate([part["s"] for part in labels]), data.labels["s"])


def test_a_streamed_hf_spec_trains_as_a_stream(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "data"
    folder.mkdir()
    lines = ["text,label"] + [f"{r['text']},{r['label']}" for r in rows(30)]
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    (folder / "validation.csv").write_text("\n".join(lines[:9]) + "\n")
    spec = f"hf:{folder}::train[:20]?streaming"
    data = prepare_stream([TaskSpec("s", spec, eval_data=f"hf:{folder}::validation")], tokenizer, 32, 0, None, None)
    assert isinstance(data.train, StreamedData) and data.heads["s"].labels == ["neg", "pos"]
    assert sum(len(c) for c in data.train.chunks()) == 20 and len(data.val) == 8


def test_max_steps_overrides_epochs_for_in_memory_data_too(model_dir, tokenizer, tmp_path, monkeypatch):
    from headkit.training import loop

    seen = []
    finish = loop.finish_run
    monkeypatch.setattr(loop, "finish_run", lambda *a, **k: seen.append(a[4]) or finish(*a, **k))
    data = datasets.Dataset.from_list(rows(24))
    # 3 batches an epoch: 4 steps are a whole epoch and one batch of a second
    result, _ = run(model_dir, tokenizer, tmp_path / "m", data, "full", max_steps=4, batch_size=8, epochs=9)
    assert seen[-1].global_step == 4 and len(result.metrics["epochs"]) == 2
    result, _ = run(model_dir, tokenizer, tmp_path / "s", Counted(rows(24)).stream(), "full", max_steps=4, batch_size=8)
    assert seen[-1].global_step == 4 and len(result.metrics["epochs"]) == 1
