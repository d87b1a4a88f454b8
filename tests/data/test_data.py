import json

import numpy as np
import pytest
import torch
import transformers

from headkit import DataError
from headkit.data.batching import LengthGroupedBatches, collate, split_indices
from headkit.data.readers import read_rows
from headkit.data.tasks import TaskSpec, prepare
from headkit.heads import IGNORE_INDEX, head_class

from conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def tokenizer(tiny_text_model):
    return transformers.AutoTokenizer.from_pretrained(tiny_text_model)


def test_csv_jsonl_parquet_and_datasets_read_the_same_rows(tmp_path):
    import datasets
    import pandas as pd

    rows = sentiment_rows(6)
    csv_rows = read_rows(write_csv(tmp_path / "d.csv", rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    assert csv_rows == rows
    assert read_rows(tmp_path / "d.jsonl") == rows
    assert read_rows(tmp_path / "d.parquet") == rows
    assert read_rows(datasets.Dataset.from_list(rows)) == rows


def test_empty_cells_are_missing_labels(tmp_path, tokenizer):
    rows = sentiment_rows(8)
    rows[3]["label"] = ""  # the score head still has this row
    rows[5]["label"] = rows[5]["score"] = ""  # no head has this one
    path = str(write_csv(tmp_path / "d.csv", rows))
    tasks = [TaskSpec("s", path), TaskSpec("r", path, label="score", type="regression")]
    assert len(prepare(tasks, tokenizer, val_fraction=0).train) == 8  # evaluation reads every row
    data = prepare(tasks, tokenizer, val_fraction=0, labelled_only=True)  # as training reads them
    assert data.train.labels["s"][3] == IGNORE_INDEX and not np.isnan(data.train.labels["r"][3]).any()
    assert data.heads["s"].labels == ["neg", "pos"]
    # a row labelled for no head is left out of training: it adds no loss, only its backbone pass
    assert len(data.train) == 7 and [t for t in data.train.texts] == [r["text"] for i, r in enumerate(rows) if i != 5]


def test_missing_column_lists_available_columns(tmp_path, tokenizer):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(8))
    with pytest.raises(
        DataError, match=r"column 'sentiment' not found .* available columns: \['label', 'score', 'text'\]"
    ):
        prepare([TaskSpec("s", str(path), label="sentiment")], tokenizer)
    with pytest.raises(DataError, match=r"column 'review' not found"):
        prepare([TaskSpec("s", str(path), text="review")], tokenizer)


def test_empty_and_headerless_files(tmp_path, tokenizer):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty"):
        prepare([TaskSpec("s", str(tmp_path / "empty.csv"))], tokenizer)
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"no data rows"):
        read_rows(tmp_path / "header.csv")
    with pytest.raises(DataError, match=r"not found.*built-in"):
        read_rows(tmp_path / "nope.csv")


def test_non_utf8_and_malformed_json(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8"):
        read_rows(tmp_path / "latin1.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok", "label": "pos"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        read_rows(tmp_path / "bad.jsonl")


def test_regression_targets_must_be_numbers(tmp_path, tokenizer):
    rows = sentiment_rows(8)
    rows[2]["score"] = "high"
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"regression target 'score' in row 3 is not a number: 'high'"):
        prepare([TaskSpec("r", str(path), label="score", type="regression")], tokenizer)
    rows[2]["score"] = "nan"
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"regression target 'score' is 'nan' in row 3; leave the cell empty"):
        prepare([TaskSpec("r", str(path), label="score", type="regression")], tokenizer)
    rows[2]["score"] = ""
    data = prepare(
        [TaskSpec("r", str(write_csv(path, rows)), label="score", type="regression")], tokenizer, val_fraction=0
    )
    assert np.isnan(data.train.labels["r"][2]).all() and data.train.labels["r"][0, 0] == 0.0


def test_wrong_label_column_type(tmp_path, tokenizer):
    rows = [{"text": f"film {i}", "label": f"{i * 0.37:.3f}"} for i in range(60)]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"looks continuous or free text.*Use type regression"):
        prepare([TaskSpec("s", str(path))], tokenizer)
    one_class = write_csv(tmp_path / "one.csv", [{"text": "good film", "label": "pos"}] * 5)
    with pytest.raises(DataError, match=r"single class"):
        prepare([TaskSpec("s", str(one_class))], tokenizer)
    (tmp_path / "lists.jsonl").write_text(
        "\n".join(json.dumps({"text": "good", "label": ["a", "b"]}) for _ in range(4))
    )
    with pytest.raises(DataError, match=r"holds a list.*use type multilabel for lists"):
        prepare([TaskSpec("s", str(tmp_path / "lists.jsonl"))], tokenizer)


def test_conll_mismatched_tokens_and_tags(tmp_path, tokenizer):
    (tmp_path / "ner.conll").write_text("alice\tB-PER\nvisited\tO\nparis\n\nbob\tB-PER\n")
    with pytest.raises(DataError, match=r"line 3: expected 'token<TAB>tag'"):
        read_rows(tmp_path / "ner.conll")
    rows = [{"tokens": ["alice", "met", "bob"], "tags": ["B-PER", "O"]}]
    (tmp_path / "ner.jsonl").write_text(json.dumps(rows[0]))
    with pytest.raises(DataError, match=r"3 tokens but 2 tags"):
        prepare([TaskSpec("ner", str(tmp_path / "ner.jsonl"), type="token-classification")], tokenizer)


def test_conll_tags_align_to_first_subword(tmp_path, tokenizer):
    (tmp_path / "ner.conll").write_text("alice\tB-PER\nvisited\tO\nparis\tB-LOC\n\t\nbob\tB-PER\nmet\tO\n")
    data = prepare(
        [TaskSpec("ner", str(tmp_path / "ner.conll"), type="token-classification")], tokenizer, val_fraction=0
    )
    assert data.heads["ner"].labels == ["O", "B-LOC", "B-PER"]
    first = data.train.labels["ner"][0]
    assert first[0] == IGNORE_INDEX and first[-1] == IGNORE_INDEX  # [CLS] and [SEP]
    assert first[1:-1] == [2, 0, 1]


def test_unseen_label_at_evaluation_time_is_reported(tmp_path, tokenizer):
    path = write_csv(tmp_path / "d.csv", [*sentiment_rows(6), {"text": "good film", "label": "meh", "score": "1"}])
    with pytest.raises(DataError, match=r"label 'meh' of head 's' \(row 7\) was never seen in training"):
        prepare([TaskSpec("s", str(path))], tokenizer, label_maps={"s": ["neg", "pos"]})


def test_split_is_deterministic_and_disjoint():
    a_train, a_val = split_indices(100, 0.2, seed=3)
    b_train, b_val = split_indices(100, 0.2, seed=3)
    assert (a_train == b_train).all() and (a_val == b_val).all()
    assert len(a_val) == 20 and not set(a_train) & set(a_val)
    assert not (split_indices(100, 0.2, seed=4)[1] == a_val).all()
    with pytest.raises(DataError, match=r"too few"):
        split_indices(1, 0.5, seed=0)


def test_length_grouped_batches_cover_everything_and_depend_on_epoch():
    lengths = [int(x) for x in np.random.default_rng(0).integers(3, 60, 500)]
    sampler = LengthGroupedBatches(lengths, batch_size=16, seed=1)
    epoch0 = sampler.batches()
    assert sorted(i for b in epoch0 for i in b) == list(range(500))
    assert sampler.batches() == epoch0  # same epoch, same batches (resume relies on this)
    sampler.set_epoch(1)
    assert sampler.batches() != epoch0
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch0])
    assert spread < 10  # grouped by length: little padding
    mixed = LengthGroupedBatches(lengths, batch_size=16, seed=1, group=False).batches()  # group_by_length off
    assert sorted(i for b in mixed for i in b) == list(range(500))
    assert np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in mixed]) > 30


def test_collate_pads_dynamically_and_marks_missing_labels():
    examples = [
        {"index": 0, "input_ids": [2, 7, 3], "labels": {"s": 1, "r": [0.5], "t": [-100, 1, -100]}},
        {"index": 1, "input_ids": [2, 3], "labels": {"s": IGNORE_INDEX, "r": None, "t": None}},
    ]
    batch = collate(
        examples,
        pad_id=0,
        head_types={"s": "classification", "r": "regression", "t": "token-classification"},
        widths={"s": 2, "r": 1, "t": 2},
    )
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"]["s"].tolist() == [1, IGNORE_INDEX]
    assert batch["labels"]["r"][0].item() == 0.5 and torch.isnan(batch["labels"]["r"][1]).all()
    assert batch["labels"]["t"].tolist() == [[-100, 1, -100], [-100, -100, -100]]
    # a cached phase's batch: the same labels, per-token ones padded to the longest example (one
    # without tags, longer than every tagged one), and no inputs
    heads, widths = {"s": "classification", "r": "regression", "t": "token-classification"}, {"s": 2, "r": 1, "t": 2}
    examples.append({"index": 2, "input_ids": [2, 7, 7, 3], "labels": {"s": 0, "r": [1.0], "t": None}})
    full = collate(examples, pad_id=0, head_types=heads, widths=widths)
    labels_only = collate(examples, pad_id=0, head_types=heads, widths=widths, inputs=False)
    assert set(labels_only) == {"labels", "index"} and labels_only["index"].tolist() == [0, 1, 2]
    assert labels_only["labels"]["t"].shape == (3, 4)
    for head, expected in full["labels"].items():
        assert torch.equal(labels_only["labels"][head].nan_to_num(7.0), expected.nan_to_num(7.0)), head


def test_two_datasets_interleave_with_missing_labels(tmp_path, tokenizer):
    a = write_csv(tmp_path / "a.csv", sentiment_rows(10))
    b = write_csv(
        tmp_path / "b.csv",
        [{"text": "paris london", "place": "city", "v": "1.5"}] * 3
        + [{"text": "alice bob", "place": "person", "v": "2"}] * 3,
    )
    data = prepare(
        [
            TaskSpec("s", str(a)),
            TaskSpec("p", str(b), label="place"),
            TaskSpec("v", str(b), label="v", type="regression"),
        ],
        tokenizer,
        val_fraction=0,
    )
    assert len(data.train) == 16
    s, p, v = data.train.labels["s"], data.train.labels["p"], data.train.labels["v"]
    assert (s[:10] != IGNORE_INDEX).all() and (s[10:] == IGNORE_INDEX).all()
    assert (p[:10] == IGNORE_INDEX).all() and (p[10:] != IGNORE_INDEX).all()
    assert np.isnan(v[:10]).all() and not np.isnan(v[10:]).any()


def test_task_specs_are_checked(tokenizer):
    with pytest.raises(DataError, match=r"no tasks"):
        prepare([], tokenizer)
    with pytest.raises(DataError, match=r"used by more than one task"):
        prepare([TaskSpec("s", "x.csv"), TaskSpec("s", "y.csv")], tokenizer)
    with pytest.raises(DataError, match=r"cannot be trained from files"):
        prepare([TaskSpec("s", "x.csv", type="ctc")], tokenizer)
    with pytest.raises(DataError, match=r"dropout 1.5 is outside \[0, 1\)"):
        prepare([TaskSpec("s", "x.csv", dropout=1.5)], tokenizer)


def test_a_task_sets_its_heads_dropout_or_keeps_the_types_default(tmp_path, tokenizer):
    data = str(write_csv(tmp_path / "d.csv", sentiment_rows(12)))
    prepared = prepare([TaskSpec("a", data, dropout=0.0), TaskSpec("b", data)], tokenizer, val_fraction=0.0)
    assert prepared.heads["a"].dropout == 0.0 and prepared.heads["b"].dropout == 0.1


def test_numeric_labels_sort_as_numbers(tmp_path, tokenizer):
    """Star ratings 1, 2, 10 keep their numeric order (not the strings' 1, 10, 2), for classes,
    multi-label names and tags alike; text labels still sort as text."""
    rows = [{"text": "good film", "label": str(v), "many": f"{v}|{v + 1}"} for v in (10, 2, 1, 2, 10, 1)]
    path = str(write_csv(tmp_path / "d.csv", rows))
    tasks = [TaskSpec("s", path), TaskSpec("m", path, label="many", type="multilabel")]
    data = prepare(tasks, tokenizer, val_fraction=0)
    assert data.heads["s"].labels == ["1", "2", "10"]
    assert data.heads["m"].labels == ["1", "2", "3", "10", "11"]
    conll = tmp_path / "t.conll"
    conll.write_text("good\t10\nfilm\t2\n\t\nbad\tO\nplot\t1\n", encoding="utf-8")
    tags = prepare([TaskSpec("t", str(conll), type="token-classification")], tokenizer, val_fraction=0)
    assert tags.heads["t"].labels == ["O", "1", "2", "10"]
    words = prepare([TaskSpec("s", str(write_csv(tmp_path / "w.csv", sentiment_rows(6))))], tokenizer)
    assert words.heads["s"].labels == ["neg", "pos"]


def test_training_leaves_out_untagged_sentences_and_refuses_data_with_no_label_at_all(tmp_path, tokenizer):
    rows = [{"tokens": ["alice", "met", "bob"], "tags": ["B-PER", "O", "B-PER"]} for _ in range(6)]
    rows += [{"tokens": ["bob", "slept"], "tags": None} for _ in range(4)]
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TaskSpec("ner", str(path), label="tags", text="tokens", type="token-classification")
    kept = prepare([task], tokenizer, val_fraction=0, labelled_only=True)
    assert len(kept.train) == 6 and len(prepare([task], tokenizer, val_fraction=0).train) == 10
    codec = head_class("token-classification").codec
    assert codec.count_labelled(prepare([task], tokenizer, val_fraction=0).train.labels["ner"]) == 6
    empty = write_csv(tmp_path / "empty.csv", [{"text": "a film", "score": ""}, {"text": "a play", "score": ""}])
    with pytest.raises(DataError, match=r"no row has a label for any of the heads \{'r': 'regression'\}"):
        prepare([TaskSpec("r", str(empty), label="score", type="regression")], tokenizer, labelled_only=True)
