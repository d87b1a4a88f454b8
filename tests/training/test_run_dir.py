"""A run directory is claimed (config.yaml written, a replaced run's files cleared) only once the
run's inputs check out: a wrong --data, label column or metric leaves --output_dir as it was, and
the corrected rerun is not refused as "already holds a run"."""

import pytest

from headkit import HeadkitError
from headkit.cli.main import main
from headkit.data.tasks import TaskSpec
from headkit.training.recipe import TrainConfig, train

from conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return str(write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", sentiment_rows(24)))


def cli_train(model_dir, data, out, *flags: str) -> int:
    argv = ["train", "--model", str(model_dir), "--data", data, "--output_dir", str(out), "--no_progress"]
    return main([*argv, "--epochs", "1", "--batch_size", "8", *flags])


def run_config(model_dir, data, out, **overrides) -> TrainConfig:
    fields = dict(model=str(model_dir), tasks=[TaskSpec("sentiment", data)], output_dir=str(out), epochs=1)
    fields.update({"batch_size": 8, "strategy": "frozen", "progress": False, **overrides})
    return TrainConfig(**fields)


def test_a_wrong_data_file_leaves_no_claim_and_the_corrected_rerun_trains(tiny_text_model, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train(tiny_text_model, str(tmp_path / "missing.csv"), out, "--head", "sentiment:label") != 0
    assert "missing.csv" in capsys.readouterr().err
    assert not out.exists()
    assert cli_train(tiny_text_model, data_file, out, "--head", "sentiment:label") == 0
    assert (out / "config.yaml").is_file() and (out / "model" / "heads.json").is_file()
    # a real previous run is still protected
    assert cli_train(tiny_text_model, data_file, out, "--head", "sentiment:label") != 0
    assert "already holds a run" in capsys.readouterr().err


def test_a_wrong_label_column_leaves_an_empty_directory_empty(tiny_text_model, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert cli_train(tiny_text_model, data_file, out, "--head", "sentiment:stars") != 0
    assert "stars" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    assert cli_train(tiny_text_model, data_file, out, "--head", "sentiment:label") == 0
    assert (out / "config.yaml").is_file()


def test_an_empty_dataset_leaves_no_claim(tiny_text_model, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(HeadkitError):
        train(run_config(tiny_text_model, str(empty), tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_metric_no_head_reports_is_refused_before_the_claim(tiny_text_model, data_file, tmp_path):
    # checked in the loop's setup, after the model is built: still before config.yaml is written
    with pytest.raises(HeadkitError, match="metric_for_best_model 'sentiment/bleu'"):
        train(run_config(tiny_text_model, data_file, tmp_path / "run", metric_for_best_model="sentiment/bleu"))
    assert not (tmp_path / "run").exists()


def test_a_strategy_the_backbone_cannot_take_is_refused_before_the_claim(tiny_text_model, data_file, tmp_path):
    # what trains is set (and partial:K checked against the layer count) before config.yaml is written
    with pytest.raises(HeadkitError, match="partial:99 but the backbone has"):
        train(run_config(tiny_text_model, data_file, tmp_path / "run", strategy="partial:99"))
    assert not (tmp_path / "run").exists()
    train(run_config(tiny_text_model, data_file, tmp_path / "run", strategy="partial:1"))
    assert "partial:1" in (tmp_path / "run" / "config.yaml").read_text()


def test_overwrite_with_wrong_inputs_keeps_the_previous_run(tiny_text_model, data_file, tmp_path):
    out = tmp_path / "run"
    train(run_config(tiny_text_model, data_file, out))
    saved = (out / "config.yaml").read_text()
    checkpoint = out / "checkpoint" / "state.json"
    assert checkpoint.is_file()
    with pytest.raises(HeadkitError):
        train(run_config(tiny_text_model, str(tmp_path / "missing.csv"), out, overwrite=True, lr=0.5))
    assert (out / "config.yaml").read_text() == saved and checkpoint.is_file()
    with pytest.raises(HeadkitError, match="already holds a run"):
        train(run_config(tiny_text_model, data_file, out, lr=0.5))
    train(run_config(tiny_text_model, data_file, out, overwrite=True, lr=0.5))
    assert "lr: 0.5" in (out / "config.yaml").read_text()


def test_resume_still_checks_the_directory_first(tiny_text_model, data_file, tmp_path):
    with pytest.raises(HeadkitError, match="holds no run to continue"):
        train(run_config(tiny_text_model, data_file, tmp_path / "run", resume=True))
    assert not (tmp_path / "run").exists()
