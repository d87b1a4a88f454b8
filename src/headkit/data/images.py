"""Image inputs: read the image files a data file names and preprocess them with the backbone's
image processor. Each image's (width, height) goes to the heads that read image positions (box
heads normalise pixel boxes by it); heads whose `crop_ok` is False switch the centre crop off.
Grayscale, palette and RGBA images are converted to RGB, with a note saying how many.

Files are opened lazily: sizes and modes come from the files' headers, and pixels are decoded a
chunk at a time (`ImageFiles`, `preprocessed_chunks`), so a dataset larger than RAM never sits
in memory decoded (`headkit.data.pixels` keeps the preprocessed chunks on disk).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import torch

from headkit.data.files import column_values
from headkit.errors import DataError

logger = logging.getLogger(__name__)


def is_image_processor(processor: Any) -> bool:
    from transformers.image_processing_base import ImageProcessingMixin

    return isinstance(processor, ImageProcessingMixin)


def _read(path: Path, where: str, decode: bool) -> tuple[Any, str]:
    """(RGB PIL image, original mode), or with `decode` False ((width, height), mode) from the
    file's header alone; a DataError naming the row and the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{where}: image {path} not found")
    try:
        with Image.open(path) as image:
            if not decode:
                return image.size, image.mode
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB"), image.mode
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{where}: {path} is not a readable image ({e})") from e


def open_image(path: str | Path, where: str):
    """An RGB PIL image and its file's mode, or a DataError naming the row and the file."""
    return _read(Path(path), where, decode=True)


class ImageFiles(Sequence):
    """The image files of a data file, opened (and converted to RGB) only when read: an index is
    one PIL image, a slice a list of them, so a chunk at a time is all that is ever decoded."""

    def __init__(self, paths: list[Path], source: str):
        self.paths, self.source = paths, source

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # a negative index counts from the end; the row number from the start
        return open_image(self.paths[i], f"{self.source}, row {i + 1}")[0]


def load_images(rows: list[dict[str, Any]], column: str, source: str) -> tuple[ImageFiles, list[tuple[int, int]]]:
    """The images a data file names (paths relative to the file), to be opened when read, and their
    (width, height) from the files' headers (nothing is decoded here)."""
    base = Path(source).parent if Path(source).is_file() else Path(".")
    paths, sizes, converted = [], [], 0
    for number, value in enumerate(column_values(rows, column, source), start=1):
        if not isinstance(value, str) or not value:
            raise DataError(f"{source}, row {number}: column '{column}' should name an image file, got {value!r}")
        path = Path(value) if Path(value).is_absolute() else base / value
        size, mode = _read(path, f"{source}, row {number}", decode=False)
        converted += mode != "RGB"
        paths.append(path)
        sizes.append(size)
    if converted:
        logger.warning(
            f"note: {converted} of {len(paths)} images in {source} were not RGB (grayscale, palette or alpha); "
            "converted to RGB"
        )
    return ImageFiles(paths, source), sizes


def preprocess(processor: Any, images: Sequence, crop: bool = True, batch_size: int = 256) -> torch.Tensor:
    """(N, C, H, W) pixel values from the backbone's image processor.

    `crop=False` (heads that read image positions, such as box heads, whose targets are
    normalised by each image's own width and height): every image shows whole, squeezed to the
    processor's output size, never a centre crop. Each image is first resized to that size, then
    the processor runs with its crop off, so its own resizing has nothing left to change
    (ConvNeXt-style processors crop a square out of a non-square image even at crop_pct 1.0)."""
    return torch.cat(list(preprocessed_chunks(processor, images, crop, batch_size)))


def preprocessed_chunks(processor: Any, images: Sequence, crop: bool, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """`preprocess`, `batch_size` images at a time (of an `ImageFiles`, only those are opened).
    The squeezed size is taken once, from the first image, so the chunks join into what one call
    on every image makes."""
    kwargs: dict[str, Any] = {}
    if not crop and getattr(processor, "do_center_crop", False):
        kwargs["do_center_crop"] = False
    if not crop and getattr(processor, "crop_pct", None) not in (None, 1.0):
        kwargs["crop_pct"] = 1.0  # ConvNeXt/ResNet processors: resize by 1/crop_pct, then crop the centre
    size = None if crop or not len(images) else squeeze_size(processor, images[0].size)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        if size is not None:
            chunk = squeezed(processor, chunk, size)
        yield processor(chunk, return_tensors="pt", **kwargs)["pixel_values"]


def squeeze_size(processor: Any, image_size: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) the processor makes of an image of `image_size` (width, height)."""
    from PIL import Image

    height, width = processor(Image.new("RGB", image_size), return_tensors="pt")["pixel_values"].shape[-2:]
    return int(height), int(width)


def squeezed(processor: Any, images: Sequence, size: tuple[int, int]) -> list:
    """Each image resized (aspect ratio not kept) to `size` (H, W), with the processor's own
    resampling filter."""
    from PIL import Image

    height, width = size
    resample = int(getattr(processor, "resample", Image.Resampling.BILINEAR))
    return [image if image.size == (width, height) else image.resize((width, height), resample) for image in images]
