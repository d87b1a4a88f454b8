import json
from pathlib import Path

import pytest
import torch

import headkit
from headkit import CheckpointError, HeadkitError
from headkit.cli.main import main
from headkit.data.tasks import TaskSpec
from headkit.model import MultiHeadModel
from headkit.ship.predict import load_for_inference, predict_texts
from headkit.training.recipe import TrainConfig, train

from conftest import NEGATIVE, POSITIVE, sentiment_rows, write_csv


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return str(write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", sentiment_rows(48)))


def config(model_dir, data_file, out, **overrides) -> TrainConfig:
    fields = dict(
        model=str(model_dir),
        tasks=[TaskSpec("sentiment", data_file), TaskSpec("score", data_file, label="score", type="regression")],
        output_dir=str(out),
        epochs=2,
        batch_size=8,
        lr=1e-2,
        backbone_lr=1e-3,
        lora_lr=1e-2,
        val_fraction=0.25,
        patience=0,
        progress=False,
        lp_epochs=1,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def backbone_state(model_dir) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in headkit.load_backbone(model_dir).state_dict().items()}


def changed(before: dict, after: dict, prefix: str = "") -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def test_frozen_trains_heads_only_and_reports(tiny_text_model, data_file, tmp_path, capsys, notes_shown, monkeypatch):
    # an empty feature cache of its own: an earlier test on the same worker may have cached these features
    monkeypatch.setenv("HEADKIT_CACHE", str(tmp_path / "cache"))
    result = train(config(tiny_text_model, data_file, tmp_path / "run", strategy="frozen"))
    assert not changed(backbone_state(tiny_text_model), result.model.backbone.state_dict())
    notes = capsys.readouterr().err  # the library logs its notes (logger "headkit", stderr, at INFO)
    assert "trainable of" in notes and "backbone features for 36 examples: computed and cached" in notes
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["heads"]) == {"sentiment", "score"} and "accuracy" in metrics["heads"]["sentiment"]
    for name in ("loss_curves.png", "confusion_sentiment.png", "model/heads.json", "checkpoint/state.json"):
        assert (run / name).is_file(), name
    # a second run on the same backbone and data (other head settings) reuses the cached features
    train(config(tiny_text_model, data_file, tmp_path / "run2", strategy="frozen", lr=0.05))
    assert "reused from cache" in capsys.readouterr().err


def tagged_rows(n: int = 48) -> list[dict]:
    """Pre-split words with a tag per word: the sentiment word is B-MOOD, the rest O."""
    moods = set(POSITIVE + NEGATIVE)
    words = [r["text"].split() for r in sentiment_rows(n)]
    return [{"tokens": w, "tags": ["B-MOOD" if x in moods else "O" for x in w]} for w in words]


@pytest.mark.parametrize(
    ("strategy", "tagger", "cached"),
    [("frozen", False, True), ("frozen", True, False), ("lp-ft", False, False)],
    ids=["frozen", "frozen-tagger", "lp-ft"],
)
def test_final_scores_equal_a_live_pass_and_a_frozen_run_reads_each_example_once(
    tiny_text_model, data_file, tmp_path, monkeypatch, strategy, tagger, cached
):
    """A frozen run of pooled heads scores its final model on the validation features it cached
    (fp32, as the backbone gives them): its one backbone pass reads each example once. Per-token
    features are cached in bf16 and lp-ft trains the backbone: those runs score live. Either way
    the final scores and losses are those of a pass through the final model."""
    from headkit.adapter import BackboneAdapter
    from headkit.training import finish

    monkeypatch.setenv("HEADKIT_CACHE", str(tmp_path / "cache"))
    read, live = [], {}
    forward_features = BackboneAdapter.forward_features

    def counted(self, inputs, *args, **kwargs):
        read.append(len(inputs["input_ids"]))
        return forward_features(self, inputs, *args, **kwargs)

    evaluate = finish.evaluate

    def final_evaluation(model, data, pad_id, batch_size, cache=None, **kwargs):
        live["cached"] = cache is not None
        counting = len(read)
        live["result"] = evaluate(model, data, pad_id, batch_size, None, **kwargs)  # through the backbone
        del read[counting:]
        return evaluate(model, data, pad_id, batch_size, cache, **kwargs)

    monkeypatch.setattr(BackboneAdapter, "forward_features", counted)
    monkeypatch.setattr(finish, "evaluate", final_evaluation)
    tasks = [TaskSpec("sentiment", data_file), TaskSpec("score", data_file, label="score", type="regression")]
    if tagger:
        tasks.append(TaskSpec("tags", "tagged", type="token-classification"))
    settings = config(tiny_text_model, data_file, tmp_path / "run", strategy=strategy, epochs=3, tasks=tasks)
    result = train(settings, sources={"tagged": tagged_rows()})
    assert live["cached"] == cached
    if cached:
        assert sum(read) == 48  # 36 training + 12 validation examples, once each
    for head, scores in result.metrics["heads"].items():
        assert scores == pytest.approx(live["result"].scores[head], abs=1e-6), head
    assert result.metrics["val_losses"] == pytest.approx(live["result"].losses, abs=1e-6)


def test_partial_freezes_embeddings_and_bottom_layers(tiny_text_model, data_file, tmp_path):
    result = train(config(tiny_text_model, data_file, tmp_path / "run", strategy="partial:1"))
    diff = changed(backbone_state(tiny_text_model), result.model.backbone.state_dict())
    assert not any(k.startswith(("embeddings.", "encoder.layer.0.")) for k in diff)
    assert any(k.startswith("encoder.layer.1.") for k in diff)


def test_full_and_lp_ft_train_the_backbone(tiny_text_model, data_file, tmp_path):
    before = backbone_state(tiny_text_model)
    for strategy in ("full", "lp-ft"):
        result = train(config(tiny_text_model, data_file, tmp_path / strategy, strategy=strategy))
        assert changed(before, result.model.backbone.state_dict(), "encoder.layer.0."), strategy
        phases = {e["phase"] for e in result.metrics["epochs"]}
        assert phases == ({"probe", "finetune"} if strategy == "lp-ft" else {"train"})


def test_lora_keeps_base_weights_and_reloads_identically(tiny_text_model, data_file, tmp_path):
    result = train(config(tiny_text_model, data_file, tmp_path / "run", strategy="lora", lora_r=4))
    base = result.model.backbone.get_base_model().state_dict()
    before = backbone_state(tiny_text_model)
    for name, tensor in before.items():
        assert torch.equal(
            tensor,
            base.get(
                name, base.get(name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias"))
            ),
        ), name
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in base.items())
    assert (tmp_path / "run" / "model" / "adapter" / "adapter_config.json").is_file()
    model, tokenizer = load_for_inference(tmp_path / "run")
    texts = ["the film was very good", "a dull and boring plot"]
    result.model.eval()
    with torch.no_grad():
        expected = predict_texts(result.model, tokenizer, texts)
    assert predict_texts(model, tokenizer, texts) == expected


def interrupted_and_resumed(monkeypatch, cfg: TrainConfig, step: int, checkpointed: int):
    """Train `cfg` until its `step`-th training step (evaluation passes not counted) raises
    KeyboardInterrupt, as a kill would stop it; check that the last checkpoint is the one at
    optimizer step `checkpointed`; then resume it to the end and return the result."""
    calls = {"n": 0}
    original = MultiHeadModel.forward_heads

    def crashing(self, *args, **kwargs):
        calls["n"] += self.training
        if calls["n"] == step and self.training:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MultiHeadModel, "forward_heads", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    state = json.loads((Path(cfg.output_dir) / "checkpoint" / "state.json").read_text())
    assert state["progress"]["global_step"] == checkpointed  # the last checkpoint survived the interruption
    monkeypatch.setattr(MultiHeadModel, "forward_heads", original)
    cfg.resume = True
    return train(cfg)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    expected = b.state_dict()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("strategy", ["frozen", "full"])
def test_interrupted_run_resumes_to_identical_weights(tiny_text_model, data_file, tmp_path, monkeypatch, strategy):
    uninterrupted = train(config(tiny_text_model, data_file, tmp_path / "a", strategy=strategy, save_every=2, epochs=3))
    cfg = config(tiny_text_model, data_file, tmp_path / "b", strategy=strategy, save_every=2, epochs=3)
    resumed = interrupted_and_resumed(monkeypatch, cfg, step=7, checkpointed=6)  # mid-epoch 2, a step past step 6's
    assert_same_weights(resumed.model, uninterrupted.model)
    assert resumed.metrics["heads"] == uninterrupted.metrics["heads"]


def test_a_run_of_min_steps_resumes_between_its_sparser_checkpoints(tiny_text_model, data_file, tmp_path, monkeypatch):
    """min_steps' small epochs checkpoint every few (here every 2 of 4): a run killed after a best
    epoch that no checkpoint holds yet replays it from the one before, to the same model and record."""
    options = {"strategy": "full", "epochs": 2, "min_steps": 20}  # 5 steps an epoch: 4 epochs, checkpoints at 2, 4
    uninterrupted = train(config(tiny_text_model, data_file, tmp_path / "a", **options))
    assert len(uninterrupted.metrics["epochs"]) == 4
    cfg = config(tiny_text_model, data_file, tmp_path / "b", **options)
    # killed in epoch 4: epoch 3 ended (its best.json written), the last checkpoint is epoch 2's (step 10)
    resumed = interrupted_and_resumed(monkeypatch, cfg, step=17, checkpointed=10)
    assert_same_weights(resumed.model, uninterrupted.model)

    def without_times(epochs: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "train_seconds"} for e in epochs]

    assert without_times(resumed.metrics["epochs"]) == without_times(uninterrupted.metrics["epochs"])
    assert resumed.metrics["best_epoch"] == uninterrupted.metrics["best_epoch"]


def test_lp_ft_killed_at_the_phase_boundary_resumes_to_identical_weights(
    tiny_text_model, data_file, tmp_path, monkeypatch
):
    """The last checkpoint is the probe phase's end: the fine-tuning phase starts from its random
    state (dropout masks, batch order), not from wherever the resumed process's generator is."""
    from headkit.training import loop

    options = {"strategy": "lp-ft", "lp_epochs": 2, "epochs": 2}
    uninterrupted = train(config(tiny_text_model, data_file, tmp_path / "a", **options))
    original = loop.train_epoch

    def killed_before_fine_tuning(run, current, state):
        if current.phase.name != "probe":
            raise KeyboardInterrupt
        return original(run, current, state)

    monkeypatch.setattr(loop, "train_epoch", killed_before_fine_tuning)
    cfg = config(tiny_text_model, data_file, tmp_path / "b", **options)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(loop, "train_epoch", original)
    cfg.resume = True
    torch.manual_seed(1234)  # a resumed process's generator is wherever its own start left it
    resumed = train(cfg)
    assert_same_weights(resumed.model, uninterrupted.model)
    assert resumed.metrics["heads"] == uninterrupted.metrics["heads"]


def test_resume_with_a_different_config_is_refused(tiny_text_model, data_file, tmp_path):
    train(config(tiny_text_model, data_file, tmp_path / "run", epochs=1))
    with pytest.raises(CheckpointError, match=r"different configuration \(lr: was 0.01, now 0.5"):
        train(config(tiny_text_model, data_file, tmp_path / "run", epochs=1, lr=0.5, resume=True))
    # a setting the saved run left at its default reads as that default, not None
    with pytest.raises(CheckpointError, match=r"min_steps: was 0, now 40"):
        train(config(tiny_text_model, data_file, tmp_path / "run", epochs=1, min_steps=40, resume=True))
    with pytest.raises(HeadkitError, match=r"already holds a run; pass --resume"):
        train(config(tiny_text_model, data_file, tmp_path / "run", epochs=1))


def test_multihead_from_one_dataset_trains_both_heads(tiny_text_model, data_file, tmp_path):
    result = train(config(tiny_text_model, data_file, tmp_path / "run", epochs=4))
    epochs = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 4 and all({"sentiment", "score"} <= set(e["val_losses"]) for e in epochs)
    assert result.evaluation.scores["score"]["mse"] >= 0


def test_uncertainty_weighting_trains_log_variances(tiny_text_model, data_file, tmp_path):
    result = train(config(tiny_text_model, data_file, tmp_path / "run", weighting="uncertainty", epochs=3))
    values = [p.detach().item() for p in result.model.weighting.log_vars.values()]
    assert len(values) == 2 and any(abs(v) > 1e-4 for v in values)


def cli_train(model_dir, data_file, out, *flags: str) -> int:
    """`headkit train --model M --data D --output_dir O --no_progress FLAGS...` through the CLI."""
    return main(
        ["train", "--model", str(model_dir), "--data", data_file, "--output_dir", str(out), "--no_progress", *flags]
    )


def test_cli_train_predict_and_bad_flags(tiny_text_model, data_file, tmp_path, capsys):
    run = str(tmp_path / "cli")
    assert (
        cli_train(
            tiny_text_model,
            data_file,
            run,
            "--head",
            "sentiment:label",
            "--head",
            "score:score:regression",
            "--epochs",
            "1",
        )
        == 0
    )
    assert "validation" in capsys.readouterr().out
    assert main(["predict", run, "--text", "a very good film", "--text", "boring"]) == 0
    printed = capsys.readouterr().out
    assert "sentiment:" in printed and "score:" in printed
    assert cli_train(tiny_text_model, data_file, tmp_path / "bad", "--head", "sentiment") == 2
    assert "should look like NAME:COLUMN" in capsys.readouterr().err
    assert cli_train(tiny_text_model, data_file, tmp_path / "bad2", "--head", "s:label", "--strategy", "half") == 2
    assert "--strategy 'half': choose one of frozen, full, lora, lp-ft, fewshot, partial:K" in capsys.readouterr().err


def test_predict_marks_texts_longer_than_the_model_reads(tiny_text_model, data_file, tmp_path, capsys):
    train(config(tiny_text_model, data_file, tmp_path / "run", epochs=1))
    model, tokenizer = load_for_inference(tmp_path / "run")
    long_text = " ".join(["the film was very good"] * 40)  # 200 words; the tiny model reads 64 positions
    short, long = predict_texts(model, tokenizer, ["a good film", long_text])
    assert "truncated" not in short and long["truncated"] is True
    assert long["sentiment"]["label"] in ("neg", "pos")
    (tmp_path / "in.csv").write_text(f"text\na good film\n{long_text}\n")
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "in.csv")]) == 0
    assert "1 texts were longer than the model reads" in capsys.readouterr().out
    rows = (tmp_path / "in.predictions.jsonl").read_text().splitlines()
    assert len(rows) == 2 and '"truncated": true' in rows[1]


def test_max_length_beyond_the_model_is_capped_not_a_crash(tiny_text_model, tmp_path, capsys):
    rows = sentiment_rows(24)
    rows[0]["text"] = " ".join(["the film was very good"] * 40)  # 200 words > 64 positions
    data = str(write_csv(tmp_path / "long.csv", rows))
    result = train(config(tiny_text_model, data, tmp_path / "run", epochs=1, max_length=200, strategy="full"))
    printed = capsys.readouterr().err
    assert "max_length 200 is more than" in printed and "using 64" in printed
    assert result.metrics["train_examples"] + result.metrics["val_examples"] == 24


def test_cli_bad_invocations_are_one_line_errors(tmp_path, capsys):
    cases = [  # usage errors exit 2, a run that fails exits 1 (argparse's convention)
        (["evaluate", str(tmp_path)], "evaluate needs labelled data", 2),
        (["evaluate", str(tmp_path), "--data", "x.csv", "--head", "sentiment"], "should look like NAME:COLUMN", 2),
        (["predict", str(tmp_path)], "nothing to predict", 2),
        (["predict", str(tmp_path), "--text", "hi"], "neither a training run", 1),
        (["pretrain", "--corpus", "x.txt", "--strategy", "frozen"], "supports --strategy full or lora", 2),
    ]
    for argv, message, code in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_a_resume_on_data_that_changed_since_the_checkpoint_is_refused(tiny_text_model, tmp_path, monkeypatch):
    from headkit.errors import CheckpointError

    data = write_csv(tmp_path / "reviews.csv", sentiment_rows(48))
    cfg = config(tiny_text_model, str(data), tmp_path / "run", strategy="full", epochs=3)
    original = MultiHeadModel.forward_heads
    calls = {"n": 0}

    def crashing(self, *args, **kwargs):
        calls["n"] += self.training
        if calls["n"] == 7 and self.training:  # mid-epoch 2, after epoch 1's checkpoint
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MultiHeadModel, "forward_heads", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(MultiHeadModel, "forward_heads", original)
    write_csv(data, sentiment_rows(64))  # 16 rows added while the run was stopped
    cfg.resume = True
    with pytest.raises(CheckpointError, match=r"written for 36 training and 12 validation examples; the data gives 48"):
        train(cfg)
    write_csv(data, sentiment_rows(48))  # the data it was written for: resumes
    assert len(train(cfg).metrics["epochs"]) == 3
