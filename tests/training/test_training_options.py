"""The options every trainer has: gradient clipping, gradient checkpointing, experiment tracking,
the metric that picks the best epoch, class weights, tuned multi-label thresholds and the
per-class report."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import headkit
from headkit import HeadkitError
from headkit.cli.main import main
from headkit.cli.parser import build_parser, normalise_argv
from headkit.data.tasks import TaskSpec
from headkit.errors import CheckpointError
from headkit.heads import head_class, head_config
from headkit.heads.base import IGNORE_INDEX
from headkit.ship.export import export_onnx
from headkit.ship.predict import load_for_inference
from headkit.ship.save import read_manifest
from headkit.training import loop
from headkit.training.recipe import TrainConfig, train

from conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return str(write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", sentiment_rows(48)))


@pytest.fixture(scope="module")
def imbalanced_file(tmp_path_factory):
    """36 neg, 4 pos: most positives dropped from the balanced toy set."""
    rows = [r for i, r in enumerate(sentiment_rows(72)) if r["label"] == "neg" or i % 9 == 0]
    return str(write_csv(tmp_path_factory.mktemp("imbalanced") / "reviews.csv", rows))


@pytest.fixture(scope="module")
def genres_file(tmp_path_factory):
    import random

    rng = random.Random(0)
    rows = []
    for i, row in enumerate(sentiment_rows(60)):
        genres = [g for g, keep in (("drama", row["label"] == "pos"), ("comedy", i % 3 == 0)) if keep] or ["news"]
        rows.append({"text": row["text"], "genres": "|".join(genres), "x": rng.random()})
    return str(write_csv(tmp_path_factory.mktemp("genres") / "genres.csv", rows))


def config(model_dir, data, out, **overrides) -> TrainConfig:
    fields = dict(
        model=str(model_dir),
        tasks=[TaskSpec("sentiment", data), TaskSpec("score", data, label="score", type="regression")],
        output_dir=str(out),
        epochs=2,
        batch_size=8,
        lr=1e-2,
        backbone_lr=1e-3,
        val_fraction=0.25,
        patience=0,
        progress=False,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


# ----------------------------------------------------------------------------- gradient clipping


def _record_norms_before_steps(monkeypatch) -> list[float]:
    """Patch the loop's optimizer so that every step records the gradient norm it is about to use."""
    norms: list[float] = []
    make = loop.make_optimizer

    def recording(*args, **kwargs):
        optimizer = make(*args, **kwargs)

        def hook(opt, *_):
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        optimizer.register_step_pre_hook(hook)
        return optimizer

    monkeypatch.setattr(loop, "make_optimizer", recording)
    return norms


def test_gradients_are_clipped_to_max_grad_norm_before_every_step(tiny_text_model, data_file, tmp_path, monkeypatch):
    norms = _record_norms_before_steps(monkeypatch)
    result = train(config(tiny_text_model, data_file, tmp_path / "clip", strategy="full", max_grad_norm=0.05))
    raw = [
        s["grad_norm"]
        for s in json.loads((tmp_path / "clip" / "checkpoint" / "state.json").read_text())["progress"]["steps"]
    ]
    assert len(norms) == len(raw) > 0
    assert max(raw) > 0.05  # the raw norms were larger: clipping had work to do
    assert max(norms) <= 0.05 * (1 + 1e-4), norms  # and every step used at most the limit
    assert result.metrics["trainable_params"] > 0


def test_max_grad_norm_zero_leaves_gradients_alone(tiny_text_model, data_file, tmp_path, monkeypatch):
    norms = _record_norms_before_steps(monkeypatch)
    train(config(tiny_text_model, data_file, tmp_path / "noclip", strategy="full", max_grad_norm=0.0))
    steps = json.loads((tmp_path / "noclip" / "checkpoint" / "state.json").read_text())["progress"]["steps"]
    assert all("grad_norm" not in s for s in steps)
    assert max(norms) > 0.05


# ----------------------------------------------------------------------------- gradient checkpointing


def test_heads_built_from_pretrained_modules_keep_their_own_rate_under_a_strategys(tiny_text_model):
    """frozen's and lora's head rate (1e-2) is for new layers: a language-model head's pretrained
    transform trains at its type's 1e-3 there, unless --lr is set by hand."""
    from headkit.training.strategies import make_optimizer, parse_strategy

    heads = {
        "topic": {"type": "classification", "labels": ["a", "b"]},
        "mlm": {"type": "masked-lm", "vocab_size": 0},  # tied: its decoder is the input embeddings
        "untied": {"type": "masked-lm", "vocab_size": 0, "tie_embeddings": False},  # a decoder of its own
    }
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=heads)
    tied = {id(p) for p in model.backbone.parameters()}  # the decoder shares the input embeddings
    assert model.heads["untied"].config.tie_embeddings is False
    for strategy, given, topic, mlm in [("lora", {}, 1e-2, 1e-3), ("frozen", {}, 1e-2, 1e-3), ("full", {}, 1e-3, 1e-3),
                                        ("lora", {"lr": 5e-3}, 5e-3, 5e-3)]:  # fmt: skip
        optimizer = make_optimizer(model, TrainConfig(strategy=strategy, **given), parse_strategy(strategy))
        rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        assert {rate[id(p)] for p in model.heads["topic"].parameters()} == {topic}, strategy
        for name in ("mlm", "untied"):
            own = [p for p in model.heads[name].parameters() if id(p) not in tied]
            assert own and {rate[id(p)] for p in own} == {mlm}, (name, strategy, given)
        assert rate[id(model.heads["untied"].decoder.weight)] == mlm  # a vocabulary matrix of its own


def test_min_steps_adds_whole_epochs_on_small_data_only(tiny_text_model, data_file, tmp_path, monkeypatch, caplog):
    steps = _record_norms_before_steps(monkeypatch)  # 36 training rows in batches of 8: 5 steps an epoch
    with caplog.at_level(logging.INFO, logger="headkit"):
        result = train(config(tiny_text_model, data_file, tmp_path / "more", strategy="full", min_steps=12))
    assert len(result.metrics["epochs"]) == 3 and len(steps) == 15  # 2 epochs are 10 steps: a third, whole
    assert "3 epochs instead of 2, to train at least --min_steps 12 optimizer steps (5 an epoch" in caplog.text
    steps.clear()
    result = train(config(tiny_text_model, data_file, tmp_path / "enough", strategy="full", min_steps=10))
    assert len(result.metrics["epochs"]) == 2 and len(steps) == 10
    # full's recipe: at least 250 steps; epochs of the user's own train as given, unless min_steps is given too
    assert (TrainConfig(strategy="full").min_steps, TrainConfig(strategy="full", epochs=3).min_steps) == (250, 0)
    assert TrainConfig(strategy="full", epochs=3, min_steps=100).min_steps == 100
    assert (TrainConfig(strategy="lora").min_steps, TrainConfig(strategy="lora").lr) == (250, 1e-2)  # lora: as full
    assert (TrainConfig(strategy="frozen").min_steps, TrainConfig(strategy="fewshot").min_steps) == (0, 0)
    # 0 (epochs alone) stays out of a run's identity: runs saved before the option still resume
    assert (
        "min_steps" not in TrainConfig(min_steps=0).identity() and TrainConfig(min_steps=5).identity()["min_steps"] == 5
    )


def test_gradient_checkpointing_recomputes_layers_and_trains_the_same(
    tiny_text_model, data_file, tmp_path, monkeypatch
):
    import transformers.models.bert.modeling_bert as bert

    calls = {"n": 0}  # counted inside the layer: a checkpointed layer runs its insides again in backward
    forward = bert.BertIntermediate.forward

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(bert.BertIntermediate, "forward", counting)
    plain = train(config(tiny_text_model, data_file, tmp_path / "plain", strategy="full", epochs=1))
    plain_calls, calls["n"] = calls["n"], 0
    checkpointed = train(
        config(tiny_text_model, data_file, tmp_path / "ckpt", strategy="full", epochs=1, gradient_checkpointing=True)
    )
    assert calls["n"] > plain_calls  # layers ran again in the backward pass
    for head, loss in plain.evaluation.losses.items():  # same maths: same model (dropout RNG is replayed)
        assert checkpointed.evaluation.losses[head] == pytest.approx(loss, rel=1e-4, abs=1e-6)


def test_gradient_checkpointing_with_a_frozen_backbone_is_a_note(tiny_text_model, data_file, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="headkit"):
        train(config(tiny_text_model, data_file, tmp_path / "frozen", epochs=1, gradient_checkpointing=True))
    assert "--gradient_checkpointing has no effect with strategy frozen" in caplog.text


# ----------------------------------------------------------------------------- experiment tracking


def test_report_to_tensorboard_writes_losses_and_validation_metrics(tiny_text_model, data_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tracked"
    train(config(tiny_text_model, data_file, run, strategy="full", report_to="tensorboard"))
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events, list(run.rglob("*"))
    tags = set()
    for file in events:
        accumulator = EventAccumulator(str(file))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    expected = {"train/loss/sentiment", "train/loss/score", "train/lr", "train/grad_norm", "val/sentiment/accuracy"}
    assert expected <= tags, tags
    steps = [e.step for e in EventAccumulator(str(events[0])).Reload().Scalars("train/loss/sentiment")]
    assert steps == list(range(1, 11))  # every optimizer step: 2 epochs of 5 batches (36 examples, 8 a batch)


# ----------------------------------------------------------------------------- metric_for_best_model


def test_metric_for_best_model_picks_the_best_epoch_by_that_metric(tiny_text_model, data_file, tmp_path):
    result = train(
        config(tiny_text_model, data_file, tmp_path / "mse", epochs=4, lr=0.05, metric_for_best_model="score/mse")
    )
    mse = [e["scores"]["score"]["mse"] for e in result.metrics["epochs"]]
    assert result.metrics["best_epoch"] == int(np.argmin(mse)) + 1  # lower is better for mse
    assert result.metrics["metric_for_best_model"] == "score/mse"
    result = train(
        config(tiny_text_model, data_file, tmp_path / "loss", epochs=4, lr=0.05, metric_for_best_model="loss")
    )
    totals = [sum(e["val_losses"].values()) for e in result.metrics["epochs"]]
    assert result.metrics["best_epoch"] == int(np.argmin(totals)) + 1


def test_unknown_metric_for_best_model_names_the_reported_ones_before_training(
    tiny_text_model, data_file, tmp_path, capsys
):
    with pytest.raises(HeadkitError, match=r"'sentiment/f2'.*sentiment/f1_macro.*score/mse"):
        train(config(tiny_text_model, data_file, tmp_path / "bad", metric_for_best_model="sentiment/f2"))
    assert not (tmp_path / "bad" / "checkpoint").exists()  # refused before the first step
    args = ["train", "--model", str(tiny_text_model), "--data", data_file, "--head", "sentiment:label"]
    assert main([*args, "--output_dir", str(tmp_path / "cli"), "--metric_for_best_model", "topic/accuracy"]) == 2
    assert "choose one of ['loss', 'sentiment/accuracy', 'sentiment/f1_macro'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- class weights


def test_auto_class_weights_are_inverse_frequency_per_head_type():
    balanced = head_class("classification").codec.auto_class_weights(np.array([0, 0, 0, 1, IGNORE_INDEX]), 3)
    assert balanced == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 1.0])  # a class never seen weighs 1
    tags = head_class("token-classification").codec.auto_class_weights([[0, 0, 0, 1], None, [0, IGNORE_INDEX, 2]], 3)
    assert tags == pytest.approx([6 / (3 * 4), 6 / (3 * 1), 6 / (3 * 1)])
    nan = float("nan")
    pos_weight = head_class("multilabel").codec.auto_class_weights(np.array([[1, 0], [0, 0], [0, 1], [1, nan]]), 2)
    assert pos_weight == pytest.approx([2 / 1, 2 / 1])  # the row with a missing value is left out
    assert head_class("regression").codec.auto_class_weights(np.zeros((3, 1)), 1) is None


def test_class_weights_weigh_the_loss():
    config = head_config("classification", labels=["a", "b"], input_size=4, pooling="mean")
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])  # the one "b" is badly wrong
    plain, _ = headkit.build_head(config).loss(logits, labels)
    weighted, _ = headkit.build_head(dataclasses.replace(config, class_weights=[1.0, 5.0])).loss(logits, labels)
    assert weighted > plain
    assert weighted == pytest.approx(F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 5.0])).item())


def test_class_weights_auto_and_by_label_are_saved_with_the_heads(tiny_text_model, imbalanced_file, tmp_path):
    run = tmp_path / "auto"
    result = train(config(tiny_text_model, imbalanced_file, run, class_weights="auto", epochs=1))
    weights = result.model.heads["sentiment"].config.class_weights
    assert weights[1] > 1 > weights[0]  # pos is the rare class
    saved = read_manifest(run / "model")["heads"]["sentiment"]
    assert saved["class_weights"] == pytest.approx(weights)
    assert headkit.load(run / "model").heads["score"].config.class_weights is None  # regression: none
    by_label = train(config(tiny_text_model, imbalanced_file, tmp_path / "named", class_weights={"pos": 4.0}, epochs=1))
    assert by_label.model.heads["sentiment"].config.class_weights == [1.0, 4.0]  # labels: neg, pos


def test_bad_class_weights_name_the_labels(tiny_text_model, data_file, tmp_path, capsys):
    with pytest.raises(HeadkitError, match=r"labels \['positive'\] that no head has; the labels are \['neg', 'pos'\]"):
        train(config(tiny_text_model, data_file, tmp_path / "x", class_weights={"positive": 2.0}))
    regression_only = [TaskSpec("score", data_file, label="score", type="regression")]
    with pytest.raises(HeadkitError, match="no head here has classes to weigh"):
        train(config(tiny_text_model, data_file, tmp_path / "y", tasks=regression_only, class_weights="auto"))
    args = ["train", "--model", str(tiny_text_model), "--data", data_file, "--head", "sentiment:label"]
    assert main([*args, "--output_dir", str(tmp_path / "z"), "--class_weights", "sometimes"]) == 2
    assert "--class_weights 'sometimes': choose one of none, auto" in capsys.readouterr().err


# ----------------------------------------------------------------------------- multi-label thresholds


def test_calibrate_finds_a_threshold_per_label():
    head = headkit.build_head(head_config("multilabel", labels=["drama", "comedy"], input_size=4, pooling="mean"))
    # drama is present exactly when its probability exceeds 0.3; comedy exactly above 0.7
    probs = [(0.35, 0.9), (0.4, 0.2), (0.1, 0.75), (0.2, 0.6), (0.6, 0.1), (0.22, 0.62)]
    preds = [{"labels": [], "probs": {"drama": d, "comedy": c}} for d, c in probs]
    refs = [[n for n, p, t in (("drama", d, 0.3), ("comedy", c, 0.7)) if p > t] for d, c in probs]
    unlabelled = {"labels": [], "probs": {"drama": 0.9, "comedy": 0.9}}  # no reference: not counted
    tuned = head.scoring.calibrate([*preds, unlabelled], [*refs, None])
    assert 0.22 <= tuned["drama"] < 0.35 and 0.62 <= tuned["comedy"] < 0.75
    logits = torch.logit(torch.tensor(probs, dtype=torch.float32))
    assert [p["labels"] for p in head.decode(logits)] == refs  # decoding uses the tuned thresholds
    assert [p["labels"] for p in preds] == refs  # and the validation predictions were re-decided at them
    assert head.thresholds.tolist() == pytest.approx([tuned["drama"], tuned["comedy"]])  # the head's state,
    assert head.config.thresholds is None  # not its config


def test_trained_multilabel_heads_keep_their_tuned_thresholds(tiny_text_model, genres_file, tmp_path):
    tasks = [TaskSpec("genres", genres_file, label="genres", type="multilabel")]
    run = tmp_path / "genres"
    result = train(config(tiny_text_model, genres_file, run, tasks=tasks, epochs=3, lr=0.05))
    thresholds = result.metrics["thresholds"]["genres"]
    assert set(thresholds) == {"comedy", "drama", "news"} and all(0.05 <= t <= 0.95 for t in thresholds.values())
    reloaded = headkit.load(run / "model").heads["genres"]  # the tuned thresholds are the head's state
    assert reloaded.thresholds.tolist() == pytest.approx([thresholds[n] for n in ("comedy", "drama", "news")])
    export_onnx(run, tmp_path / "onnx")  # and they travel with an ONNX export, whose heads decide with them
    engine = load_for_inference(tmp_path / "onnx", engine="onnx")[0]
    onnx = engine.heads["genres"]
    assert onnx.thresholds.tolist() == reloaded.thresholds.tolist()
    assert engine.columns == result.model.columns  # predict --input reads the columns training read
    (tmp_path / "onnx" / "head_state.safetensors").unlink()  # an export copied without it: said, not a traceback
    with pytest.raises(CheckpointError, match=r"has no head_state\.safetensors, which onnx\.json lists"):
        load_for_inference(tmp_path / "onnx", engine="onnx")
    untuned = train(
        config(tiny_text_model, genres_file, tmp_path / "fixed", tasks=tasks, epochs=1, tune_thresholds=False)
    )
    assert untuned.metrics["thresholds"] == {} and untuned.model.heads["genres"].thresholds.tolist() == [0.5] * 3


# ----------------------------------------------------------------------------- per-class report


def test_metrics_json_and_the_summary_carry_a_per_class_report(tiny_text_model, data_file, tmp_path, capsys):
    run = tmp_path / "report"
    train(config(tiny_text_model, data_file, run, epochs=1))
    report = json.loads((run / "metrics.json").read_text())["per_class"]
    assert set(report) == {"sentiment"}  # regression has no classes
    assert {"neg", "pos", "macro avg", "weighted avg"} <= set(report["sentiment"])
    assert set(report["sentiment"]["neg"]) == {"precision", "recall", "f1", "support"}
    assert sum(report["sentiment"][c]["support"] for c in ("neg", "pos")) == 12
    out = capsys.readouterr().out
    assert "sentiment: per class" in out and "macro avg" in out


def test_token_heads_report_entities_with_seqeval():
    head = headkit.build_head(
        head_config("token-classification", labels=["O", "B-PER", "I-PER", "B-LOC"], input_size=4)
    )
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", None]]
    preds = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC", "O"]]
    report = head.scoring.report(preds, refs)
    assert {"PER", "LOC"} <= set(report) and "B-PER" not in report  # entity level, not tag level
    assert report["PER"]["f1"] == 1.0 and report["LOC"]["recall"] == 0.5 and report["LOC"]["support"] == 2


def test_evaluate_cli_prints_and_writes_the_per_class_report(tiny_text_model, data_file, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(tiny_text_model, data_file, run, epochs=1))
    capsys.readouterr()
    output = tmp_path / "scores.json"
    assert main(["evaluate", str(run), "--data", data_file, "--head", "sentiment:label", "--output", str(output)]) == 0
    assert "sentiment: per class" in capsys.readouterr().out
    assert json.loads(output.read_text())["per_class"]["sentiment"]["pos"]["support"] == 24


def test_non_positive_class_weights_and_a_backbone_without_checkpointing_are_refused(
    tiny_text_model, data_file, tmp_path
):
    from torch import nn

    from headkit.errors import HeadConfigError
    from headkit.training.strategies import enable_gradient_checkpointing, parse_strategy

    with pytest.raises(HeadkitError, match=r"--class_weights \{'neg': 0.0\}: weights must be above 0"):
        train(config(tiny_text_model, data_file, tmp_path / "w", class_weights={"neg": 0.0, "pos": 2.0}))
    with pytest.raises(HeadConfigError, match="Linear does not support gradient checkpointing"):
        enable_gradient_checkpointing(nn.Linear(2, 2), parse_strategy("full"))


def test_evaluate_never_scores_two_heads_against_one_label_column(tiny_text_model, tmp_path):
    """Heads are matched to columns named like them; 'label' may stand in for one head only."""
    from headkit.training.evaluate import evaluate_dataset

    heads = {n: head_config("classification", labels=["neg", "pos"]) for n in ("sentiment", "mood")}
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=heads)
    tokenizer = headkit.load_processor(tiny_text_model)
    rows = sentiment_rows(8)
    plain = str(write_csv(tmp_path / "plain.csv", [{"text": r["text"], "label": r["label"]} for r in rows]))
    with pytest.raises(HeadkitError, match=r"heads \['sentiment', 'mood'\] have no column of their own.*--head"):
        evaluate_dataset(model, tokenizer, plain)
    own = str(write_csv(tmp_path / "own.csv", [{"text": r["text"], "label": r["label"], "mood": "neg"} for r in rows]))
    result, count = evaluate_dataset(model, tokenizer, own)
    assert count == 8 and sorted(result.references["mood"]) == ["neg"] * 8
    assert sorted(result.references["sentiment"]) == sorted(r["label"] for r in rows)
    scored, _ = evaluate_dataset(model, tokenizer, plain, {"sentiment": "label"})
    assert set(scored.scores) == {"sentiment"}


def test_option_flags_set_the_head_heads_type_settings():
    from headkit.errors import DataOptionError

    config = TrainConfig(
        data="squad.json",
        head=["answer:answers:span", "kind:qtype"],
        option=[
            "answer.doc_stride=64",
            "answer.null_threshold=1e-3",
            "kind.threshold=null",
            "note=a=b",
            "day=2020-01-01",
        ],
    )
    tasks = {t.name: t.options for t in config.all_tasks()}
    assert tasks == {  # numbers as numbers (YAML 1.1 alone reads 1e-3 as text), a date stays text
        "answer": {"doc_stride": 64, "null_threshold": 1e-3, "note": "a=b", "day": "2020-01-01"},
        "kind": {"threshold": None, "note": "a=b", "day": "2020-01-01"},
    }
    argv = ["train", "--data", "q.json", "--head", "answer:answers:span", "--option", "answer.doc_stride=64"]
    parsed = build_parser().parse_args(normalise_argv(argv))["train"]
    assert parsed.option == ["answer.doc_stride=64"]
    for bad, message in [
        (["doc_stride"], "should look like KEY=VALUE"),
        (["other.doc_stride=3"], "no --head named 'other'"),
        (["answer.doc_stride=[1"], "not readable"),
    ]:
        with pytest.raises(DataOptionError, match=message):
            TrainConfig(data="q.json", head=["answer:answers:span"], option=bad).all_tasks()
    for alone in ({"option": ["doc_stride=64"]}, {"text_pair": "hypothesis"}):  # no --head to set
        with pytest.raises(DataOptionError, match=r"--option and --text_pair \(option= / text_pair= in Python\) set"):
            TrainConfig(**alone).all_tasks()
