"""Errors a user can act on.

Every failure caused by input (a path, a config, a checkpoint, data) is raised as a
`HeadkitError` subclass whose message says what was wrong, what was expected and how to fix it,
so that the CLI can print one readable line instead of a traceback from deep inside torch.
"""

from __future__ import annotations


class HeadkitError(Exception):
    """Base class: the message is meant for the user, verbatim."""


class ModelNotFoundError(HeadkitError):
    """A model path that does not exist, or holds no `config.json`."""


class RemoteCodeError(HeadkitError):
    """A checkpoint that needs custom code, loaded without `trust_remote_code=True`."""


class UnknownHeadTypeError(HeadkitError):
    """A head type that is not in the registry."""


class HeadConfigError(HeadkitError):
    """A head config with missing or contradictory fields."""


class HeadMismatchError(HeadkitError):
    """A head that does not fit the backbone (input size, vocabulary, modality)."""


class CheckpointError(HeadkitError):
    """A head checkpoint that is missing, corrupt, truncated or inconsistent."""


class FingerprintMismatchError(CheckpointError):
    """Heads saved for one backbone, loaded onto another."""


class DataError(HeadkitError):
    """Input data that cannot be used as given (columns, labels, encodings, sizes)."""


class ExportError(HeadkitError):
    """A model that cannot be exported to the requested target (no exact mapping, no exporter)."""


class OutputError(HeadkitError, OSError):
    """A file that could not be written: disk full, read-only file system, no permission.

    Also an `OSError`, so code that already handles write failures keeps working."""


class MissingExtraError(HeadkitError, ImportError):
    """An optional feature used without the extra that installs it (`pip install 'headkit[EXTRA]'`).

    Also an `ImportError`, so code that probes for optional features with `except ImportError` works."""


class UsageError(HeadkitError):
    """Options that are wrong in themselves, whatever the files, the data and the machine: a value
    out of range, a required option left out, options that contradict each other.

    The CLI exits 2 for these, as argparse does for the errors it finds itself, and 1 for every other
    `HeadkitError` (a missing file, bad data, no GPU: the command was well formed but the run failed)."""


class DataOptionError(DataError, UsageError):
    """A data option (--data, --corpus, --head) that is missing or malformed: a usage error, and a
    `DataError` as it always was, so `except DataError` still catches it."""
