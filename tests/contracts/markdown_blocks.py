"""The code blocks of the README and the docs pages, and the checks that keep them true.

A page's ```python blocks run in order in one namespace (a later block may use an earlier one's
names). A block that cannot run offline or on a CPU says so on the line above its fence,
`<!-- no-run: why -->` (invisible on the rendered page); it is still compiled. Every line of a
```bash / ```console block that starts with `headkit ` is parsed by the real CLI parser, so a flag
the CLI no longer has cannot live on in the prose. ```yaml blocks that are training configs
(`<!-- train-config -->` above the fence) are parsed as `headkit train --config` would read them.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(
    r"(?:^<!--\s*(?P<marker>[\w-]+)(?::\s*(?P<why>.*?))?\s*-->\n)?"  # an optional marker line
    r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
    flags=re.S | re.M,
)
SHELL = ("bash", "console", "sh", "shell")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, body (dedented), line number and the marker above it, if any."""

    lang: str
    body: str
    line: int
    marker: str | None = None
    why: str | None = None


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        line = text.count("\n", 0, match.start("lang")) + 1
        found.append(Block(match["lang"], body, line, match["marker"], match["why"]))
    return found


def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang == "python"]


def cli_commands(path: Path) -> list[str]:
    """Every `headkit ...` line of a file's shell blocks (continuations joined, comments cut, `$ ` prompts dropped)."""
    lines = []
    for block in blocks(path):
        if block.lang in SHELL:
            for line in block.body.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("headkit ") and "..." not in line:
                    lines.append(line.split(" #")[0].strip())
    return lines


@functools.cache
def _parser() -> Any:
    """The CLI's parser, built once (building it inspects every command's signature)."""
    from headkit.cli.parser import build_parser

    return build_parser()


def check_cli_command(command: str) -> None:
    """Parse `command` with the CLI's own parser: an unknown flag, a bad value or an old flag name fails."""
    from headkit.cli.parser import RENAMED, normalise_argv

    argv = shlex.split(command)[1:]
    if argv[-1:] in (["--help"], ["--version"]):
        return
    # `headkit.cli.main` takes --print_config off before parsing (it prints the config with the
    # strategy's defaults filled in); jsonargparse's own would print and exit
    argv = [a for a in argv if a.split("=")[0] not in ("--print_config", "--print-config")]
    old = set(RENAMED.get(argv[0], {})) & {a.split("=")[0].replace("-", "_").replace("__", "--") for a in argv}
    assert not old, f"uses the old spelling {old}: {command}"
    _parser().parse_args(normalise_argv(argv))  # raises ArgumentError on an unknown flag or a bad value


def run_python_blocks(path: Path, selected: list[Block] | None = None) -> None:
    """Run a page's Python blocks in order in one namespace; `no-run` blocks are only compiled."""
    namespace: dict = {"__name__": "__docs__"}
    for block in python_blocks(path) if selected is None else selected:
        code = compile(block.body, f"{path.relative_to(ROOT)}:{block.line}", "exec")
        if block.marker != "no-run":
            exec(code, namespace)
