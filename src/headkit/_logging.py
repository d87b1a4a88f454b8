"""headkit reports what it does through `logging` (the `headkit` logger), never `print`.

Like transformers, the library gives its logger a handler of its own (stderr, INFO, plain text)
so that script and notebook users see a run's notes and epochs without configuring logging;
`headkit.set_verbosity(logging.WARNING)` quiets it, and the CLI swaps in a rich handler with
--quiet / --verbose. Records do not propagate to the root logger (no double lines); a program
with its own logging setup can remove the handler: `headkit.disable_default_handler()`.
"""

from __future__ import annotations

import logging
import sys

LIBRARY_LOGGER = "headkit"


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (pytest and notebooks swap it)."""

    @property  # type: ignore[override]
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
        logger.setLevel(logging.INFO)
    logger.propagate = False


def disable_default_handler() -> None:
    """Remove headkit's own handler; records then propagate to the application's logging setup."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, "headkit_default", False)]:
        logger.removeHandler(handler)
    logger.propagate = True


def set_verbosity(level: int) -> None:
    """headkit's log level: logging.INFO (default: notes, epochs), WARNING (problems only), DEBUG."""
    logging.getLogger(LIBRARY_LOGGER).setLevel(level)
