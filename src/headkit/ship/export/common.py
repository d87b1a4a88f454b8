"""What both export targets share: the saved model with its adapter merged, probe inputs for the
parity and quantisation checks, the output-directory guard, the result, and the steps bar."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from headkit.errors import ExportError, ModelNotFoundError
from headkit.model import MultiHeadModel, load
from headkit.ship.predict import resolve_model_dir
from headkit.ship.save import BACKBONE_DIR


@dataclass
class ExportResult:
    path: Path
    target: str  # the class written, e.g. "BertForSequenceClassification", or "backbone + heads"
    message: str
    # ONNX with quantize: per head, the largest |int8 output - fp32 output| on the export's probe inputs
    int8_error: dict[str, float] = field(default_factory=dict)
    # an export into the run's export-onnx/: the engines checked on its validation split (engines.json)
    engines: dict[str, Any] | None = None


def load_merged(run: str | os.PathLike) -> tuple[MultiHeadModel, Any, Path]:
    """The saved model with any LoRA adapter merged into the backbone (eval mode), its processor, its dir."""
    from headkit.backbone import load_processor

    directory = resolve_model_dir(run)
    model = load(directory)  # the heads are checked against the backbone (and adapter) they were saved with
    if hasattr(model.backbone, "merge_and_unload"):  # a LoRA adapter becomes plain weights
        model.backbone = model.backbone.merge_and_unload()  # type: ignore[misc]  # MultiHeadModel.__setattr__ hands it to the adapter
    try:
        processor = load_processor(directory / BACKBONE_DIR)
    except ModelNotFoundError:
        processor = None  # a backbone saved without its tokenizer/image processor still exports
    return model, processor, directory


def probe_inputs(model: MultiHeadModel, processor) -> dict[str, Tensor]:
    """Two inputs of different lengths (one padded), whatever the modality, for parity checks."""
    config = model.backbone.config
    main = model.backbone.main_input_name
    if main == "pixel_values":
        return {"pixel_values": torch.randn(2, *_pixels_shape(config, processor))}
    if main == "input_values":
        mask = torch.ones(2, 16000, dtype=torch.long)
        mask[1, 12000:] = 0
        return {"input_values": torch.randn(2, 16000), "attention_mask": mask}
    if processor is None:
        raise ExportError("the save has no tokenizer, so the export cannot be checked on text; save it with one")
    texts = ["A short probe.", "A longer probe sentence, so that the first one is padded in the batch."]
    enc = processor(texts, padding=True, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _pixels_shape(config, processor) -> tuple[int, int, int]:
    """(C, H, W) of what the image processor makes (a CNN reads any size, so only the processor
    knows what predict will feed); the config's image_size when there is no processor."""
    from headkit.data.images import is_image_processor

    if processor is not None and is_image_processor(processor):
        from PIL import Image

        return tuple(processor(Image.new("RGB", (64, 64)), return_tensors="pt")["pixel_values"].shape[1:])
    size = getattr(config, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    return getattr(config, "num_channels", 3), size, size


def check_output_dir(output_dir: Path, source: Path, overwrite: bool) -> None:
    """Refuse to write over the model being exported, or over a non-empty directory unless asked."""
    if output_dir.resolve() == source.resolve() or source.resolve().is_relative_to(output_dir.resolve()):
        raise ExportError(f"the export directory {output_dir} would replace the model being exported; choose another")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ExportError(f"{output_dir} already exists and is not empty; pass --overwrite to replace it")


def steps_bar(description: str, names: list[str], progress: bool) -> tqdm:
    """A bar over an export's named steps (loading, tracing, quantising, writing): the slow ones
    take tens of seconds, and a user should see which one is running."""
    bar = tqdm(total=len(names), desc=description, unit="step", disable=not progress, leave=False)
    bar.step_names = iter(names)
    bar.set_postfix_str(next(bar.step_names))
    return bar


def next_step(bar: tqdm) -> None:
    """Mark the current step done and name the next one on the bar."""
    bar.update(1)
    bar.set_postfix_str(next(bar.step_names, "done"))
