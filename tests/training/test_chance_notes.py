"""A run whose validation score ends at chance level says so (issue #42): at small data a recipe's
defaults can train a head that learned nothing, and nothing else would tell the user."""

from __future__ import annotations

import json

import pytest
import torch

import headkit
from headkit.cli.main import main
from headkit.training.evaluate import Evaluation
from headkit.training.report import chance_notes, probe_notes

from conftest import sentiment_rows, write_csv

HEADS = {
    "sentiment": {"type": "classification", "labels": ["neg", "pos"]},
    "genres": {"type": "multilabel", "labels": ["comedy", "drama"]},
    "tags": {"type": "token-classification", "labels": ["O", "B-PER", "I-PER"]},
    "pos": {"type": "token-classification", "labels": ["NOUN", "VERB"]},
    "stars": {"type": "regression", "labels": ["stars"]},
}


@pytest.fixture(scope="module")
def model(tiny_text_model):
    torch.manual_seed(0)
    return headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=HEADS)


def test_chance_is_the_best_answer_blind_to_the_input(model):
    chance = {name: head.scoring.chance for name, head in model.heads.items()}
    # always "pos" (3 of 4): its F1 2 * 0.75 / 1.75, "neg"'s 0, averaged over the head's 2 classes
    assert chance["sentiment"](["pos", "neg", "pos", None, "pos"]) == pytest.approx(
        {"accuracy": 0.75, "f1_macro": 6 / 7 / 2}
    )
    # the k most frequent labels for every row, the best k: both (TP 5, FP 1: 10/11) beat {drama} (6/8)
    assert chance["genres"]([["comedy", "drama"], ["drama"], ["drama", "comedy"], None]) == pytest.approx(
        {"f1_micro": 10 / 11}
    )
    # one label in 9 of 10 rows, another in 1: {a} alone (18/20) beats both (20/30)
    assert chance["genres"]([["comedy"]] * 9 + [["drama"]]) == pytest.approx({"f1_micro": 18 / 20})
    assert chance["tags"]([["B-PER", "O"], None]) == {"f1": 0.0}  # every word O: no entity found
    assert chance["tags"]([["O", "O"]]) == {}  # no entity to find: every answer scores 0
    # always NOUN: its F1 2 * 0.75 / 1.75, VERB's 0, averaged over the two tags
    assert chance["pos"]([["NOUN", "NOUN", "VERB"], ["NOUN", None]]) == pytest.approx({"f1": 6 / 7 / 2})
    assert chance["stars"]([{"stars": 1.0}, {"stars": 3.0}]) == {"r2": 0.0}  # R² of the mean
    assert chance["sentiment"]([None]) == {}


def test_only_heads_at_chance_on_every_telling_metric_get_a_note(model):
    references = {
        "sentiment": ["pos", "pos", "neg", "pos"],  # blind: accuracy 0.75, f1_macro 3/7
        "genres": [["drama"], ["comedy"]],
        "tags": [["B-PER", "O"]],
        "pos": [["NOUN", "VERB"]],
        "stars": [{"stars": 1.0}, {"stars": 2.0}],
    }
    scores = {
        "sentiment": {"accuracy": 0.76, "f1_macro": 0.44},
        "genres": {"f1_micro": 0.9},
        "tags": {"f1": 0.011},
        "pos": {"f1": 0.9},
        "stars": {"r2": -0.3},  # worse than the mean
    }
    evaluation = Evaluation(scores, {}, {n: [] for n in HEADS}, references)
    notes = chance_notes(model, evaluation)
    assert [n.split("'")[1] for n in notes] == ["sentiment", "tags", "stars"]
    assert "validation accuracy 0.7600 (blind: 0.7500), f1_macro 0.4400 (blind: 0.4286)" in notes[0]
    # a head that learned: its macro F1 far above chance, though its accuracy is not
    evaluation.scores["sentiment"]["f1_macro"] = 0.7
    assert "sentiment" not in " ".join(chance_notes(model, evaluation))
    # 99 of 100 in one class: accuracy cannot tell (chance + margin >= 1), macro F1 does
    evaluation.references["sentiment"] = ["pos"] * 99 + ["neg"]
    evaluation.scores["sentiment"] = {"accuracy": 1.0, "f1_macro": 1.0}
    assert "sentiment" not in " ".join(chance_notes(model, evaluation))
    # validation sentences without an entity: nothing to tell by
    evaluation.references["tags"] = [["O", "O"]]
    assert "tags" not in " ".join(chance_notes(model, evaluation))
    assert chance_notes(model, None) == []


def test_a_run_that_learned_nothing_says_so_in_its_summary_and_metrics(tiny_text_model, tmp_path, capsys):
    rows = [{"text": "the same words every time", "label": r["label"]} for r in sentiment_rows(40)]
    data = write_csv(tmp_path / "same.csv", rows)
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_text_model), "--data", str(data), "--head", "sentiment:label",
                 "--epochs", "1", "--output_dir", str(run), "--no_progress"]) == 0  # fmt: skip
    assert "head 'sentiment' ends at chance level" in capsys.readouterr().out.replace("\n", " ")
    notes = json.loads((run / "metrics.json").read_text())["notes"]
    assert len(notes) == 1 and notes[0].startswith("head 'sentiment' ends at chance level: validation accuracy 0.")


def test_the_note_suggests_only_strategies_the_head_can_train_with(tiny_text_model):
    heads = {"embed": {"type": "embedding"}, "sentiment": {"type": "classification", "labels": ["neg", "pos"]}}
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=heads)
    references = {
        "embed": [("anchor", 2, 1), ("anchor", 2, 2), ("positive", -2, 1), ("positive", -2, 2)],  # blind: 0.5, 0.75
        "sentiment": ["pos", "neg"],
    }
    scores = {"embed": {"recall@1": 0.5, "mrr@10": 0.75}, "sentiment": {"accuracy": 0.5, "f1_macro": 1 / 3}}
    notes = chance_notes(model, Evaluation(scores, {}, {n: [] for n in heads}, references))
    assert len(notes) == 2
    assert "--strategy frozen or lora" in notes[0] and "fewshot" not in notes[0]  # fewshot has no embedding heads
    assert "--strategy fewshot or frozen" in notes[1]


def test_a_fine_tuning_that_never_beat_its_probe_says_so():
    epochs = [
        {"phase": "probe", "epoch": 1, "objective": 0.70},
        {"phase": "probe", "epoch": 2, "objective": 0.75},
        {"phase": "finetune", "epoch": 3, "objective": 0.72},
        {"phase": "finetune", "epoch": 4, "objective": 0.74},
    ]
    (note,) = probe_notes(epochs, best_epoch=2)
    assert note.startswith("fine-tuning never beat the linear probe: validation objective 0.7500 at probe epoch 2")
    assert "at most 0.7400 (epoch 4) in the 2 fine-tuned epochs" in note
    assert probe_notes(epochs, best_epoch=4) == []  # fine-tuning won
    assert probe_notes(epochs[:2], best_epoch=2) == []  # nothing fine-tuned (e.g. stopped in the probe)
    assert probe_notes([{"phase": "train", "epoch": 1, "objective": 0.7}], best_epoch=1) == []  # no probe
    assert probe_notes([], best_epoch=None) == []


def test_an_lp_ft_run_whose_fine_tuning_wrecks_the_backbone_keeps_and_names_the_probe(tiny_text_model):
    heads = {"sentiment": {"type": "classification", "label": "label", "pooling": "mean"}}
    result = headkit.train(tiny_text_model, heads, train_dataset=sentiment_rows(96), strategy="lp-ft", lp_epochs=30,
                           epochs=2, backbone_lr=30.0, lr=3e-2, val_fraction=0.25, seed=0, progress=False)  # fmt: skip
    records = {r["epoch"]: r for r in result.metrics["epochs"]}
    probe = max(r["objective"] for r in records.values() if r["phase"] == "probe")
    assert probe > 0.6 > max(r["objective"] for r in records.values() if r["phase"] != "probe")  # the rig holds
    best = records[result.metrics["best_epoch"]]
    assert best["phase"] == "probe"
    # the model kept is the probe's: scored again at the end, it gives that epoch's scores
    assert result.metrics["heads"]["sentiment"] == pytest.approx(best["scores"]["sentiment"])
    assert any(n.startswith("fine-tuning never beat the linear probe") for n in result.metrics["notes"])
