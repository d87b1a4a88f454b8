"""A training process killed with SIGKILL at a random moment resumes to the same result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headkit.io import recover_dir

from conftest import sentiment_rows, write_csv


def train_command(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "headkit",
        "train",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--head",
        "sentiment:label",
        "--head",
        "score:score:regression",
        "--strategy",
        "full",
        "--epochs",
        "3",
        "--batch_size",
        "4",
        "--save_every",
        "1",
        "--patience",
        "0",
        "--output_dir",
        str(out),
        "--no_progress",
        *extra,
    ]


def step_of(run: Path) -> int:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["progress"]["global_step"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize("kill_after_step", [4, 9])
def test_sigkill_mid_training_then_resume_matches_uninterrupted(tiny_text_model, tmp_path, kill_after_step):
    data = write_csv(tmp_path / "d.csv", sentiment_rows(40))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    subprocess.run(train_command(tiny_text_model, data, reference), env=env, check=True, capture_output=True)

    run = tmp_path / "killed"
    process = subprocess.Popen(
        train_command(tiny_text_model, data, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while step_of(run) < kill_after_step and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # no handler can run: whatever was half-written stays so
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "model").exists()

    resumed = subprocess.run(
        train_command(tiny_text_model, data, run, "--resume"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("heads.safetensors", "backbone/model.safetensors"):
        assert (run / "model" / name).read_bytes() == (reference / "model" / name).read_bytes(), name
    assert (
        json.loads((run / "metrics.json").read_text())["heads"]
        == json.loads((reference / "metrics.json").read_text())["heads"]
    )


def test_checkpoint_set_aside_by_a_killed_swap_is_recovered(tmp_path):
    old = tmp_path / ".checkpoint.old-123"
    old.mkdir()
    (old / "state.json").write_text("{}")
    recover_dir(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "state.json").is_file() and not old.exists()
