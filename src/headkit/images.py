"""Image inputs: read image files named in a data file, preprocess them with the backbone's image
processor, and turn pixel boxes into the box head's normalised (x1, y1, x2, y2).

Boxes are stored in the data in pixels of the original image and divided by that image's width
and height, so they stay right whatever size the processor resizes to (a centre crop would
move them, so it is switched off for runs with a box head). Grayscale, palette and RGBA images
are converted to RGB, with a note saying how many.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from headkit.data import NAN, TaskSpec, column_values
from headkit.errors import DataError

BOX_COLUMNS = ("x1", "y1", "x2", "y2")


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
        print(
            f"note: {converted} of {len(images)} images in {source} were not RGB (grayscale, palette or alpha); "
            "converted to RGB"
        )
    return images, [image.size for image in images]


def preprocess(processor: Any, images: list, crop: bool = True, batch_size: int = 256) -> torch.Tensor:
    """(N, C, H, W) pixel values from the backbone's image processor."""
    kwargs = {} if crop or not getattr(processor, "do_center_crop", False) else {"do_center_crop": False}
    parts = [
        processor(images[i : i + batch_size], return_tensors="pt", **kwargs)["pixel_values"]
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


def box_labels(rows: list[dict[str, Any]], task: TaskSpec, sizes: list[tuple[int, int]], source: str) -> np.ndarray:
    """(N, 4) boxes normalised by each image's size; NaN rows where the box is missing.

    `task.label` names the four columns (default x1,y1,x2,y2). A box must satisfy
    0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height of its own image.
    """
    columns = [c.strip() for c in task.label.split(",")] if "," in task.label else list(BOX_COLUMNS)
    if len(columns) != 4:
        raise DataError(f"head '{task.name}': a box needs four columns x1,y1,x2,y2, got {columns}")
    values = [column_values(rows, c, source) for c in columns]
    out = np.full((len(rows), 4), NAN, dtype=np.float32)
    for i, (width, height) in enumerate(sizes):
        cells = [v[i] for v in values]
        if all(c is None or c == "" for c in cells):
            continue
        where = f"{source}, row {i + 1}"
        try:
            x1, y1, x2, y2 = (float(c) for c in cells)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: box {cells} is not four numbers (leave all four empty for no box)") from e
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise DataError(
                f"{where}: box (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}) is not inside the {width}x{height} image "
                "with x1 < x2 and y1 < y2 (pixel coordinates)"
            )
        out[i] = (x1 / width, y1 / height, x2 / width, y2 / height)
    return out
