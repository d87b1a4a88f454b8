"""The `headkit` command: thin wrappers whose flags are generated from their signatures.

Each command is a plain function; jsonargparse turns its parameters and docstring into flags
and help (as litgpt does), so the CLI and the library never drift. Bool parameters become
`--flag` / `--no_flag`. A `HeadkitError` is printed as one line, exit code 2, no traceback.
"""

from __future__ import annotations

import inspect as pyinspect
import os
import sys
from collections.abc import Callable

from docstring_parser import parse as parse_docstring
from jsonargparse import ActionYesNo, ArgumentParser
from rich.console import Console
from rich.table import Table

from headkit.errors import HeadkitError


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit} ({n:,})"
    return f"{n:,}"


def inspect(model: str, json: bool = False, trust_remote_code: bool = False) -> None:
    """Show where a checkpoint's backbone ends and its head starts (reads the config only).

    Args:
        model: a local Hugging Face checkpoint directory, or an alias: minilm, smollm2.
        json: print machine-readable JSON instead of a table.
        trust_remote_code: allow checkpoints that need their own Python code.
    """
    import json as jsonlib

    from headkit.backbone import inspect_model

    report = inspect_model(model, trust_remote_code=trust_remote_code)
    if json:
        print(jsonlib.dumps(report.to_dict(), indent=2))
        return
    table = Table(title=f"{report.architecture}  ({report.model_type})", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    if report.output_layer:
        head = f"{report.head_kind}: {report.output_layer}  {report.output_in}→{report.output_out}"
    else:
        head = "none: a bare backbone (attach task heads with headkit.MultiHeadModel)"
    rows = [
        ("path", report.path),
        ("backbone", f"{report.backbone_class}  (module: {report.backbone_module})"),
        ("head", head),
        ("head modules", ", ".join(f"{n} ({c})" for n, c in report.head_modules.items()) or "-"),
        ("tied embeddings", "yes (head decoder = input embeddings)" if report.tied_embeddings else "no"),
        ("hidden size", str(report.hidden_size)),
        ("layers", str(report.num_layers)),
        ("vocab size", str(report.vocab_size)),
        ("params total", _count(report.params_total)),
        ("params backbone", _count(report.params_backbone)),
        ("params head", _count(report.params_head) + ("  (+ tied decoder)" if report.tied_embeddings else "")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


COMMANDS: list[Callable] = [inspect]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="headkit", description="Inspect, swap, train and ship transformer heads.")
    subcommands = parser.add_subcommands(dest="command")
    for fn in COMMANDS:
        doc = parse_docstring(pyinspect.getdoc(fn) or "")
        sub = ArgumentParser(description=doc.short_description)
        params = pyinspect.signature(fn).parameters
        flags = {n for n, p in params.items() if p.annotation in (bool, "bool")}
        sub.add_function_arguments(fn, skip=flags, as_positional=True)
        helps = {p.arg_name: p.description for p in doc.params}
        for name in sorted(flags):
            sub.add_argument(f"--{name}", action=ActionYesNo, default=params[name].default, help=helps.get(name))
        subcommands.add_subcommand(fn.__name__.replace("_", "-"), sub, help=doc.short_description)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    name = args.command
    fn = next(f for f in COMMANDS if f.__name__.replace("_", "-") == name)
    kwargs = {k: v for k, v in args[name].items() if k != "config" and not k.startswith("__")}
    try:
        fn(**kwargs)
    except HeadkitError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
