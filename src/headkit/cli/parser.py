"""The argument parser, generated from the command functions' signatures (jsonargparse, as litgpt
does). Bool parameters become `--flag` / `--no_flag`; list parameters take several values."""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import json
import typing
from collections.abc import Callable

from docstring_parser import parse as parse_docstring
from jsonargparse import ActionYesNo, ArgumentParser

from headkit.cli.commands import COMMANDS


def _add_arguments(parser: ArgumentParser, fn: Callable) -> None:
    """Flags from a function signature (or, for a dataclass parameter, from its fields)."""
    doc = parse_docstring(pyinspect.getdoc(fn) or "")
    params = pyinspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    target = next((hints[n] for n in params if dataclasses.is_dataclass(hints.get(n))), None)
    if target is not None:
        fields = {f.name: f for f in dataclasses.fields(target)}
        flags = {n for n, f in fields.items() if f.type in (bool, "bool")}
        parser.add_class_arguments(target, nested_key=None, as_group=False, skip=flags)
        parser.add_argument("--config", action="config", help="a YAML file with any of these options")
        helps = {p.arg_name: p.description for p in parse_docstring(target.__doc__ or "").params}
        defaults = {n: fields[n].default for n in flags}
    else:
        flags = {n for n, p in params.items() if p.annotation in (bool, "bool")}
        parser.add_function_arguments(fn, skip=flags, as_positional=True)
        helps = {p.arg_name: p.description for p in doc.params}
        defaults = {n: params[n].default for n in flags}
    for name in sorted(flags):
        parser.add_argument(f"--{name}", action=ActionYesNo, default=defaults[name], help=helps.get(name))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="headkit", description="Inspect, swap, train and ship transformer heads.")
    subcommands = parser.add_subcommands(dest="command")
    for fn in COMMANDS:
        doc = parse_docstring(pyinspect.getdoc(fn) or "")
        sub = ArgumentParser(description=doc.short_description)
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


def normalise_argv(argv: list[str]) -> list[str]:
    """Make list options behave as users expect of a CLI.

    `--head a --head b` and `--corpus x.txt y.txt` become jsonargparse's `--head+ a ...`, and
    `fill-mask MODEL "text 1" "text 2"` packs its texts into one list argument.
    """
    list_flags = multi_value_flags(next((a for a in argv if not a.startswith("-")), ""))
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
        takes_value = {"--top_k", "--config"}
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
