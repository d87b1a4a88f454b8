"""headkit.Trainer / headkit.train: training from Python on in-memory data (issue #36)."""

import os
import tempfile

import datasets
import pandas as pd
import pytest
import torch
import transformers

import headkit
from headkit.data.batching import EncodedData, collate, tokenize
from headkit.data.tasks import TaskSpec
from headkit.errors import DataError, HeadkitError
from headkit.model import MultiHeadModel
from headkit.training.config import TrainConfig
from headkit.training.trainer import Trainer, train

from conftest import NEGATIVE, POSITIVE, has_package, save_decoder, sentiment_rows

FAST = dict(epochs=1, batch_size=8, lr=1e-2, backbone_lr=1e-3, lora_lr=1e-2, patience=0, progress=False)


@pytest.fixture(scope="module")
def rows():
    return sentiment_rows(40)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tempfile's directory for this test: what a run leaves behind in it shows."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def columns_of(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


@pytest.mark.parametrize("kind", ["Dataset", "DatasetDict", "DataFrame", "dict of lists", "list of dicts"])
def test_every_input_kind_trains_and_leaves_nothing_on_disk(tiny_text_model, rows, scratch, kind):
    make = {
        "Dataset": lambda r: datasets.Dataset.from_list(r),
        "DatasetDict": lambda r: datasets.DatasetDict(
            train=datasets.Dataset.from_list(r[:30]), validation=datasets.Dataset.from_list(r[30:])
        ),
        "DataFrame": pd.DataFrame,
        "dict of lists": columns_of,
        "list of dicts": list,
    }[kind]
    result = train(tiny_text_model, {"sentiment": "label"}, train_dataset=make(rows), val_fraction=0.25, **FAST)
    assert result.run_dir is None and list(scratch.iterdir()) == []  # the scratch run directory is gone
    assert isinstance(result.model, MultiHeadModel) and list(result.model.heads) == ["sentiment"]
    assert "accuracy" in result.metrics["heads"]["sentiment"]
    # a DatasetDict validates on its validation split; the others hold out val_fraction
    assert result.metrics["val_examples"] == 10 and result.metrics["train_examples"] == 30
    assert result.model.columns == {"sentiment": {"label": "label", "text": "text", "text_pair": None}}


def test_heads_as_column_fields_taskspec_and_headconfig(tiny_text_model, rows, scratch):
    data = [{**r, "mood": r["label"], "stars": float(r["score"])} for r in rows]
    heads = {
        "sentiment": "label",
        "stars": {"label": "stars", "type": "regression"},
        "polarity": TaskSpec("polarity", label="label", pooling="mean"),
        "mood": headkit.head_config("classification", labels=["pos", "neg"], dropout=0.0, pooling="max"),
    }
    trainer = Trainer(tiny_text_model, heads, train_dataset=data, eval_dataset=data[:8], **FAST)
    result = trainer.train()
    model = result.model
    assert trainer.model is model and result.metrics["val_examples"] == 8
    assert {n: h.config.type for n, h in model.heads.items()} == {
        "sentiment": "classification",
        "stars": "regression",
        "polarity": "classification",
        "mood": "classification",
    }
    assert model.heads["polarity"].config.pooling == "mean"
    mood = model.heads["mood"].config  # a HeadConfig keeps its settings and its label order
    assert (mood.labels, mood.dropout, mood.pooling) == (["pos", "neg"], 0.0, "max")
    assert model.heads["sentiment"].config.labels == ["neg", "pos"]  # inferred from the data
    assert model.columns["mood"] == {"label": "mood", "text": "text", "text_pair": None}
    assert model.columns["stars"]["label"] == "stars"


def test_an_existing_model_trains_further_and_gains_heads(tiny_text_model, rows, scratch):
    heads = {"sentiment": headkit.head_config("classification", labels=["pos", "neg"])}
    model = MultiHeadModel.from_pretrained(tiny_text_model, heads=heads)
    before = {k: v.clone() for k, v in model.heads["sentiment"].state_dict().items()}
    data = [{**r, "sentiment": r["label"]} for r in rows]  # its label column: named like the head
    result = train(model, {"stars": {"label": "score", "type": "regression"}}, train_dataset=data, **FAST)
    assert result.model is model and list(model.heads) == ["sentiment", "stars"]
    assert model.heads["sentiment"].config.labels == ["pos", "neg"]  # its label map is kept
    assert any(not torch.equal(before[k], v) for k, v in model.heads["sentiment"].state_dict().items())
    assert model.columns["sentiment"]["label"] == "sentiment" and model.columns["stars"]["label"] == "score"
    # next time each head reads the columns it trained on (stars: score, not a column named stars)
    again = train(model, {"sentiment": {"text": "text"}}, train_dataset=data, **FAST)  # fields: the rest as before
    assert again.model is model and model.columns["stars"]["label"] == "score"
    with pytest.raises(DataError, match="column 'nope' not found in train_dataset"):
        train(model, {"sentiment": "nope"}, train_dataset=rows, **FAST)
    with pytest.raises(HeadkitError, match="model's head is a classification head"):
        train(model, {"sentiment": {"label": "score", "type": "regression"}}, train_dataset=data, **FAST)
    with pytest.raises(HeadkitError, match="already has a head 'sentiment'"):
        Trainer(model, {"sentiment": headkit.head_config("classification")}, train_dataset=data)


def test_output_dir_keeps_the_run_and_args_take_overrides(tiny_text_model, rows, tmp_path):
    args = TrainConfig(strategy="frozen", batch_size=8, progress=False, patience=0)
    out = tmp_path / "run"
    trainer = Trainer(tiny_text_model, {"sentiment": "label"}, train_dataset=rows, args=args, epochs=1, output_dir=out)
    result = trainer.train()
    assert result.run_dir == out and (out / "metrics.json").is_file() and (out / "model" / "heads.json").is_file()
    assert trainer.args.epochs == 1 and args.epochs == 30  # the override; args itself is left as it was
    # a strategy given as an override brings its own defaults for what args left at frozen's
    assert Trainer(tiny_text_model, {"s": "label"}, train_dataset=rows, args=args, strategy="full").args.lr == 1e-3
    # ... but what args set by hand stays, even at the value the old strategy would have brought
    chosen = TrainConfig(strategy="frozen", lr=0.01, epochs=30, progress=False)  # frozen's own lr and epochs
    switched = Trainer(tiny_text_model, {"s": "label"}, train_dataset=rows, args=chosen, strategy="full").args
    assert (switched.lr, switched.epochs, switched.patience) == (0.01, 30, 3)  # patience: full's, left unset
    changed = TrainConfig(strategy="frozen", progress=False)
    changed.lr, changed.batch_size = 0.05, 4  # set by hand after the strategy filled them: they stay
    kept = Trainer(tiny_text_model, {"s": "label"}, train_dataset=rows, args=changed).args
    assert (kept.lr, kept.batch_size) == (0.05, 4)
    assert Trainer(tiny_text_model, {"s": "label"}, train_dataset=rows, args=changed, strategy="full").args.lr == 0.05
    with pytest.raises(HeadkitError, match="already holds a run"):
        train(tiny_text_model, {"sentiment": "label"}, train_dataset=rows, args=args, epochs=1, output_dir=out)
    resumed = train(tiny_text_model, {"sentiment": "label"}, train_dataset=rows, args=args, epochs=1, output_dir=out,
                    resume=True)  # fmt: skip
    assert resumed.metrics["heads"] == result.metrics["heads"]  # the finished run, continued: nothing left to do


def test_a_task_without_data_outside_the_trainer_is_refused_and_old_runs_keep_their_identity(tiny_text_model, tmp_path):
    from headkit.training.recipe import train as run_config_train

    config = TrainConfig(model=str(tiny_text_model), tasks=[TaskSpec("s")], output_dir=str(tmp_path / "r"))
    with pytest.raises(DataError, match="task 's' names no data"):
        run_config_train(config)
    old = TrainConfig(tasks=[TaskSpec("s", "a.csv")]).identity()["tasks"][0]
    assert "text_pair" not in old  # unset: a run saved before text_pair existed still resumes
    assert TrainConfig(tasks=[TaskSpec("s", "a.csv", text_pair="b")]).identity()["tasks"][0]["text_pair"] == "b"


@pytest.mark.parametrize("strategy", ["full", "fewshot", pytest.param("lora", marks=pytest.mark.skipif(
    not has_package("peft"), reason="needs peft"))])  # fmt: skip
def test_strategies(tiny_text_model, rows, scratch, strategy):
    backbone = {k: v.clone() for k, v in headkit.load_backbone(tiny_text_model).state_dict().items()}
    extra = {"fewshot_steps": 2} if strategy == "fewshot" else {"lora_r": 2} if strategy == "lora" else {}
    result = train(tiny_text_model, {"sentiment": "label"}, train_dataset=rows, strategy=strategy, **FAST, **extra)
    assert result.metrics["strategy"] == strategy and result.run_dir is None and list(scratch.iterdir()) == []
    model = result.model.backbone.get_base_model() if strategy == "lora" else result.model.backbone
    after = model.state_dict()
    if strategy == "lora":
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in after.items())
    else:
        assert any(not torch.equal(v, after[k]) for k, v in backbone.items() if k in after)
    with torch.no_grad():
        out = result.model(**headkit.load_processor(tiny_text_model)(["a good film"], return_tensors="pt"))
    assert out.outputs["sentiment"].shape == (1, 2)


def pair_rows(n: int = 32) -> list[dict]:
    """Two sentences: 'same' when both carry the same sentiment."""
    rows = []
    for i in range(n):
        a, b = POSITIVE[i % 5], (POSITIVE if i % 2 == 0 else NEGATIVE)[(i * 3) % 5]
        rows.append(
            {"premise": f"the film was {a}", "hypothesis": f"a {b} story", "label": "same" if i % 2 == 0 else "other"}
        )
    return rows


def test_sentence_pairs_reach_the_backbone_with_their_segments(tiny_text_model, scratch):
    segments = []
    model = MultiHeadModel.on_backbone(tiny_text_model)
    hook = model.backbone.embeddings.token_type_embeddings.register_forward_hook(
        lambda module, args, output: segments.append(args[0].clone())
    )
    heads = {"nli": {"label": "label", "text": "premise", "text_pair": "hypothesis"}}
    result = train(model, heads, train_dataset=pair_rows(), **{**FAST, "strategy": "full"})
    hook.remove()
    assert segments and all((s == 1).any() for s in segments)  # every batch: the second text is segment 1
    assert result.model.columns["nli"] == {"label": "label", "text": "premise", "text_pair": "hypothesis"}


def test_pairs_are_encoded_as_the_tokenizer_pairs_them_and_padded_with_their_segments(tiny_text_model):
    tokenizer = headkit.load_processor(tiny_text_model)
    data = [{"a": "the film", "b": "was very good"}, {"a": "bad", "b": "plot"}]
    ids, words, types = tokenize(tokenizer, data, "a", 64, "pairs", False, text_pair="b")
    expected = tokenizer(["the film", "bad"], ["was very good", "plot"], truncation=True, max_length=64)
    assert ids == expected["input_ids"] and types == expected["token_type_ids"] and words is None
    assert types[0] == [0, 0, 0, 0, 1, 1, 1, 1]
    short, _, cut = tokenize(tokenizer, data, "a", 5, "pairs", False, text_pair="b")
    assert max(len(x) for x in short) == 5 and len(cut[0]) == 5  # truncated, segments alike
    batch = collate([e for e in EncodedData(ids, {}, token_type_ids=types)], 0, {}, {})
    assert batch["token_type_ids"].tolist() == [types[0], [0, 0, 0, 1, 1, 0, 0, 0]]  # padding: segment 0
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 1, 1, 0, 0, 0]
    subset = EncodedData(ids, {}, token_type_ids=types).subset([1])
    assert subset.token_type_ids == [types[1]]
    single = tokenize(tokenizer, data, "a", 64, "pairs", False)
    assert single.token_type_ids is None  # one text: BERT's all-zero segments are its default


def test_progress_off_leaves_transformers_bars_alone(tiny_text_model, rows, tmp_path, capsys):
    bars = transformers.utils.logging
    assert bars.is_progress_bar_enabled()
    train(tiny_text_model, {"sentiment": "label"}, train_dataset=rows, output_dir=tmp_path / "run", **FAST)
    assert bars.is_progress_bar_enabled()  # for the process: as it was
    assert "Writing model shards" not in capsys.readouterr().err  # in the run: off, as asked


def test_clear_errors(tiny_text_model, rows, tmp_path):
    ok = {"sentiment": "label"}
    with pytest.raises(DataError, match="no train_dataset"):
        train(tiny_text_model, ok, **FAST)
    with pytest.raises(HeadkitError, match=r"heads\['sentiment'\] is a int; give a label column"):
        Trainer(tiny_text_model, {"sentiment": 3}, train_dataset=rows)
    with pytest.raises(HeadkitError, match=r"unknown field\(s\) \['colour'\]"):
        Trainer(tiny_text_model, {"sentiment": {"colour": "red"}}, train_dataset=rows)
    with pytest.raises(DataError, match="nope"):
        train(tiny_text_model, {"sentiment": "nope"}, train_dataset=rows, **FAST)
    for empty in ([], {}, {"text": [], "label": []}, pd.DataFrame(), datasets.Dataset.from_list([])):
        with pytest.raises(DataError, match="train_dataset is empty"):
            train(tiny_text_model, ok, train_dataset=empty, **FAST)
    with pytest.raises(DataError, match="eval_dataset is a int"):
        train(tiny_text_model, ok, train_dataset=rows, eval_dataset=5, **FAST)
    splits = datasets.DatasetDict(test=datasets.Dataset.from_list(rows))
    with pytest.raises(DataError, match=r"splits \['test'\] and none is 'train'"):
        train(tiny_text_model, ok, train_dataset=splits, **FAST)
    with pytest.raises(HeadkitError, match=r"unknown training option\(s\) \['epoch'\]"):
        Trainer(tiny_text_model, ok, train_dataset=rows, epoch=3)
    with pytest.raises(HeadkitError, match="unknown strategy 'half'"):
        Trainer(tiny_text_model, ok, train_dataset=rows, strategy="half")
    with pytest.raises(HeadkitError, match="--epochs must be at least 1, got 0"):
        Trainer(tiny_text_model, ok, train_dataset=rows, epochs=0)
    with pytest.raises(HeadkitError, match="args must be a headkit TrainConfig"):
        Trainer(tiny_text_model, ok, train_dataset=rows, args={"epochs": 3})
    with pytest.raises(HeadkitError, match="resume=True continues the run in output_dir"):
        Trainer(tiny_text_model, ok, train_dataset=rows, resume=True)
    with pytest.raises(HeadkitError, match="no heads to train"):
        Trainer(tiny_text_model, train_dataset=rows)
    with pytest.raises(HeadkitError, match="model must be a model id"):
        Trainer(42, ok, train_dataset=rows)
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    with pytest.raises(HeadkitError, match="strategy fewshot solves its heads on every labelled example"):
        train(tiny_text_model, ok, train_dataset=stream, strategy="fewshot", **FAST)
    assert not os.listdir(tmp_path)


def test_a_stream_goes_to_the_streaming_reader_untouched(tiny_text_model, rows, monkeypatch):
    import headkit.data.streaming as streaming

    seen = {}

    def prepare_stream(tasks, processor, max_length, seed, sources, label_maps, causal=False):
        seen.update(tasks=tasks, sources=sources)
        raise KeyboardInterrupt  # far enough: what it was given is what this test checks

    monkeypatch.setattr(streaming, "prepare_stream", prepare_stream)
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    with pytest.raises(KeyboardInterrupt):
        train(tiny_text_model, {"sentiment": "label"}, train_dataset=datasets.IterableDatasetDict(train=stream))
    assert seen["sources"] == {"train_dataset": stream} and seen["tasks"][0].data == "train_dataset"


def test_a_data_file_path_reads_its_images_relative_to_the_file(tmp_path, monkeypatch):
    """A CSV named by path is read as the CLI reads --data: image paths relative to the file, whatever the cwd."""
    from headkit.data.shapes import save_small_vit, write_shapes
    from headkit.training.trainer import train

    splits = write_shapes(tmp_path / "shapes", train=16, validation=8, test=4, size=32)
    vit = save_small_vit(tmp_path / "vit", image_size=32, hidden_size=32, layers=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = train(str(vit), {"shape": "label"}, train_dataset=str(splits["train"]),
                   eval_dataset=str(splits["validation"]), text_column="image", epochs=1, progress=False)  # fmt: skip
    assert result.metrics["train_examples"] == 16 and result.metrics["val_examples"] == 8


# ----------------------------------------------------------------------------- found in review (issue 36)


def test_the_feature_cache_tells_a_pair_from_the_same_ids_joined():
    """'a [SEP] b' as one text has the ids of the pair (a, b): only segment ids differ; the cache key sees them."""
    from headkit.training.features import tokens_digest

    ids = [[2, 5, 3, 6, 3]]
    joined = EncodedData(ids, token_type_ids=None)
    pair = EncodedData(ids, token_type_ids=[[0, 0, 0, 1, 1]])
    assert tokens_digest(joined) != tokens_digest(pair)


def test_sentence_pairs_on_a_tokenizer_without_a_pair_template_are_refused(tmp_path):
    """A decoder's tokenizer(a, b) runs the two texts together: neither training nor predict reads that silently."""
    decoder = save_decoder(tmp_path / "gpt2", "gpt2")
    rows = [
        {"text": "good film", "other": "bad plot", "label": "pos"},
        {"text": "dull", "other": "fine", "label": "neg"},
    ]
    with pytest.raises(DataError, match="no sentence-pair template"):
        train(str(decoder), {"s": {"label": "label", "text_pair": "other"}}, train_dataset=rows * 4, epochs=1,
              progress=False)  # fmt: skip
    model = MultiHeadModel.from_pretrained(decoder, {"s": headkit.head_config("classification", labels=["neg", "pos"])})
    with pytest.raises(DataError, match="no sentence-pair template"):
        model.predict([("good film", "bad plot")])


def test_a_given_model_keeps_its_max_length_and_is_refused_lpft_and_lora_twice(tiny_text_model, rows):
    heads = {"sentiment": headkit.head_config("classification", labels=["neg", "pos"])}
    model = MultiHeadModel.from_pretrained(tiny_text_model, heads)
    model.max_length = 16
    assert Trainer(model, {"sentiment": "label"}, train_dataset=rows).args.max_length == 16
    with pytest.raises(HeadkitError, match="lp-ft reloads the backbone"):
        Trainer(model, {"sentiment": "label"}, train_dataset=rows, strategy="lp-ft")
    from peft import LoraConfig, get_peft_model

    model.backbone = get_peft_model(model.backbone, LoraConfig(r=2, target_modules=["query", "value"]))
    with pytest.raises(HeadkitError, match="already carries LoRA adapters"):
        Trainer(model, {"sentiment": "label"}, train_dataset=rows, strategy="lora")
