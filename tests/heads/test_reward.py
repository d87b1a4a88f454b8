"""Reward heads: Bradley–Terry loss on (prompt, chosen, rejected) pairs, pair accuracy, the frozen
feature cache for pairs, save/load to identical scores, ONNX, serving, and clear errors."""

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from headkit import DataError, build_head, head_config
from headkit.data.tasks import TaskSpec
from headkit.training.recipe import TrainConfig, train

from conftest import NEGATIVE, POSITIVE, save_decoder, write_csv


def preference_rows(n: int = 32, seed: int = 0) -> list[dict]:
    """People prefer the reply that praises the film."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        rows.append(
            {
                "prompt": "the film was",
                "chosen": f"very {good} and a {good} story",
                "rejected": f"very {bad} and a {bad} story",
            }
        )
    return rows


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_decoder(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("pairs") / "prefs.csv", preference_rows())


def reward_run(model: Path, data: Path, out: Path, **options) -> TrainConfig:
    fields = dict(
        model=str(model),
        tasks=[TaskSpec("reward", str(data), text="prompt", label="chosen,rejected", type="reward")],
        strategy="full",
        epochs=4,
        lr=1e-2,
        backbone_lr=1e-3,
        val_fraction=0.25,
        patience=0,
        output_dir=str(out),
        progress=False,
    )
    return TrainConfig(**{**fields, **options})


def test_the_loss_is_bradley_terry_and_pairs_are_scored_by_batch():
    head = build_head(head_config("reward", input_size=4))
    scores = torch.tensor([2.0, 0.5, -1.0, 1.0, 1.0, 0.0])  # 3 pairs: chosen rows, then rejected rows
    labels = torch.tensor([[1.0], [1.0], [float("nan")]])  # the third pair has no label
    loss, n = head.loss(scores, labels)
    assert n == 2 and float(loss) == pytest.approx(float(-F.logsigmoid(torch.tensor([1.0, -0.5])).mean()))
    first = head.codec.references(labels), head.decode(scores)
    second = head.codec.references(torch.ones(1, 1)), head.decode(torch.tensor([0.0, 1.0]))  # a batch of one pair
    metrics = head.scoring.score(first[1] + second[1], first[0] + second[0])
    assert metrics["pair_accuracy"] == pytest.approx(1 / 3)  # right, wrong, wrong
    with pytest.raises(Exception, match="preference pairs"):
        head.loss(scores[:3], labels)


def test_a_reward_head_learns_the_preference_and_reloads_to_identical_scores(llama, pairs_csv, tmp_path):
    from headkit.ship.predict import load_for_inference, predict_texts

    result = train(reward_run(llama, pairs_csv, tmp_path / "run"))
    assert result.evaluation.scores["reward"]["pair_accuracy"] == 1.0
    # a decoder's reward head reads the last token (auto pooling): score texts shaped like the training pairs
    texts = ["the film was very good and a good story", "the film was very boring and a boring story"]
    first = predict_texts(result.model.eval(), load_for_inference(tmp_path / "run")[1], texts)
    model, tokenizer = load_for_inference(tmp_path / "run")
    again = predict_texts(model, tokenizer, texts)
    assert again == first and again[0]["reward"]["score"] > again[1]["reward"]["score"]


def test_frozen_training_on_cached_pair_features_matches_the_uncached_run(llama, pairs_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADKIT_CACHE", str(tmp_path / "cache"))
    cached = train(reward_run(llama, pairs_csv, tmp_path / "a", strategy="frozen", epochs=3))
    live = train(reward_run(llama, pairs_csv, tmp_path / "b", strategy="frozen", epochs=3, feature_cache=False))
    assert list((tmp_path / "cache" / "features").glob("*.safetensors"))
    for key in ("pair_accuracy", "mean_margin"):
        assert cached.evaluation.scores["reward"][key] == pytest.approx(live.evaluation.scores["reward"][key], abs=1e-4)


def test_a_reward_head_exports_to_onnx_and_serves_scores(llama, pairs_csv, tmp_path):
    from fastapi.testclient import TestClient

    from headkit.ship.export import export_onnx
    from headkit.ship.predict import load_for_inference, predict_texts
    from headkit.ship.serve import load_app

    train(reward_run(llama, pairs_csv, tmp_path / "run", epochs=1))
    texts = ["the film was very good", "the film was very dull and boring"]
    expected = predict_texts(*load_for_inference(tmp_path / "run"), texts)
    export_onnx(tmp_path / "run", tmp_path / "onnx")
    got = predict_texts(*load_for_inference(tmp_path / "onnx", engine="onnx"), texts)
    for g, e in zip(got, expected, strict=True):
        assert g["reward"]["score"] == pytest.approx(e["reward"]["score"], abs=1e-4)
    with TestClient(load_app(tmp_path / "run")) as client:
        response = client.post("/predict", json={"texts": texts})
        assert response.status_code == 200, response.text
        served = [p["reward"]["score"] for p in response.json()["predictions"]]
        assert served == pytest.approx([e["reward"]["score"] for e in expected], abs=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"rejected": "very good and a good story", "chosen": "very good and a good story"},
            "row 2: 'chosen' and 'rejected' are the same text",
        ),
        ({"chosen": "  "}, "row 2: the response in 'chosen' is empty"),
        ({"rejected": ""}, "row 2: the response in 'rejected' is empty"),
    ],
)
def test_bad_pairs_are_refused_by_row(change, message, llama, tmp_path):
    rows = preference_rows(4)
    rows[1].update(change)
    data = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=message):
        train(reward_run(llama, data, tmp_path / "run"))


def test_missing_columns_and_mixed_heads_are_refused(llama, pairs_csv, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "rejected"} for r in preference_rows(4)]
    with pytest.raises(DataError, match="rejected"):
        train(reward_run(llama, write_csv(tmp_path / "no-rejected.csv", rows), tmp_path / "a"))
    mixed = reward_run(llama, pairs_csv, tmp_path / "b")
    mixed.tasks.append(TaskSpec("sentiment", str(pairs_csv), text="prompt", label="chosen"))
    with pytest.raises(DataError, match="preference pairs, which other heads and images cannot share"):
        train(mixed)


def test_the_cli_trains_and_evaluates_a_reward_head(llama, pairs_csv, tmp_path, capsys):
    from headkit.cli.main import main

    run = str(tmp_path / "run")
    train_args = ["train", "--model", str(llama), "--data", str(pairs_csv), "--text_column", "prompt"]
    assert main([*train_args, "--head", "reward:chosen,rejected:reward", "--epochs", "1", "--output_dir", run]) == 0
    capsys.readouterr()
    assert main(["evaluate", run, "--data", str(pairs_csv), "--text_column", "prompt"]) == 0
    assert "pair_accuracy" in capsys.readouterr().out


def test_a_reward_head_scores_in_serving_exactly_what_it_scored_in_training(tiny_text_model, pairs_csv, tmp_path):
    """Training and prediction encode one text, prompt and response joined (as TRL's RewardTrainer
    joins them): a BERT tokenizer's pair template ([SEP], token types) in training only would make
    the served scores differ. A long prompt loses its start, never the words next to the response."""
    from headkit.data.batching import collate, model_inputs
    from headkit.data.pairs import join_pair
    from headkit.data.tasks import prepare
    from headkit.ship.predict import load_for_inference, predict_texts

    result = train(reward_run(tiny_text_model, pairs_csv, tmp_path / "run", epochs=1, max_length=24))
    model, tokenizer = load_for_inference(tmp_path / "run")
    assert tokenizer.truncation_side == "left"  # saved with the run: long texts keep their end
    rows = preference_rows(32)
    texts = [join_pair(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
    assert texts[0] == "the film was " + rows[0]["chosen"]
    served = [p["reward"]["score"] for p in predict_texts(model, tokenizer, texts)]
    pairs = [p["reward"]["score"] for p in predict_texts(model, tokenizer, [(r["prompt"], r["chosen"]) for r in rows])]
    assert pairs == pytest.approx(served[::2], abs=1e-6)  # (prompt, response) tuples are joined the same way
    data = prepare(reward_run(tiny_text_model, pairs_csv, tmp_path / "x").tasks, tokenizer, 24, val_fraction=0.0)
    batch = collate([data.train[i] for i in range(len(rows))], tokenizer.pad_token_id, data.head_types, data.widths)
    with torch.no_grad():  # what training scores: the chosen rows, then the rejected ones
        scored = result.model.eval()(**model_inputs(batch)).outputs["reward"].tolist()
    chosen, rejected = scored[: len(rows)], scored[len(rows) :]
    assert chosen == pytest.approx(served[::2], abs=1e-5) and rejected == pytest.approx(served[1::2], abs=1e-5)
    long_prompt = " ".join(["the film was"] * 20)
    ids = predict_texts(model, tokenizer, [(long_prompt, "very good")])
    cut = tokenizer(join_pair(long_prompt, "very good"), truncation=True, max_length=24)["input_ids"]
    assert tokenizer.decode(cut, skip_special_tokens=True).endswith("the film was very good") and ids[0]["truncated"]


def test_a_response_longer_than_max_length_is_refused_naming_its_row(tiny_text_model):
    """The prompt is cut from its start to fit; a response that cannot fit even alone is an error."""
    from headkit.backbone import load_processor
    from headkit.data.pairs import tokenize_pairs

    rows = preference_rows(3)
    rows[2]["rejected"] = " ".join(["very good"] * 20)
    with pytest.raises(DataError, match=r"prefs.csv, row 3: a response of 42 tokens does not fit in max_length 16"):
        tokenize_pairs(load_processor(tiny_text_model), rows, "prompt", "chosen,rejected", 16, "prefs.csv")
