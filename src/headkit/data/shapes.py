"""A checkable vision task that needs no download: one shape per image, with its class and box.

Each image has a noisy background (random colour, Gaussian pixel noise) and one filled shape —
circle, square, triangle or cross — of random size, colour and position. The label is the
shape; the box is the shape's tight bounding box in pixels (x1, y1, x2, y2, exclusive of x2/y2).
Everything is drawn from a seeded numpy generator, so a split is the same on every machine.

    write_shapes("data/shapes", train=3000, validation=300, test=600)
    -> data/shapes/{train,validation,test}.csv  (image,label,x1,y1,x2,y2) + data/shapes/images/*.png
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLUMNS = ("image", "label", "x1", "y1", "x2", "y2")


def draw_shape(rng: np.random.Generator, size: int = 64) -> tuple[Image.Image, str, tuple[int, int, int, int]]:
    """One image, its shape name and the shape's pixel box."""
    background = rng.integers(0, 256, 3)
    pixels = np.clip(background + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    side = int(rng.integers(size // 5, size * 3 // 5))
    x1, y1 = (int(v) for v in rng.integers(0, size - side, 2))
    x2, y2 = x1 + side, y1 + side
    colour = tuple(int(c) for c in (background + rng.integers(80, 176, 3)) % 256)  # never the background's
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=colour)
    elif shape == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
    elif shape == "triangle":
        draw.polygon([(x1, y2 - 1), ((x1 + x2) // 2, y1), (x2 - 1, y2 - 1)], fill=colour)
    else:
        bar = max(2, side // 4)
        mid_x, mid_y = (x1 + x2) // 2, (y1 + y2) // 2
        draw.rectangle([mid_x - bar // 2, y1, mid_x - bar // 2 + bar - 1, y2 - 1], fill=colour)
        draw.rectangle([x1, mid_y - bar // 2, x2 - 1, mid_y - bar // 2 + bar - 1], fill=colour)
    return image, shape, (x1, y1, x2, y2)


def write_shapes(
    directory: str | os.PathLike,
    train: int = 3000,
    validation: int = 300,
    test: int = 600,
    size: int = 64,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the three splits (PNG images + one CSV each); returns split name -> CSV path."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for offset, (split, count) in enumerate((("train", train), ("validation", validation), ("test", test))):
        rng = np.random.default_rng([seed, offset])
        rows = []
        for i in range(count):
            image, shape, box = draw_shape(rng, size)
            name = f"images/{split}-{i:05d}.png"
            image.save(directory / name)
            rows.append(dict(zip(COLUMNS, (name, shape, *box), strict=True)))
        paths[split] = write_split(directory / f"{split}.csv", rows)
    return paths


def write_split(path: Path, rows: list[dict]) -> Path:
    """One split's CSV (image,label,x1,y1,x2,y2), as the vision tasks write them."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_small_vit(
    directory: str | os.PathLike,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 192,
    layers: int = 4,
    seed: int = 0,
) -> Path:
    """A randomly initialised ViT (to train from scratch) with its image processor, as a checkpoint."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden_size // 48),
        intermediate_size=hidden_size * 4,
    )
    directory = Path(directory)
    ViTModel(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return directory
