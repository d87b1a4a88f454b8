"""headkit reports what it does through `logging` (the `headkit` logger), never `print`.

Like transformers, the library gives its logger a handler of its own (stderr, plain text) at
WARNING: importing headkit in a notebook or a service adds no chatter, while problems still show
without any logging setup. `headkit.set_verbosity(logging.INFO)` shows a run's notes and epochs
(`headkit.set_verbosity_info()` for short); the CLI swaps in a rich handler at INFO, with
--quiet / --verbose. Records do not propagate to the root logger (no double lines); a program
with its own logging setup can remove the handler: `headkit.disable_default_handler()`.
"""

from __future__ import annotations

import logging
import sys

LIBRARY_LOGGER = "headkit"


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (pytest and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def install_default_handler() -> None:
    logger = logging.getLogger(LIBRARY_LOGGER)
    if any(getattr(h, "headkit_default", False) for h in logger.handlers):
        return
    handler = CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.headkit_default = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    logger.propagate = False


def disable_default_handler() -> None:
    """Remove headkit's own handler; records then propagate to the application's logging setup."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, "headkit_default", False)]:
        logger.removeHandler(handler)
    logger.propagate = True


def set_verbosity(level: int) -> None:
    """headkit's log level: logging.WARNING (the default: problems only), INFO (a run's notes and
    epochs), DEBUG."""
    logging.getLogger(LIBRARY_LOGGER).setLevel(level)


def set_verbosity_info() -> None:
    """Show a run's notes and epochs (transformers' spelling)."""
    set_verbosity(logging.INFO)


def set_verbosity_warning() -> None:
    """Problems only: the default."""
    set_verbosity(logging.WARNING)
