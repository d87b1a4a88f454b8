"""model.predict / model.evaluate / headkit.pipeline: the model answers for itself (issue #36).

Tiny random models (tests/conftest.py): what is checked is that every way in gives the same
answer as the paths the CLI takes, not that the answers are good."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

import headkit
from headkit.cli.main import main
from headkit.data.pairs import join_pair
from headkit.errors import DataError, HeadkitError
from headkit.ship.inference import Metrics
from headkit.ship.predict import predict_texts

from conftest import sentiment_rows, tiny_config, write_csv

TEXT_HEADS = {
    "sentiment": {"type": "classification", "labels": ["neg", "pos"]},
    "score": {"type": "regression", "labels": ["score"]},
    "tags": {"type": "token-classification", "labels": ["O", "B-LOC", "I-LOC", "B-PER"]},
}
TEXTS = ["a very good film", "the plot was dull and boring", "alice visited paris"]


def close(a, b) -> bool:
    """Equal answers, floats to 1e-5 (two models with the same weights may batch differently)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-5 * max(1.0, abs(a), abs(b))
    return a == b


def backbone_inputs(model) -> list[dict]:
    """Records the keyword inputs of every backbone call."""
    calls: list[dict] = []
    model.backbone.register_forward_pre_hook(lambda _m, _a, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


@pytest.fixture(scope="module")
def text_model(tiny_text_model):
    torch.manual_seed(0)
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=TEXT_HEADS)
    for p in model.heads.parameters():  # larger weights than the init, so that differences would show
        torch.nn.init.normal_(p, std=0.5) if p.dim() > 1 else None
    return model.eval()


@pytest.fixture(scope="module")
def saved_text_model(text_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inference") / "model"
    headkit.save(text_model, path, processor=text_model._processor())
    return path


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    """A tiny ViT with a 32x32 image processor, a classification and a box head; and its save."""
    from PIL import Image

    directory = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    transformers.ViTModel(tiny_config("vit")).save_pretrained(directory)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    heads = {"kind": {"type": "classification", "labels": ["cat", "dog"]}, "where": {"type": "box"}}
    model = headkit.MultiHeadModel.from_pretrained(directory, heads=heads).eval()
    saved = directory.parent / "vit-save"
    headkit.save(model, saved, processor=model._processor())
    g = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 255, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
        for h, w in ((40, 60), (32, 32), (50, 20))
    ]
    return model, saved, images


# ----------------------------------------------------------------------------- predict: text


def test_predict_answers_one_dict_per_input_in_the_pipeline_form(text_model):
    one = text_model.predict("a very good film")
    assert set(one) == set(TEXT_HEADS)
    assert set(one["sentiment"]) == {"label", "score"} and one["sentiment"]["label"] in ("neg", "pos")
    assert set(one["score"]) == {"score"} and isinstance(one["tags"], list)
    many = text_model.predict(TEXTS, batch_size=2)
    assert len(many) == 3 and close(many[0], one)  # in input order, whatever the batches
    assert text_model.predict([]) == []
    assert close(text_model.predict(tuple(TEXTS)), many)  # any sequence of texts (a 2-tuple of texts is a pair)
    only = text_model.predict(TEXTS, heads=["sentiment"])
    assert [set(p) for p in only] == [{"sentiment"}] * 3 and close(only[1]["sentiment"], many[1]["sentiment"])


def test_predict_is_what_predict_texts_gives_in_the_pipeline_form(text_model):
    tokenizer = text_model._processor()
    raw = predict_texts(text_model, tokenizer, TEXTS)
    forms = [{h: text_model.heads[h].view.pipeline_output(v) for h, v in p.items()} for p in raw]
    assert close(text_model.predict(TEXTS), forms)
    entities = text_model.predict("alice visited paris")["tags"]
    assert all(set(e) == {"entity_group", "word", "start", "end"} for e in entities)  # character-offset spans


def test_a_long_text_is_marked_truncated(text_model):
    long = " ".join(["good"] * 80)
    answer = text_model.predict(long, max_length=16)
    assert answer["truncated"] is True and "truncated" not in text_model.predict("a good film", max_length=16)


def test_predict_runs_in_eval_mode_and_gives_training_mode_back(text_model):
    text_model.train()
    try:
        first, second = text_model.predict(TEXTS), text_model.predict(TEXTS)
        assert close(first, second)  # dropout off: the same answer twice
        assert text_model.training and text_model.backbone.training
    finally:
        text_model.eval()
    assert close(first, text_model.predict(TEXTS))


def test_sentence_pairs_reach_the_backbone_with_segment_ids(text_model):
    calls = backbone_inputs(text_model)
    pairs = [("a very good film", "the plot was dull"), ("alice", "visited paris")]
    answers = text_model.predict(pairs)
    token_types = torch.cat([c["token_type_ids"].flatten() for c in calls if "token_type_ids" in c])
    assert len(answers) == 2 and token_types.max() == 1  # the second text is segment 1, as BERT reads pairs
    tokenizer = text_model._processor()
    encoded = tokenizer(*zip(*pairs, strict=True), truncation=True, max_length=64)
    assert calls[-1]["input_ids"].shape[1] == max(len(ids) for ids in encoded["input_ids"])
    assert not close(answers[0], text_model.predict(join_pair(*pairs[0])))  # not one joined text
    # one pair alone, a tuple or transformers' dict form, gives one dict
    assert close(text_model.predict(pairs[0]), answers[0])
    assert close(text_model.predict({"text": pairs[0][0], "text_pair": pairs[0][1]}), answers[0])
    # tags are given for the first text: no word of the second text is read against the first one
    words = [e["word"] for e in text_model.predict([("alice met bob", "paris london")])[0]["tags"]]
    assert all(w in "alice met bob" for w in words)


def test_reward_pairs_are_still_joined_into_one_text(tiny_text_model):
    torch.manual_seed(0)
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads={"reward": {"type": "reward"}}).eval()
    calls = backbone_inputs(model)
    pair = ("the film was", "very good")
    scored = model.predict([pair, "the film was very good"])
    assert all(int(c["token_type_ids"].max()) == 0 for c in calls if "token_type_ids" in c)
    assert set(scored[0]) == {"reward"} and close(scored[0], scored[1])  # == the text join_pair makes


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (None, "predict got NoneType"),
        (5, "predict got int"),
        (["fine", None], "item 1 is None"),
        (["fine", 7], "item 1 is int 7"),
        ([("a", "b", "c")], "item 0 is a tuple of 3 items"),
        ([("a", 3)], "item 0 is a tuple of 2 items"),
        ([("a", "b"), "c"], "item 1 is one text, but the items before it are (text, text_pair) pairs"),
        (["c", ("a", "b")], "item 1 is a (text, text_pair) pair, but the items before it are single texts"),
        ([{"text": "a", "label": "b"}], "item 0 is a dict with keys ['label', 'text']"),
    ],
)
def test_bad_inputs_are_data_errors_naming_the_item(text_model, inputs, message):
    with pytest.raises(DataError) as error:
        text_model.predict(inputs)
    assert message in str(error.value)


def test_unknown_heads_and_a_model_without_processor_are_headkit_errors(text_model, bert_backbone):
    with pytest.raises(HeadkitError, match=r"unknown head\(s\) \['nope'\]"):
        text_model.predict("a", heads=["nope"])
    bare = headkit.MultiHeadModel(bert_backbone, {"s": headkit.head_config("classification", labels=["a", "b"])})
    with pytest.raises(HeadkitError, match="set_processor"):
        bare.predict("a")
    bare.set_processor(transformers.Wav2Vec2FeatureExtractor())  # a speech model's processor
    with pytest.raises(HeadkitError, match="processor is a Wav2Vec2FeatureExtractor"):
        bare.predict("a")


# ----------------------------------------------------------------------------- predict: images


def test_images_go_through_the_image_processor(vision, tmp_path):
    model, _, images = vision
    one = model.predict(images[0])
    assert set(one) == {"kind", "where"} and set(one["kind"]) == {"label", "score"}
    x1, y1, x2, y2 = one["where"]
    assert 0 <= x1 <= x2 <= 60 and 0 <= y1 <= y2 <= 40  # pixels of the image as given (60x40), not 32x32
    many = model.predict(images, batch_size=2)
    assert len(many) == 3 and close(many[0], one)
    path = tmp_path / "picture.png"
    images[2].save(path)
    assert close(model.predict(str(path)), many[2]) and close(model.predict([path])[0], many[2])
    assert close(model.predict(images[1].convert("L")), model.predict(images[1].convert("L").convert("RGB")))


def test_text_to_an_image_model_and_images_to_a_text_model_are_refused(vision, text_model):
    model, _, images = vision
    with pytest.raises(DataError, match=r"item 1 is text \('a cat'\), but this model reads images"):
        model.predict([images[0], "a cat"])
    with pytest.raises(DataError, match="item 1 is a tuple of 2 items, but this model reads images"):
        model.predict([images[0], ("a", "b")])
    with pytest.raises(DataError, match="item 1 is an image, but this model reads text"):
        text_model.predict(["a cat", images[0]])


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_from_a_model_and_from_its_save_answers_as_model_predict(text_model, saved_text_model):
    expected = text_model.predict(TEXTS)
    from_model = headkit.pipeline(text_model)
    assert from_model.model is text_model and close(from_model(TEXTS), expected)
    from_dir = headkit.pipeline(saved_text_model, device="cpu")
    assert close(from_dir(TEXTS), expected) and close(from_dir(TEXTS[0]), expected[0])
    assert close(from_dir.model.predict(TEXTS), expected)  # a loaded model answers for itself too
    pairs = [("a very good film", "the plot was dull")]
    assert close(from_dir(pairs), text_model.predict(pairs))
    assert close(from_dir(TEXTS, heads=["tags"]), text_model.predict(TEXTS, heads=["tags"]))
    tokenizer = text_model._processor()
    given = headkit.pipeline(saved_text_model, device="cpu", processor=tokenizer)
    assert given.tokenizer is tokenizer and close(given(TEXTS), expected)


def test_pipeline_on_an_image_save_gives_its_processor_images(vision):
    model, saved, images = vision
    classify = headkit.pipeline(saved, device="cpu")
    assert close(classify(images), model.predict(images)) and close(classify(images[0]), model.predict(images[0]))


def test_pipeline_refuses_what_it_cannot_run(text_model):
    with pytest.raises(HeadkitError, match="not int"):
        headkit.pipeline(3)
    with pytest.raises(HeadkitError, match="a model object runs on torch"):
        headkit.pipeline(text_model, engine="onnx")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face hub cache; `publish(folder, repo_id, ref)` lays a folder out in it."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def publish(folder: Path, repo_id: str, ref: str = "main", commit: str = "0" * 40) -> None:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)

    return publish


def test_pipeline_from_a_hub_id_reads_the_hub_cache(text_model, saved_text_model, hub_cache):
    hub_cache(saved_text_model, "tiny-org/inference-model", ref="v1")
    expected = text_model.predict(TEXTS)
    assert close(headkit.pipeline("tiny-org/inference-model@v1", device="cpu")(TEXTS), expected)
    hub_cache(saved_text_model, "tiny-org/other-model")
    assert close(headkit.pipeline("tiny-org/other-model", device="cpu")(TEXTS), expected)


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Rows with the sentiment head's labels (and a score column), as rows and as a CSV file."""
    rows = [{"text": r["text"], "sentiment": r["label"], "score": float(r["score"])} for r in sentiment_rows(24)]
    path = write_csv(tmp_path_factory.mktemp("eval") / "labelled.csv", rows)
    return rows, path


def test_evaluate_in_memory_gives_what_headkit_evaluate_gives_on_the_file(text_model, saved_text_model, labelled,
                                                                         tmp_path):  # fmt: skip
    import datasets
    import pandas as pd

    rows, path = labelled
    out = tmp_path / "scores.json"
    args = ["evaluate", str(saved_text_model), "--data", str(path), "--head", "sentiment:sentiment",
            "--head", "score:score", "--device", "cpu", "--output", str(out), "--no_progress"]  # fmt: skip
    assert main(args) == 0
    cli = json.loads(out.read_text())
    heads = ["sentiment", "score"]
    as_columns = {k: [r[k] for r in rows] for k in rows[0]}
    for data in (as_columns, pd.DataFrame(rows), datasets.Dataset.from_list(rows), rows, str(path)):
        metrics = text_model.evaluate(data, heads=heads)
        assert isinstance(metrics, Metrics) and set(metrics) == set(heads) and metrics.num_examples == 24
        assert close(dict(metrics), cli["scores"]) and close(metrics.losses, cli["losses"])
        assert close(metrics.to_json(), cli)
    assert "accuracy" in metrics["sentiment"] and set(metrics.losses) == set(heads)


def test_evaluate_reads_the_columns_the_model_trained_on(text_model, labelled):
    rows, _ = labelled
    renamed = [{"review": r["text"], "polarity": r["sentiment"]} for r in rows]
    reference = text_model.evaluate(rows, heads=["sentiment"])
    text_model.columns = {"sentiment": {"label": "polarity", "text": "review", "text_pair": None}}
    try:
        assert close(dict(text_model.evaluate(renamed, heads=["sentiment"])), dict(reference))
        # given columns win over the recorded ones; a dict may name the text column too
        given = text_model.evaluate(rows, heads={"sentiment": {"label": "sentiment", "text": "text"}})
        assert close(dict(given), dict(reference))
        with pytest.raises(DataError, match="trained on the label column 'polarity', which the evaluation data lacks"):
            text_model.evaluate([{"review": "a good film", "label2": "pos"}], heads=["sentiment"])
    finally:
        text_model.columns = {}


def test_evaluate_defaults_and_errors(text_model, labelled):
    rows, _ = labelled
    one_label = [{"text": r["text"], "label": r["sentiment"]} for r in rows]
    assert set(text_model.evaluate(one_label, heads=["sentiment"])) == {"sentiment"}  # 'label' for a lone head
    with pytest.raises(HeadkitError, match=r"not heads of this model"):
        text_model.evaluate(rows, heads=["nope"])
    with pytest.raises(HeadkitError, match="give a list of head names"):
        text_model.evaluate(rows, heads="sentiment")
    with pytest.raises(HeadkitError, match=r"unknown column key\(s\) \['labels'\]"):
        text_model.evaluate(rows, heads={"sentiment": {"labels": "sentiment"}})
    with pytest.raises(DataError, match="none of the labels in column 'sentiment'"):  # no label the head knows
        text_model.evaluate([{"text": "a good film", "sentiment": "meh"}], heads=["sentiment"])


def test_evaluate_reads_sentence_pairs_as_predict_does(text_model):
    rows = [
        {"premise": r["text"], "hypothesis": h, "score": float(r["score"])}
        for r, h in zip(sentiment_rows(12), ["a very good film", "dull and boring"] * 6, strict=True)
    ]
    calls = backbone_inputs(text_model)
    columns = {"label": "score", "text": "premise", "text_pair": "hypothesis"}
    metrics = text_model.evaluate(rows, heads={"score": columns})
    assert any(int(c["token_type_ids"].max()) == 1 for c in calls if "token_type_ids" in c)  # segment ids reach it
    answers = text_model.predict([(r["premise"], r["hypothesis"]) for r in rows], heads=["score"])
    predicted = [a["score"]["score"] for a in answers]  # a regression head: {target: value}
    mse = sum((p - r["score"]) ** 2 for p, r in zip(predicted, rows, strict=True)) / len(rows)
    assert metrics["score"]["mse"] == pytest.approx(mse, rel=1e-4)  # scored on what predict answers for the pairs
    text_model.columns = {"score": columns}  # what a pair-trained model records
    try:
        assert close(dict(text_model.evaluate(rows, heads=["score"])), dict(metrics))
    finally:
        text_model.columns = {}


def test_a_pipeline_runs_an_engine_that_is_not_a_torch_module(text_model):
    """An ONNX engine (OnnxModel: `heads`, `backbone_config`, `device`, a call; no train/eval modes)
    answers through the same code: stood in for here by the torch model behind that surface (the
    real engine's answers are checked against torch in test_export.py)."""
    from headkit.ship.pipeline import HeadsPipeline

    class Engine:
        heads, backbone_config, device = text_model.heads, text_model.backbone_config, text_model.device
        max_length = None

        def __call__(self, **inputs):
            return text_model(**inputs)

    answers = HeadsPipeline(Engine(), text_model._processor())(TEXTS)
    assert close(answers, text_model.predict(TEXTS))


# ----------------------------------------------------------------------------- trained in memory, end to end


def test_a_pair_model_trained_in_memory_answers_the_same_saved_loaded_and_piped(tiny_text_model, tmp_path):
    """The issue's acceptance: trained in memory, saved with save_pretrained, loaded with
    from_pretrained and headkit.pipeline, it predicts as in memory; evaluate reads the columns it
    trained on (a sentence pair) and scores the validation data as training's last validation did."""
    rows = [
        {"premise": r["text"], "hypothesis": h, "entail": r["label"]}
        for r, h in zip(sentiment_rows(40), ["good", "bad"] * 20, strict=True)
    ]
    heads = {"nli": {"label": "entail", "text": "premise", "text_pair": "hypothesis"}}
    result = headkit.train(str(tiny_text_model), heads, train_dataset=rows[:32], eval_dataset=rows[32:], epochs=1,
                           progress=False)  # fmt: skip
    model, held_out = result.model, rows[32:]
    metrics = model.evaluate(held_out)  # no columns named: the ones it trained on
    assert close(dict(metrics), result.evaluation.scores) and close(metrics.losses, result.evaluation.losses)
    pairs = [(r["premise"], r["hypothesis"]) for r in held_out]
    expected = model.predict(pairs)
    model.save_pretrained(tmp_path / "saved")
    loaded = headkit.MultiHeadModel.from_pretrained(tmp_path / "saved")
    assert close(loaded.predict(pairs), expected)
    assert close(headkit.pipeline(tmp_path / "saved", device="cpu")(pairs), expected)
    assert close(dict(loaded.evaluate(held_out)), dict(metrics))
