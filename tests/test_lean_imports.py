"""`import headkit` and `headkit --help` load none of the heavy libraries; every public name still
resolves. Each check runs in a fresh interpreter: this test process has long since imported torch.

The start-up times themselves are measured by benchmarks/import_time.py (timings are no test
on a shared machine); what keeps them low is that these modules stay out, which is checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import headkit

# each takes from a tenth of a second (seqeval) to several seconds (torch, transformers, sklearn)
HEAVY = (
    "torch",
    "transformers",
    "sklearn",
    "scipy",
    "matplotlib",
    "seqeval",
    "rouge_score",
    "pandas",
    "datasets",
    "peft",
    "accelerate",
)


def loaded_after(code: str) -> list[str]:
    """The heavy top-level modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    return [m for m in HEAVY if m in modules]


def test_import_headkit_loads_no_heavy_module():
    assert loaded_after("import headkit") == []


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["--version"]])
def test_cli_help_and_version_load_no_heavy_module(argv):
    code = (
        "import contextlib, io\nfrom headkit.cli.main import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main({argv!r})"
    )
    assert loaded_after(code) == []


def test_the_run_configs_load_no_heavy_module():
    """TrainConfig, PretrainConfig and SFTConfig (what --help and a YAML config are built from)."""
    code = "from headkit.training.config import PretrainConfig, SFTConfig, TrainConfig, check_ranges\n"
    code += "check_ranges(TrainConfig(head=['a:b'], data='x.csv')); SFTConfig(); PretrainConfig()"
    assert loaded_after(code) == []


def test_loading_a_model_does_not_load_the_metrics_libraries():
    """scikit-learn and seqeval score a run; predicting with a saved model needs neither."""
    assert not {"sklearn", "seqeval", "matplotlib", "rouge_score"} & set(loaded_after("import headkit.model"))


def test_every_public_name_resolves():
    for name in headkit.__all__:
        assert getattr(headkit, name) is not None, name
    assert set(headkit.__all__) <= set(dir(headkit))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = headkit.no_such_name


def test_public_names_import_the_usual_ways_in_a_fresh_interpreter():
    code = (
        "from headkit import *\n"
        "import headkit\n"
        "from headkit import MultiHeadModel, Trainer, TrainConfig, TaskSpec, load, pipeline\n"
        "from headkit.model import MultiHeadModel as M\n"
        "from headkit.data.tasks import TaskSpec as T\n"
        "assert MultiHeadModel is M is headkit.MultiHeadModel and TaskSpec is T is headkit.TaskSpec\n"
        "assert all(n in globals() for n in headkit.__all__)\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
