"""Tables in memory (pandas DataFrame, dict of lists, list of dicts) and hf: split expressions."""

import math

import numpy as np
import pytest

from headkit.data.readers import load_hub_dataset, parse_hf_spec, read_rows
from headkit.data.streaming import is_stream
from headkit.errors import DataError

datasets = pytest.importorskip("datasets")


def test_a_dataframe_reads_as_rows_with_missing_values_as_none_and_categories_in_order():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({
        "text": ["a", "b", "c"],
        "label": pd.Categorical(["y", "x", None], categories=["y", "x"]),
        "score": [1.0, np.nan, 3.0],
        "n": np.array([1, 2, 3], dtype=np.int64),
    })  # fmt: skip
    rows = read_rows(frame)
    assert rows == [
        {"text": "a", "label": "y", "score": 1.0, "n": 1},
        {"text": "b", "label": "x", "score": None, "n": 2},
        {"text": "c", "label": None, "score": 3.0, "n": 3},
    ]
    assert type(rows[0]["n"]) is int  # numpy scalars become Python values
    assert rows.label_names == {"label": ["y", "x"]}  # the categories' order, as a ClassLabel's
    with pytest.raises(DataError, match="DataFrame is empty"):
        read_rows(frame.iloc[:0])


def test_a_dict_of_lists_reads_as_rows_and_unequal_lengths_name_the_columns():
    rows = read_rows({"text": ["good", "bad"], "label": np.array(["pos", "neg"]), "w": (1.0, math.nan)})
    assert rows == [{"text": "good", "label": "pos", "w": 1.0}, {"text": "bad", "label": "neg", "w": None}]
    with pytest.raises(DataError, match=r"different lengths: \{'text': 2, 'label': 1\}"):
        read_rows({"text": ["good", "bad"], "label": ["pos"]})
    with pytest.raises(DataError, match="are empty"):
        read_rows({"text": [], "label": []})
    with pytest.raises(DataError, match="no columns"):
        read_rows({})
    with pytest.raises(DataError, match=r"columns \['text'\] are not lists"):
        read_rows({"text": "good"})


def test_a_list_of_dicts_reads_as_rows():
    assert read_rows([{"text": "good", "label": "pos"}, {"text": "bad"}]) == [
        {"text": "good", "label": "pos"},
        {"text": "bad"},
    ]
    with pytest.raises(DataError, match="list of rows is empty"):
        read_rows([])
    with pytest.raises(DataError, match="row 1 of the given list is a str"):
        read_rows([{"text": "good"}, "bad"])


def test_hf_specs_keep_the_colons_inside_a_split_slice():
    def parts(spec):
        return (spec.name, spec.config, spec.split)

    assert parts(parse_hf_spec("hf:org/name::train[:1000]")) == ("org/name", None, "train[:1000]")
    assert parts(parse_hf_spec("hf:glue:sst2:train[10%:20%]")) == ("glue", "sst2", "train[10%:20%]")
    assert parse_hf_spec("hf:d::train+validation").split == "train+validation"
    assert parse_hf_spec("hf:d").split == "train"
    spec = parse_hf_spec("hf:c4:en:train?streaming")
    assert (spec.name, spec.config, spec.split, spec.streaming) == ("c4", "en", "train", True)
    for bad in ("hf:", "hf:a:b:c:d", "hf:d::train[:10", "hf:d[1]:x", "hf:d?shuffle"):
        with pytest.raises(DataError, match=r"hf:NAME:CONFIG:SPLIT .*train\[:1000\]"):
            parse_hf_spec(bad)


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """A folder of CSV files: `datasets.load_dataset(folder)` reads it offline, one split per file."""
    folder = tmp_path_factory.mktemp("hf-folder")
    for split, n in (("train", 20), ("validation", 10)):
        lines = ["text,label"] + [f"{split} row {i},{'pos' if i % 2 else 'neg'}" for i in range(n)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_hf_split_expressions_slice_through_load_dataset(data_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    assert len(read_rows(f"hf:{data_folder}")) == 20
    first = read_rows(f"hf:{data_folder}::train[:5]")
    assert [r["text"] for r in first] == [f"train row {i}" for i in range(5)]
    assert [r["text"] for r in read_rows(f"hf:{data_folder}::train[10%:20%]")] == ["train row 2", "train row 3"]
    assert len(read_rows(f"hf:{data_folder}::train+validation")) == 30
    with pytest.raises(DataError, match=r"Unknown split.*the forms are hf:NAME"):
        read_rows(f"hf:{data_folder}::test")


def test_a_streamed_hf_split_is_a_stream_sliced_by_row_numbers(data_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    assert is_stream(f"hf:{data_folder}?streaming") and not is_stream(f"hf:{data_folder}")
    stream = load_hub_dataset(f"hf:{data_folder}::train[3:6]?streaming")
    assert is_stream(stream) and isinstance(stream, datasets.IterableDataset)
    assert [r["text"] for r in stream] == ["train row 3", "train row 4", "train row 5"]
    with pytest.raises(DataError, match="only by row numbers"):
        load_hub_dataset(f"hf:{data_folder}::train[10%:20%]?streaming")
    with pytest.raises(DataError, match="cannot be read into rows"):
        read_rows(f"hf:{data_folder}?streaming")
    with pytest.raises(DataError, match="cannot be read into rows"):
        read_rows(stream)
    assert not is_stream([{"text": "a"}]) and not is_stream(datasets.Dataset.from_dict({"text": ["a"]}))
