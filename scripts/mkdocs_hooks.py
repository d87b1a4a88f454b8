"""MkDocs hook: the CLI reference page is generated from headkit's real argument parser at build time.

`docs/reference/cli.md` holds the prose and a `<!-- cli-reference -->` marker; this hook replaces the
marker with one section per subcommand (its description, usage and a table of its flags with type,
default and help), read from `headkit.cli.parser.build_parser()` — the parser `headkit` itself runs.
A flag added, renamed or removed in the code changes the page on the next build; nothing is
copied by hand. The hook imports headkit from this checkout's `src/` so the page describes the tree
being built, not whichever headkit the environment happens to have installed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- cli-reference -->"
TYPE_AND_DEFAULT = re.compile(
    r"\s*\((?P<required>required, )?type: (?P<type>.*?)(?:, default: (?P<default>.*))?\)$", re.S
)


def _cell(text: str) -> str:
    """Table-safe text: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _rows(parser: Any) -> list[str]:
    formatter = parser._get_formatter()
    rows = ["| flag | type | default | what it does |", "|---|---|---|---|"]
    for action in parser._actions:
        if not action.help or action.help == "==SUPPRESS==" or action.dest == "help" or action.dest.endswith(".help"):
            continue
        flags = [f for f in action.option_strings if not f.endswith("+")] or [action.dest.upper()]
        text = formatter._expand_help(action)
        match = TYPE_AND_DEFAULT.search(text)
        kind = default = ""
        if match:
            text = text[: match.start()]
            kind = match["type"]
            default = "required" if match["required"] else (match["default"] or "")
        if action.choices and not kind:
            kind = " \\| ".join(map(str, action.choices))
        flag = " / ".join(f"`{f}`" for f in flags)
        kind = f"`{_cell(kind)}`" if kind else ""
        default = f"`{_cell(default)}`" if default else ""
        rows.append(f"| {flag} | {kind} | {default} | {_cell(text)} |")
    return rows


def cli_reference() -> str:
    """Markdown for every subcommand of `headkit`, in the order `headkit --help` lists them."""
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: a fixed width, a stable page
    from headkit.cli.parser import build_parser

    parser = build_parser()
    out = ["## `headkit`", "", "```text", parser.format_usage().strip(), "```", "", *_rows(parser), ""]
    for name, sub in parser._subcommands_action._name_parser_map.items():
        usage = sub.format_usage().strip().replace("usage: headkit [options] ", "usage: headkit ")
        out += [f"## `headkit {name}`", "", sub.description or "", "", "```text", usage, "```", "", *_rows(sub), ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
