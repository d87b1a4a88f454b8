"""Data through Hugging Face `datasets`: Dataset / DatasetDict objects, save_to_disk folders,
hf:NAME[:CONFIG][:SPLIT], ClassLabel names in their order; --eval_data; stratified validation."""

import numpy as np
import pytest
import transformers

from headkit.cli.main import main
from headkit.data.batching import split_indices
from headkit.data.readers import read_rows
from headkit.data.tasks import TaskSpec, prepare
from headkit.errors import DataError
from headkit.training.recipe import TrainConfig, train

from conftest import sentiment_rows, write_csv

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def tokenizer(tiny_text_model):
    return transformers.AutoTokenizer.from_pretrained(tiny_text_model)


def labelled_dataset(n: int = 48):
    """The toy reviews with a ClassLabel whose names are NOT in sorted order."""
    rows = sentiment_rows(n)
    names = ["pos", "neg"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(
        {"text": [r["text"] for r in rows], "label": [names.index(r["label"]) for r in rows]}, features=features
    )


def test_classlabel_names_are_the_labels_in_their_order(tokenizer):
    rows = read_rows(labelled_dataset())
    assert rows[0]["label"] in ("pos", "neg") and rows.label_names == {"label": ["pos", "neg"]}
    prepared = prepare([TaskSpec("s", "reviews")], tokenizer, 64, 0.25, sources={"reviews": labelled_dataset()})
    assert prepared.heads["s"].labels == ["pos", "neg"]  # not sorted: the dataset's own order


def test_many_classlabel_classes_keep_numeric_order(tokenizer):
    names = [str(i) for i in range(12)]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    columns = {"text": [f"word{i % 12}" for i in range(48)], "label": [i % 12 for i in range(48)]}
    ds = datasets.Dataset.from_dict(columns, features=features)
    prepared = prepare([TaskSpec("digit", "d")], tokenizer, 16, 0.0, sources={"d": ds})
    assert prepared.heads["digit"].labels == names  # "0", "1", ..., "11" -- not "0", "1", "10", "11", "2"


def test_token_tags_from_a_sequence_of_classlabels(tokenizer):
    tags = ["O", "B-PER", "B-LOC"]
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "tags": datasets.Sequence(datasets.ClassLabel(names=tags)),
    })  # fmt: skip
    ds = datasets.Dataset.from_dict({"tokens": [["alice", "paris"], ["bob"]], "tags": [[1, 2], [1]]}, features=features)
    prepared = prepare([TaskSpec("ner", "d", label="tags", type="token-classification")], tokenizer, 16, 0.0,
                       sources={"d": ds})  # fmt: skip
    assert prepared.heads["ner"].labels == tags


def test_dataset_dict_save_to_disk_folder_and_cli(tiny_text_model, tmp_path, capsys):
    ds = labelled_dataset()
    assert read_rows(datasets.DatasetDict({"train": ds, "test": ds.select(range(4))})) == read_rows(ds)
    with pytest.raises(DataError, match=r"splits \['a', 'b'\] and none is 'train'"):
        read_rows(datasets.DatasetDict({"a": ds, "b": ds}))
    ds.save_to_disk(str(tmp_path / "reviews"))
    assert read_rows(tmp_path / "reviews").label_names == {"label": ["pos", "neg"]}
    args = ["train", "--model", str(tiny_text_model), "--data", str(tmp_path / "reviews"), "--head", "s:label",
            "--epochs", "1", "--output_dir", str(tmp_path / "run"), "--no_progress"]  # fmt: skip
    assert main(args) == 0
    with pytest.raises(DataError, match="is empty"):
        read_rows(ds.select([]))


def test_hf_specs_go_through_load_dataset(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return labelled_dataset(8)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert len(read_rows("hf:imdb")) == 8
    read_rows("hf:glue:sst2:validation")
    read_rows("hf:org/name::test")
    assert calls == [("imdb", None, "train"), ("glue", "sst2", "validation"), ("org/name", None, "test")]
    with pytest.raises(DataError, match="should look like hf:NAME"):
        read_rows("hf:")

    def missing(*args, **kwargs):
        raise FileNotFoundError("Couldn't find a dataset script or a cached dataset")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DataError, match="hf:nothing: datasets could not load it"):
        read_rows("hf:nothing")


def test_eval_data_is_the_validation_set(tiny_text_model, tmp_path):
    train_file = write_csv(tmp_path / "train.csv", sentiment_rows(40))
    eval_file = write_csv(tmp_path / "eval.csv", sentiment_rows(10, seed=5))
    config = TrainConfig(model=str(tiny_text_model), data=str(train_file), eval_data=str(eval_file),
                         head=["sentiment:label"], epochs=1, output_dir=str(tmp_path / "run"),
                         progress=False)  # fmt: skip
    result = train(config)
    assert result.metrics["train_examples"] == 40 and result.metrics["val_examples"] == 10
    rows = sentiment_rows(10)
    rows[3]["label"] = "meh"
    write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=r"'meh'.*never seen in training"):
        train(TrainConfig(**{**config.__dict__, "eval_data": str(tmp_path / "bad.csv"), "overwrite": True}))


def test_validation_split_of_a_classification_task_is_stratified():
    labels = np.array([0] * 80 + [1] * 20)
    train_idx, val_idx = split_indices(100, 0.25, seed=0, strata=labels)
    assert len(val_idx) == 25 and (labels[val_idx] == 1).sum() == 5  # the 80/20 proportions, exactly
    assert set(train_idx).isdisjoint(val_idx) and len(train_idx) + len(val_idx) == 100
    rare = np.array([0] * 9 + [1])  # a class with one example stays in training
    train_idx, val_idx = split_indices(10, 0.2, seed=0, strata=rare)
    assert 9 in train_idx and len(val_idx) == 2


def test_sampling_keeps_declared_label_names_and_takes_plain_lists():
    from headkit.data.tasks import _sample

    rows = read_rows(labelled_dataset(20))
    sampled = _sample(rows, 5, seed=0)
    assert len(sampled) == 5 and sampled.label_names == {"label": ["pos", "neg"]}
    assert len(_sample([{"text": str(i)} for i in range(10)], 3, seed=0)) == 3  # benchmarks pass lists


def test_values_outside_the_declared_classlabel_names_are_refused(tokenizer):
    from headkit.heads import LabelSource, head_class

    where = LabelSource("s", "label", "reviews", declared={"label": ["pos", "neg"]})
    with pytest.raises(DataError, match=r"holds \['meh'\], not among its declared labels \['pos', 'neg'\]"):
        head_class("classification").codec.label_names([{"label": "pos"}, {"label": "meh"}], where)
