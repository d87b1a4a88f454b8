"""Image inputs: read the image files a data file names and preprocess them with the backbone's
image processor. Each image's (width, height) goes to the heads that read image positions (box
heads normalise pixel boxes by it); heads whose `crop_ok` is False switch the centre crop off.
Grayscale, palette and RGBA images are converted to RGB, with a note saying how many.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from headkit.data.files import column_values
from headkit.errors import DataError

logger = logging.getLogger(__name__)


def is_image_processor(processor: Any) -> bool:
    from transformers.image_processing_base import ImageProcessingMixin

    return isinstance(processor, ImageProcessingMixin)


def open_image(path: str | Path, where: str):
    """An RGB PIL image, or a DataError naming the row and the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{where}: image {path} not found")
    try:
        with Image.open(path) as image:
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB"), image.mode
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{where}: {path} is not a readable image ({e})") from e


def load_images(rows: list[dict[str, Any]], column: str, source: str) -> tuple[list, list[tuple[int, int]]]:
    """The images a data file names (paths relative to the file), and their (width, height)."""
    base = Path(source).parent if Path(source).is_file() else Path(".")
    images, converted = [], 0
    for number, value in enumerate(column_values(rows, column, source), start=1):
        if not isinstance(value, str) or not value:
            raise DataError(f"{source}, row {number}: column '{column}' should name an image file, got {value!r}")
        path = Path(value) if Path(value).is_absolute() else base / value
        image, mode = open_image(path, f"{source}, row {number}")
        converted += mode != "RGB"
        images.append(image)
    if converted:
        logger.warning(
            f"note: {converted} of {len(images)} images in {source} were not RGB (grayscale, palette or alpha); "
            "converted to RGB"
        )
    return images, [image.size for image in images]


def preprocess(processor: Any, images: list, crop: bool = True, batch_size: int = 256) -> torch.Tensor:
    """(N, C, H, W) pixel values from the backbone's image processor.

    `crop=False` (heads that read image positions, such as box heads, whose targets are
    normalised by each image's own width and height): every image shows whole, squeezed to the
    processor's output size, never a centre crop. Each image is first resized to that size, then
    the processor runs with its crop off, so its own resizing has nothing left to change
    (ConvNeXt-style processors crop a square out of a non-square image even at crop_pct 1.0)."""
    kwargs = {}
    if not crop:
        images = squeezed(processor, images)
    if not crop and getattr(processor, "do_center_crop", False):
        kwargs["do_center_crop"] = False
    if not crop and getattr(processor, "crop_pct", None) not in (None, 1.0):
        kwargs["crop_pct"] = 1.0  # ConvNeXt/ResNet processors: resize by 1/crop_pct, then crop the centre
    parts = [
        processor(images[i : i + batch_size], return_tensors="pt", **kwargs)["pixel_values"]
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


def squeezed(processor: Any, images: list) -> list:
    """Each image resized (aspect ratio not kept) to the (H, W) the processor makes of an image,
    with the processor's own resampling filter."""
    from PIL import Image

    blank = Image.new("RGB", images[0].size if images else (8, 8))
    height, width = processor(blank, return_tensors="pt")["pixel_values"].shape[-2:]
    resample = int(getattr(processor, "resample", Image.Resampling.BILINEAR))
    return [image if image.size == (width, height) else image.resize((width, height), resample) for image in images]
