"""headkit: inspect, swap, train and ship the heads of pretrained transformer models."""

from typing import Any

from headkit._logging import (
    disable_default_handler,
    install_default_handler,
    set_verbosity,
    set_verbosity_info,
    set_verbosity_warning,
)
from headkit._version import __version__ as __version__
from headkit.backbone import inspect_model, load_backbone, load_processor, split_backbone
from headkit.backbone.fingerprint import fingerprint
from headkit.config import MultiHeadConfig
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
)
from headkit.heads import REGISTRY, HeadConfig, build_head, head_config
from headkit.model import MultiHeadModel, MultiHeadOutput, load, load_heads
from headkit.ship.inference import Metrics
from headkit.ship.pipeline import pipeline
from headkit.ship.save import save, save_heads

install_default_handler()

# Training pulls in accelerate and the data pipeline: imported when first named, not by `import headkit`.
_LAZY = {
    "Trainer": "headkit.training.trainer",
    "train": "headkit.training.trainer",
    "TrainResult": "headkit.training.state",
    "TrainConfig": "headkit.training.config",
    "TaskSpec": "headkit.data.tasks",
    "builtin_dataset": "headkit.data.builtin",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headkit' has no attribute {name!r}")


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
]
