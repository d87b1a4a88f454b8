"""headkit: inspect, swap, train and ship the heads of pretrained transformer models."""

from headkit._logging import disable_default_handler, install_default_handler, set_verbosity
from headkit.backbone import inspect_model, load_backbone, load_processor, split_backbone
from headkit.backbone.fingerprint import fingerprint
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
from headkit.ship.pipeline import pipeline
from headkit.ship.save import save, save_heads

__version__ = "0.1.0"

install_default_handler()

__all__ = [
    "REGISTRY",
    "CheckpointError",
    "DataError",
    "FingerprintMismatchError",
    "HeadConfig",
    "HeadConfigError",
    "HeadMismatchError",
    "HeadkitError",
    "ModelNotFoundError",
    "MultiHeadModel",
    "MultiHeadOutput",
    "RemoteCodeError",
    "UnknownHeadTypeError",
    "build_head",
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
    "split_backbone",
]
