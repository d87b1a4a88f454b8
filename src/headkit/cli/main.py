"""The `headkit` command: parse, run one command, and print a `HeadkitError` as one line with exit
code 2 (no traceback); Ctrl-C exits 130."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape

from headkit.cli.commands import COMMANDS, pretrain, train
from headkit.cli.parser import build_parser, normalise_argv
from headkit.data.tasks import TaskSpec
from headkit.errors import HeadkitError
from headkit.training.config import TrainConfig
from headkit.training.pretrain import PretrainConfig


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(normalise_argv(list(sys.argv[1:] if argv is None else argv)))
    name = args.command
    fn = next(f for f in COMMANDS if f.__name__.replace("_", "-") == name)
    kwargs = {k: v for k, v in args[name].as_dict().items() if k != "config" and not k.startswith("__")}
    try:
        if fn in (train, pretrain):
            kwargs["tasks"] = [TaskSpec(**t) for t in kwargs.get("tasks") or []]
            fn((TrainConfig if fn is train else PretrainConfig)(**kwargs))
        else:
            fn(**kwargs)
    except HeadkitError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
