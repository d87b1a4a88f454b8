"""The `headkit` command: parse, run one command, and print a `HeadkitError` (or a bad flag) as one
line, without a traceback. Exit codes follow argparse's convention: 2 for a usage error (an unknown
flag, a bad value, a missing or contradictory option: `UsageError`), 1 for a run that failed (any
other `HeadkitError`: a missing file, bad data, no GPU); Ctrl-C exits 130 with what it means for
that command.

The library reports through `logging` (logger `headkit`); here it gets a rich handler on stderr,
at INFO, or WARNING with --quiet, DEBUG with --verbose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from argparse import ArgumentError
from collections.abc import Iterator

import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from headkit._logging import CurrentStderrHandler
from headkit.cli.commands import COMMANDS
from headkit.cli.parser import build_parser, explain, normalise_argv
from headkit.data.taskspec import TaskSpec
from headkit.errors import HeadkitError, UsageError
from headkit.training.config import PretrainConfig, SFTConfig, TrainConfig

INTERRUPTED = {
    "train": "interrupted: the last checkpoint is intact; continue with the same command and --resume",
    "pretrain": "interrupted: the last checkpoint is intact; continue with the same command and --resume",
    "sft": "interrupted: the last checkpoint is intact; continue with the same command and --resume",
    "predict": "interrupted: no output file was written (it is written whole or not at all)",
    "evaluate": "interrupted: nothing was scored or written",
    "export": "interrupted: the output directory was not changed (exports are written whole or not at all)",
    "serve": "server stopped",
    "advise": "interrupted: with --run, continue the run with the train command it printed and --resume",
}

# commands that take one run config (flags and YAML from its fields; --print_config resolves it)
RUN_CONFIGS: dict[str, type[TrainConfig]] = {"train": TrainConfig, "pretrain": PretrainConfig, "sft": SFTConfig}


@contextlib.contextmanager
def cli_logging(argv: list[str]) -> Iterator[None]:
    """headkit's log records on stderr (through rich on a terminal): INFO by default, -q: WARNING,
    -v: DEBUG; the library's own handler and level are put back afterwards (main may run in a
    process that goes on: tests, notebooks)."""
    level = logging.WARNING if {"-q", "--quiet"} & set(argv) else logging.INFO
    level = logging.DEBUG if {"-v", "--verbose"} & set(argv) else level
    logger = logging.getLogger("headkit")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(
            console=Console(stderr=True),
            show_time=False,
            show_path=level == logging.DEBUG,
            show_level=level == logging.DEBUG,
            markup=False,
        )
    else:  # a pipe or a CI log: whole lines, never wrapped at 80 columns, greppable
        handler = CurrentStderrHandler()
        debug = level == logging.DEBUG
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if debug else "%(message)s"))
    for old in saved[0]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        for old in saved[0]:
            logger.addHandler(old)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


USAGE_ERROR = 2  # argparse's code for a command line it cannot accept
RUN_ERROR = 1  # the command was well formed, the run failed


def _error(message: str, code: int) -> int:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return code


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    with cli_logging(argv):
        return run_command(argv)


def run_command(argv: list[str]) -> int:
    parser = build_parser()
    # train/pretrain --print_config prints the config as it will run: the strategy's defaults filled
    # in (jsonargparse's own would print them unset)
    print_config = any(a.split("=")[0] in ("--print_config", "--print-config") for a in argv)
    if print_config and set(RUN_CONFIGS) & set(argv):
        argv = [a for a in argv if a.split("=")[0] not in ("--print_config", "--print-config")]
    else:
        print_config = False
    try:
        args = parser.parse_args(normalise_argv(argv))
    except ArgumentError as e:
        command = next((a for a in argv if not a.startswith("-")), "")
        hint = f" (headkit {command} --help lists the options)" if command else " (headkit --help)"
        return _error(explain(e) + hint, USAGE_ERROR)
    name = args.command
    fn = next(f for f in COMMANDS if f.__name__.replace("_", "-") == name)
    kwargs = {k: v for k, v in args[name].as_dict().items() if k != "config" and not k.startswith("__")}
    try:
        if name in RUN_CONFIGS:
            kwargs["tasks"] = [TaskSpec(**t) for t in kwargs.get("tasks") or []]
            config = RUN_CONFIGS[name](**kwargs)
            if print_config:
                print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), end="")
                return 0
            fn(config)
        else:
            fn(**kwargs)
    except UsageError as e:
        return _error(str(e), USAGE_ERROR)
    except HeadkitError as e:
        return _error(str(e), RUN_ERROR)
    except KeyboardInterrupt:
        print(INTERRUPTED.get(name, "interrupted"), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
