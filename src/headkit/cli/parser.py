"""The argument parser, generated from the command functions' signatures (jsonargparse, as litgpt
does). Bool parameters become `--flag` / `--no_flag`; list parameters take several values;
`Literal` parameters list their choices in --help; every `--snake_case` flag is also accepted as
`--kebab-case` (as HfArgumentParser does), and renamed flags keep their old spelling for a while."""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import json
import logging
import re
import typing
from argparse import ArgumentError
from collections.abc import Callable

from docstring_parser import parse as parse_docstring
from jsonargparse import ActionYesNo, ArgumentParser

from headkit._version import __version__
from headkit.cli.commands import COMMANDS

logger = logging.getLogger(__name__)

# command -> old flag -> new flag: one meaning per flag name across commands (`--text` is always
# literal texts, the column is `--text_column`; `--head` is always NAME:COLUMN)
RENAMED = {
    "train": {"--text": "--text_column"},
    "pretrain": {"--text": "--text_column"},
    "evaluate": {"--text": "--text_column"},
    "advise": {"--text": "--text_column"},
    "export": {"--head": "--only_head"},
}
GLOBAL_FLAGS = ("--quiet", "-q", "--verbose", "-v")
# argparse's convention, kept by cli/main.py (UsageError -> 2, any other HeadkitError -> 1)
EXIT_CODES = (
    "Exit status: 0 done; 1 the run failed (a missing file, bad data, no such device); 2 a usage error "
    "(an unknown flag, a bad value, a missing or contradictory option); 130 interrupted (Ctrl-C)."
)


def _add_arguments(parser: ArgumentParser, fn: Callable) -> None:
    """Flags from a function signature (or, for a dataclass parameter, from its fields)."""
    doc = parse_docstring(pyinspect.getdoc(fn) or "")
    params = pyinspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    target = next((hints[n] for n in params if dataclasses.is_dataclass(hints.get(n))), None)
    if target is not None:
        fields = {f.name: f for f in dataclasses.fields(target)}
        flags = {n for n, f in fields.items() if f.type in (bool, "bool")}
        parser.add_class_arguments(
            target, nested_key=None, as_group=False, skip=set(flags)
        )  # jsonargparse: set[str | int]
        parser.add_argument("--config", action="config", help="a YAML file with any of these options")
        helps = {p.arg_name: p.description for p in parse_docstring(target.__doc__ or "").params}
        defaults = {n: fields[n].default for n in flags}
    else:
        flags = {n for n, p in params.items() if p.annotation in (bool, "bool")}
        parser.add_function_arguments(fn, skip=set(flags), as_positional=True)
        helps = {p.arg_name: p.description for p in doc.params}
        defaults = {n: params[n].default for n in flags}
    for name in sorted(flags):
        parser.add_argument(f"--{name}", action=ActionYesNo, default=defaults[name], help=helps.get(name))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="headkit",
        description="Inspect, swap, train and ship transformer heads. Flags are spelled --snake_case or --kebab-case.",
        epilog=EXIT_CODES,
        version=__version__,
        exit_on_error=False,
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors (no progress notes)")
    parser.add_argument("--verbose", "-v", action="store_true", help="also debug messages")
    subcommands = parser.add_subcommands(dest="command")
    for fn in COMMANDS:
        doc = parse_docstring(pyinspect.getdoc(fn) or "")
        sub = ArgumentParser(description=doc.short_description, exit_on_error=False)
        _add_arguments(sub, fn)
        subcommands.add_subcommand(fn.__name__.replace("_", "-"), sub, help=doc.short_description)
    return parser


def multi_value_flags(command: str) -> set[str]:
    """The flags of `command` that take several values: its list[str] parameters (or config fields).

    Derived from the signature, not listed by hand: `--text` is a list of texts for `predict`
    but one column name for `train`, `evaluate` and `advise`.
    """
    fn = next((f for f in COMMANDS if f.__name__.replace("_", "-") == command), None)
    if fn is None:
        return set()
    hints = typing.get_type_hints(fn)
    config = next((h for h in hints.values() if dataclasses.is_dataclass(h)), None)
    hints = typing.get_type_hints(config) if config is not None else hints
    return {f"--{name}" for name, hint in hints.items() if list[str] in (hint, *typing.get_args(hint))}


def _spelled(arg: str, command: str) -> str:
    """`--output-dir` -> `--output_dir` (the value after `=` untouched); an old flag name -> its new one."""
    if not arg.startswith("--") or arg == "--":
        return arg
    name, eq, value = arg.partition("=")
    name = "--" + name[2:].replace("-", "_")
    new = RENAMED.get(command, {}).get(name)
    if new:
        logger.warning("%s %s is deprecated: use %s (same meaning)", command, name, new)
        name = new
    return name + eq + value


def normalise_argv(argv: list[str]) -> list[str]:
    """Make options behave as users expect of a CLI.

    Global flags (`--quiet`, `--verbose`) go first wherever they were typed; dashed flags become
    underscored and renamed flags their new name; `--head a --head b` and `--corpus x.txt y.txt`
    become jsonargparse's `--head+ a ...`, and `fill-mask MODEL "text 1" "text 2"` packs its
    texts into one list argument.
    """
    command = next((a for a in argv if not a.startswith("-")), "")
    argv = [a for a in argv if a in GLOBAL_FLAGS] + [_spelled(a, command) for a in argv if a not in GLOBAL_FLAGS]
    list_flags = multi_value_flags(command)
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in list_flags:
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                out += [arg + "+", argv[i]]
                i += 1
            continue
        out.append(arg)
        i += 1
    if out[:1] == ["fill-mask"]:
        takes_value = {"--top_k", "--config", "--device", "--dtype"}
        positionals, options, j = [], [], 1
        while j < len(out):
            options += [out[j]] if out[j].startswith("--") else []
            if out[j] in takes_value and j + 1 < len(out):
                options.append(out[j + 1])
                j += 1
            elif not out[j].startswith("--"):
                positionals.append(out[j])
            j += 1
        packed = [positionals[0], json.dumps(positionals[1:])] if len(positionals) > 1 else positionals
        out = ["fill-mask", *packed, *options]
    return out


def explain(error: ArgumentError | str) -> str:
    """jsonargparse's message for a bad value, in one line that names the flag and its choices."""
    message = str(error)
    key = re.search(r'Parser key "([^"]+)"', message)
    given = re.search(r"(?:Got value|Given value): (.*)", message)
    choices = [c for group in re.findall(r"Literal\[([^\]]*)\]", message) for c in re.findall(r"'([^']*)'", group)]
    if key and choices:
        pattern = re.search(r"Not of type ([\w:]+)", message)
        listed = ", ".join(dict.fromkeys(choices + ([pattern.group(1).rstrip(":")] if pattern else [])))
        value = f" {given.group(1).strip()!r}" if given else ""
        return f"--{key.group(1)}{value}: choose one of {listed}"
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
