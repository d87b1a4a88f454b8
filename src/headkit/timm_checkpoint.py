"""timm networks as backbones: a timm model plus a weights file becomes a transformers checkpoint.

transformers already wraps timm (`TimmWrapperModel`: `forward_features` gives the last hidden
state, and the model is built with `num_classes=0`, which is timm's `reset_classifier(0)`). So
headkit writes a timm network once as such a checkpoint directory — config.json, safetensors
weights, an image processor — and from then on loads, saves, fingerprints, exports and serves
it like any other Hugging Face backbone. Online users can also name timm's hub repositories
(`timm/resnet18.a1_in1k`) directly; this module is for weights in a local file:

    timm_checkpoint("efficientnet_lite0", "efficientnet-lite0-57934424.pth")  # -> a cached directory
    --model timm:efficientnet_lite0:path/to/weights.pth   (CLI; without a file: random weights)

A weights file may use other key names than timm (efficientnet_pytorch's `_blocks.0._bn1` for
timm's `blocks.0.0.bn1`): when the names differ but every tensor's shape matches timm's, in order,
the tensors are matched by position, and the log says so. Anything else is a clear error.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from headkit._fs import cache_dir, staged_dir
from headkit.errors import CheckpointError, HeadkitError
from headkit.extras import require

logger = logging.getLogger(__name__)

PREFIX = "timm:"


def _import_timm():
    require("timm", "A timm backbone")
    try:
        import timm
    except (ImportError, RuntimeError) as e:  # a torchvision built for another torch fails as a RuntimeError
        raise HeadkitError(
            f"timm is installed but does not import ({e}); its torchvision must be the build made for this "
            f"torch ({torch.__version__}): pip install 'headkit[timm]' with a matching torchvision"
        ) from e
    return timm


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt/.bin (loaded with weights_only=True, never unpickling code) or
    .safetensors file; training checkpoints that nest it under 'state_dict' or 'model' are unwrapped."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(path)  # a checkpoint may nest the state dict (below)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds (pickle, zip, unsafe globals)
        raise CheckpointError(f"{path} is not a readable weights file ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (name -> tensor)")
    return state


def match_weights(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], str]:
    """`state` renamed to the keys of `target`: by name where the names agree, else by position
    where every shape agrees in order. Returns the renamed dict and how it was matched."""
    if state.keys() == target.keys():
        wrong = [k for k in target if state[k].shape != target[k].shape]
        if not wrong:
            return state, "by name"
        k = wrong[0]
        raise CheckpointError(
            f"{source}: {len(wrong)} tensors do not fit the network, e.g. '{k}' is {tuple(state[k].shape)}, "
            f"the network's is {tuple(target[k].shape)}"
        )
    if len(state) != len(target):
        raise CheckpointError(
            f"{source} holds {len(state)} tensors with other names than the network's {len(target)}; "
            "they cannot be matched (is it the weights of another architecture?)"
        )
    for i, ((name, value), (key, expected)) in enumerate(zip(state.items(), target.items(), strict=True)):
        if value.shape != expected.shape:
            raise CheckpointError(
                f"{source}: tensor {i} '{name}' is {tuple(value.shape)}, but the network's tensor {i} '{key}' is "
                f"{tuple(expected.shape)}; the names differ and the order does not match either"
            )
    renamed = {key: value for key, value in zip(target, state.values(), strict=True)}
    return renamed, f"by position ({len(renamed)} tensors, names differ, every shape agrees)"


def _cache_key(architecture: str, weights: Path | None) -> str:
    stat = f"{weights.resolve()}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights else "random"
    return hashlib.sha256(f"{architecture}|{stat}".encode()).hexdigest()[:16]


def timm_checkpoint(
    architecture: str, weights: str | os.PathLike | None = None, directory: str | os.PathLike | None = None
) -> Path:
    """A transformers checkpoint directory of timm's `architecture` with `weights` (random without),
    written once (cached under headkit's cache unless `directory` is given) and reused."""
    weights = Path(weights).expanduser() if weights else None
    target = (
        Path(directory) if directory else cache_dir() / "timm" / f"{architecture}-{_cache_key(architecture, weights)}"
    )
    if (target / "config.json").is_file():
        return target
    timm = _import_timm()
    try:
        network = timm.create_model(architecture, pretrained=False)
    except RuntimeError as e:
        raise HeadkitError(f"timm {timm.__version__} has no model '{architecture}' ({e})") from e
    if weights is not None:
        state, how = match_weights(read_weights(weights), network.state_dict(), str(weights))
        network.load_state_dict(state)
        logger.info(f"loaded {weights.name} into timm's {architecture} {how}")
    else:
        logger.warning(f"note: timm's {architecture} has random weights (no weights file given)")
    with staged_dir(target) as staging:
        _save_wrapped(network, architecture, staging)
    return target


def _save_wrapped(network: torch.nn.Module, architecture: str, directory: Path) -> None:
    """Save as transformers' `TimmWrapperForImageClassification` (the network's own classifier
    kept, so the checkpoint is the whole pretrained model) plus a plain resize-and-normalise image
    processor at the network's input size (no centre crop, so boxes stay where they are)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, ViTImageProcessor

    num_classes = getattr(network, "num_classes", 0)
    # num_labels reaches PretrainedConfig through **kwargs, which TimmWrapperConfig's signature does not list
    config = TimmWrapperConfig(architecture=architecture, num_labels=num_classes or 1)  # type: ignore[call-arg]
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        config.id2label = {i: info.index_to_description(i) for i in range(1000)}
        config.label2id = None
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(network.state_dict())
    model.save_pretrained(directory, safe_serialization=True)
    data: dict[str, Any] = network.pretrained_cfg  # type: ignore[assignment]  # a timm model's dict
    _, height, width = data.get("input_size", (3, 224, 224))
    ViTImageProcessor(
        size={"height": height, "width": width},
        image_mean=list(data.get("mean", (0.485, 0.456, 0.406))),
        image_std=list(data.get("std", (0.229, 0.224, 0.225))),
        resample=3,  # bicubic, as timm's evaluation transforms
    ).save_pretrained(directory)


def parse_spec(text: str) -> tuple[str, str | None]:
    """'timm:NAME' or 'timm:NAME:WEIGHTS' -> (NAME, WEIGHTS or None)."""
    name, _, weights = text[len(PREFIX) :].partition(":")
    if not name:
        raise HeadkitError(f"'{text}': name a timm architecture, e.g. timm:resnet18 or timm:resnet18:weights.pth")
    return name, weights or None
