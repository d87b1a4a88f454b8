"""A training process killed with SIGKILL mid-epoch or mid-save resumes to the same result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headkit._fs import recover_dir

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


@pytest.fixture(scope="module")
def uninterrupted_run(tiny_text_model, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The data, the reference run trained without interruption, and the environment. One run
    serves every test here: the same command on the same data, so the same bytes (a run is
    deterministic; the kill tests compare each resumed run with it byte for byte)."""
    root = tmp_path_factory.mktemp("faults")
    data = write_csv(root / "d.csv", sentiment_rows(40))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = root / "reference"
    subprocess.run(train_command(tiny_text_model, data, reference), env=env, check=True, capture_output=True)
    return data, reference, env


def resume_and_compare(model_dir: Path, data: Path, run: Path, reference: Path, env: dict):
    """Resume the killed run; it must end byte-identical to the reference, with equal metrics."""
    resumed = subprocess.run(train_command(model_dir, data, run, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("heads/sentiment/model.safetensors", "backbone/model.safetensors"):
        assert (run / "model" / name).read_bytes() == (reference / "model" / name).read_bytes(), name
    assert (
        json.loads((run / "metrics.json").read_text())["heads"]
        == json.loads((reference / "metrics.json").read_text())["heads"]
    )
    return resumed


@pytest.mark.parametrize("kill_after_step", [4, 9])
def test_sigkill_mid_training_then_resume_matches_uninterrupted(
    tiny_text_model, uninterrupted_run, tmp_path, kill_after_step
):
    data, reference, env = uninterrupted_run

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

    resume_and_compare(tiny_text_model, data, run, reference, env)


def test_checkpoint_set_aside_by_a_killed_swap_is_recovered(tmp_path):
    old = tmp_path / ".checkpoint.old-123"
    old.mkdir()
    (old / "state.json").write_text("{}")
    recover_dir(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "state.json").is_file() and not old.exists()


# Runs `headkit train` with the checkpoint writer patched to SIGKILL the process in the middle of
# its N-th save: after the tensors file is written but before state.json ("files"), or after the
# old checkpoint was set aside but before the new one was renamed into place ("rename").
KILL_IN_SAVE = """
import os, signal, sys
import headkit._fs as fs
import headkit.training.checkpoint as ck

at, mode, calls = int(os.environ["KILL_AT_SAVE"]), os.environ["KILL_MODE"], {"n": 0}
write_json, replace_dir = ck.atomic_write_json, fs.replace_dir

def dying_write_json(path, obj):
    calls["n"] += 1
    if mode == "files" and calls["n"] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return write_json(path, obj)

def dying_replace_dir(staging, directory):
    if mode == "rename" and calls["n"] == at and directory.exists():
        os.replace(directory, directory.with_name(f".{directory.name}.old-{os.getpid()}"))
        os.kill(os.getpid(), signal.SIGKILL)
    return replace_dir(staging, directory)

ck.atomic_write_json, fs.replace_dir = dying_write_json, dying_replace_dir  # staged_dir swaps with fs.replace_dir
from headkit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("mode", ["files", "rename"])
def test_sigkill_mid_save_keeps_the_last_good_checkpoint_and_resumes_identically(
    tiny_text_model, uninterrupted_run, tmp_path, mode
):
    data, reference, env = uninterrupted_run

    run = tmp_path / "killed"
    args = train_command(tiny_text_model, data, run)[3:]  # drop "python -m headkit"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_IN_SAVE, *args],
        env={**env, "KILL_AT_SAVE": "6", "KILL_MODE": mode},
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "model").exists()

    resumed = resume_and_compare(tiny_text_model, data, run, reference, env)
    assert "resumed from" in resumed.stderr  # from the last good checkpoint, not from scratch
