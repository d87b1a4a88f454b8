"""headkit: inspect, swap, train and ship the heads of pretrained transformer models.

`import headkit` loads only the errors and the logging setup: each public name is imported from its
module when first used (PEP 562), so `headkit --help`, a subprocess or a program that needs one
error class never waits seconds for torch, transformers and scikit-learn to load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from headkit._logging import (
    disable_default_handler,
    install_default_handler,
    set_verbosity,
    set_verbosity_info,
    set_verbosity_warning,
)
from headkit._version import __version__ as __version__
from headkit.errors import (
    CheckpointError,
    DataError,
    FingerprintMismatchError,
    HeadConfigError,
    HeadkitError,
    HeadMismatchError,
    ModelNotFoundError,
    RemoteCodeError,
    UnknownHeadTypeError,
    UsageError,
)

install_default_handler()

# public name -> the module that defines it, imported on first use
_LAZY: dict[str, str] = {
    "inspect_model": "headkit.backbone",
    "load_backbone": "headkit.backbone",
    "load_processor": "headkit.backbone",
    "split_backbone": "headkit.backbone",
    "fingerprint": "headkit.backbone.fingerprint",
    "MultiHeadConfig": "headkit.config",
    "REGISTRY": "headkit.heads",
    "HeadConfig": "headkit.heads",
    "build_head": "headkit.heads",
    "head_config": "headkit.heads",
    "MultiHeadModel": "headkit.model",
    "MultiHeadOutput": "headkit.model",
    "load": "headkit.model",
    "load_heads": "headkit.model",
    "Metrics": "headkit.ship.inference",
    "pipeline": "headkit.ship.pipeline",
    "validate_engines": "headkit.ship.engines",
    "save": "headkit.ship.save",
    "save_heads": "headkit.ship.save",
    "Trainer": "headkit.training.trainer",
    "train": "headkit.training.trainer",
    "TrainResult": "headkit.training.state",
    "TrainConfig": "headkit.training.config",
    "TaskSpec": "headkit.data.taskspec",
    "builtin_dataset": "headkit.data.builtin",
}

if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from headkit.backbone import inspect_model, load_backbone, load_processor, split_backbone
    from headkit.backbone.fingerprint import fingerprint
    from headkit.config import MultiHeadConfig
    from headkit.data.builtin import builtin_dataset
    from headkit.data.taskspec import TaskSpec
    from headkit.heads import REGISTRY, HeadConfig, build_head, head_config
    from headkit.model import MultiHeadModel, MultiHeadOutput, load, load_heads
    from headkit.ship.engines import validate_engines
    from headkit.ship.inference import Metrics
    from headkit.ship.pipeline import pipeline
    from headkit.ship.save import save, save_heads
    from headkit.training.config import TrainConfig
    from headkit.training.state import TrainResult
    from headkit.training.trainer import Trainer, train


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used, and keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later uses are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "REGISTRY",
    "CheckpointError",
    "DataError",
    "FingerprintMismatchError",
    "HeadConfig",
    "HeadConfigError",
    "HeadMismatchError",
    "HeadkitError",
    "Metrics",
    "ModelNotFoundError",
    "MultiHeadConfig",
    "MultiHeadModel",
    "MultiHeadOutput",
    "RemoteCodeError",
    "TaskSpec",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "UnknownHeadTypeError",
    "UsageError",
    "build_head",
    "builtin_dataset",
    "disable_default_handler",
    "fingerprint",
    "head_config",
    "inspect_model",
    "load",
    "load_backbone",
    "load_heads",
    "load_processor",
    "pipeline",
    "save",
    "save_heads",
    "set_verbosity",
    "set_verbosity_info",
    "set_verbosity_warning",
    "split_backbone",
    "train",
    "validate_engines",
]
