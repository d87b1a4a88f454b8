"""The model card a save writes (README.md): valid Hub metadata with the base model's hub id, the
strategy, hyperparameters, examples and metrics per head, library versions, and a usage snippet
that runs as written against the saved folder."""

import contextlib
import io
import json
import platform
import re
import shutil

import pytest
import torch
import transformers
import yaml
from huggingface_hub import ModelCard

import headkit
from headkit.backbone.resolve import hub_id, resolve_model
from headkit.cli.main import main
from headkit.heads import head_class
from headkit.ship.card import NOT_RECORDED, PLACEHOLDER, model_card
from headkit.ship.save import TRAINING

from conftest import sentiment_rows, tiny_config, write_csv


@pytest.fixture(scope="module")
def run(tiny_text_model, tmp_path_factory):
    """A CLI run with two heads on two files: sentiment labelled on 40 rows, score on 24 others."""
    out = tmp_path_factory.mktemp("card") / "run"
    reviews = write_csv(out.parent / "reviews.csv", sentiment_rows(40))
    scores = write_csv(out.parent / "scores.csv", sentiment_rows(24, seed=1))
    tasks = [
        {"name": "sentiment", "data": str(reviews)},
        {"name": "score", "data": str(scores), "label": "score", "type": "regression"},
    ]
    config = out.parent / "config.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_text_model), "tasks": tasks}))
    args = ["train", "--config", str(config), "--epochs", "2", "--lr", "0.05", "--max_length", "32",
            "--val_fraction", "0.25", "--seed", "3", "--output_dir", str(out), "--no_progress"]  # fmt: skip
    assert main(args) == 0
    return out


def card_of(folder) -> str:
    return (folder / "README.md").read_text(encoding="utf-8")


def facts(card: str) -> dict[str, str]:
    """The card's `- key: value` lines and its hyperparameters table."""
    return {**dict(re.findall(r"^- ([^:\n]+): (.*)$", card, flags=re.M)), **dict(table(card, "Hyperparameters:"))}


def table(card: str, after: str) -> list[list[str]]:
    """The rows of the first markdown table after the line `after` (header and rule dropped)."""
    lines = card.split(after, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def run_snippet(card: str, folder) -> str:
    """Execute the card's first python block with the save's folder where it says PATH_OR_REPO_ID; its output."""
    code = re.search(r"```python\n(.*?)```", card, flags=re.S)[1]
    assert "headkit." not in code.replace("headkit.MultiHeadModel", "") and "from headkit" not in code
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace(PLACEHOLDER, str(folder)), "card snippet", "exec"), {"__name__": "__card__"})
    return printed.getvalue()


def test_the_card_is_valid_hub_metadata_without_a_local_path(run):
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "headkit" and "text-classification" in card.data.tags
    assert card.data.base_model is None  # trained on a local folder with no hub id: left out, not a path
    assert str(run.parent) not in yaml.safe_dump(card.data.to_dict())


def test_the_card_lists_strategy_hyperparameters_for_it_and_versions(run):
    card = card_of(run / "model")
    listed = facts(card)
    assert listed["strategy"] == "frozen" and listed["epochs"] == "2" and listed["lr"] == "0.05"
    assert listed["seed"] == "3" and listed["weighting"] == "static"
    assert listed["max_length (tokens read; predict and serve use it too)"] == "32"
    assert listed["batch_size"] == "32" and listed["val_fraction"] == "0.25"
    assert not {"backbone_lr", "lora_r", "lora_alpha", "lp_epochs"} & set(listed)  # a frozen backbone reads none
    versions = dict(table(card, "## Versions"))
    assert versions == {
        "headkit": headkit.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def test_the_card_counts_examples_and_scores_per_head(run):
    card = card_of(run / "model")
    metrics = json.loads((run / "metrics.json").read_text())
    counts = {head: (int(train), int(val)) for head, train, val in table(card, "Examples with a label, per head")}
    assert counts == {"sentiment": (30, 10), "score": (18, 6)}  # each file's 75/25 split; the other head unlabelled
    assert sum(sum(c) for c in counts.values()) == metrics["train_examples"] + metrics["val_examples"]
    rows = table(card, "## Metrics")
    model = headkit.MultiHeadModel.from_pretrained(run / "model")
    for name, head in model.heads.items():
        listed = [metric for head_name, metric, _ in rows if head_name == name]
        assert listed[: len(head.scoring.metrics)] == list(head.scoring.metrics)  # the head's own order
        for head_name, metric, value in rows:
            if head_name == name:
                assert float(value) == pytest.approx(metrics["heads"][name][metric], abs=1e-4)


def test_the_usage_snippet_runs_against_the_saved_folder(run):
    printed = run_snippet(card_of(run / "model"), run / "model")
    assert "'sentiment': {'label': " in printed and "'score': " in printed


def test_a_trained_run_saved_again_keeps_its_training_facts_and_metrics(run, tmp_path):
    model = headkit.MultiHeadModel.from_pretrained(run / "model")
    assert model.training_facts["strategy"] == "frozen"  # restored from the save's training.json
    model.save_pretrained(tmp_path / "again")
    before, after = card_of(run / "model"), card_of(tmp_path / "again")
    assert facts(after) == facts(before) and facts(after)["lr"] == "0.05"
    for section in ("## Metrics", "Examples with a label, per head"):
        assert table(after, section) == table(before, section) and table(after, section)
    # and once more from that save: the facts travel with every save, not only the run's
    headkit.MultiHeadModel.from_pretrained(tmp_path / "again").save_pretrained(tmp_path / "third")
    assert table(card_of(tmp_path / "third"), "## Metrics") == table(before, "## Metrics")


def test_the_model_train_returns_carries_its_facts_and_a_further_run_replaces_them(tiny_text_model, tmp_path):
    rows = sentiment_rows(32)
    fast = dict(epochs=1, batch_size=8, lr=1e-2, patience=0, progress=False, val_fraction=0.25)
    model = headkit.train(tiny_text_model, {"sentiment": "label"}, train_dataset=rows, seed=5, **fast).model
    model.save_pretrained(tmp_path / "first")
    card = card_of(tmp_path / "first")
    assert facts(card)["strategy"] == "frozen" and facts(card)["seed"] == "5"
    assert {head for head, *_ in table(card, "## Metrics")} == {"sentiment"}
    assert dict((h, int(n)) for h, n, _ in table(card, "Examples with a label, per head")) == {"sentiment": 24}
    loaded = headkit.MultiHeadModel.from_pretrained(tmp_path / "first")
    again = headkit.train(loaded, {"sentiment": "label"}, train_dataset=rows, seed=9, strategy="full", **fast).model
    again.save_pretrained(tmp_path / "second")
    listed = facts(card_of(tmp_path / "second"))
    assert listed["strategy"] == "full" and listed["seed"] == "9" and "backbone_lr" in listed  # the new run's


def test_an_old_save_without_training_facts_loads_and_says_they_were_not_recorded(run, tmp_path):
    shutil.copytree(run / "model", tmp_path / "old")
    (tmp_path / "old" / TRAINING).unlink()  # as saves made before they kept them
    model = headkit.MultiHeadModel.from_pretrained(tmp_path / "old")
    assert model.training_facts is None
    model.save_pretrained(tmp_path / "resaved")
    card = card_of(tmp_path / "resaved")
    assert NOT_RECORDED in card and "## Metrics" not in card and "Hyperparameters:" not in card
    listed = dict(re.findall(r"^- ([^:\n]+): (.*)$", card, flags=re.M))
    assert "strategy" not in listed and "best epoch" not in listed
    assert listed["max_length (tokens read; predict and serve use it too)"] == "32"  # the model's own
    assert not (tmp_path / "resaved" / TRAINING).exists()


def test_a_damaged_training_file_is_left_out_with_a_warning(run, tmp_path, caplog):
    shutil.copytree(run / "model", tmp_path / "damaged")
    (tmp_path / "damaged" / TRAINING).write_text("{not json")
    model = headkit.MultiHeadModel.from_pretrained(tmp_path / "damaged")
    assert model.training_facts is None and "training facts are left out" in caplog.text


def test_a_lora_run_lists_its_lora_settings_and_peft(tiny_text_model, tmp_path):
    data = write_csv(tmp_path / "d.csv", sentiment_rows(24))
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_text_model), "--data", str(data), "--head", "sentiment:label",
            "--strategy", "lora", "--lora_r", "4", "--lora_alpha", "8", "--epochs", "1", "--output_dir", str(out),
            "--no_progress"]  # fmt: skip
    assert main(args) == 0
    card = card_of(out / "model")
    listed = facts(card)
    assert (listed["strategy"], listed["lora_r"], listed["lora_alpha"]) == ("lora", "4", "8") and "lora_lr" in listed
    assert "backbone_lr" not in listed  # the base weights stay frozen under LoRA
    assert dict(table(card, "## Versions"))["peft"] == __import__("peft").__version__
    assert "'sentiment': {'label': " in run_snippet(card, out / "model")


def test_the_default_backbone_is_named_by_its_hub_id(tiny_text_model):
    heads = {"sentiment": {"type": "classification", "labels": ["neg", "pos"]}}
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads)
    front = yaml.safe_load(model_card(model, {"base_model": "minilm"}).split("---")[1])
    assert front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    # saved by hand, the backbone is named by the folder the alias resolved to
    minilm = headkit.MultiHeadModel.from_pretrained("minilm", heads)
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in model_card(minilm)


def test_hub_ids_of_model_names(tmp_path):
    assert hub_id("org/name@v1.0") == "org/name" and hub_id("org/name:model.Q4_0.gguf") == "org/name"
    assert hub_id("/cache/models--org--name/snapshots/" + "0" * 40) == "org/name"
    assert hub_id(str(resolve_model("minilm").path)) == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("efficientnet-lite0") is None  # its weights are on no hub repository
    (tmp_path / "org").mkdir()
    assert hub_id(str(tmp_path)) is None and hub_id(None) is None


def test_an_image_model_snippet_predicts_on_an_image(tmp_path):
    torch.manual_seed(0)
    transformers.ViTModel(tiny_config("vit")).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    heads = {"kind": {"type": "classification", "labels": ["cat", "dog"]}}
    model = headkit.MultiHeadModel.from_pretrained(tmp_path / "vit", heads)
    model.save_pretrained(tmp_path / "saved")
    printed = run_snippet(card_of(tmp_path / "saved"), tmp_path / "saved")
    assert "'kind': {'label': " in printed


def test_a_head_counts_its_labelled_examples():
    classes = head_class("classification").codec
    assert classes.count_labelled([0, -100, 1, -100]) == 2
    values = head_class("regression").codec
    assert values.count_labelled([[1.0], [float("nan")], [0.5]]) == 2
    tags = head_class("token-classification").codec
    assert tags.count_labelled([[0, 1], None, [2]]) == 2
    assert head_class("causal-lm").codec.count_labelled([[-100, 5], [-100, -100, 7]]) == 2  # every example
