"""Real images with boxes and no download: scikit-learn's 1,797 handwritten digits (8x8, scanned
from real handwriting) pasted at a seeded random position and scale on noisy canvases.

Each canvas has a random grey background with Gaussian noise; the digit is scaled to a random
side, drawn bright on the background, and its box is the pasted square in pixels (x1, y1, x2, y2,
exclusive of x2/y2). The label is the digit. Rows are split train/validation/test by a seeded
permutation, so every method compared on it sees the same rows.

    write_digits("data/digits")  -> data/digits/{train,validation,test}.csv (image,label,x1,y1,x2,y2) + images/
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from headkit.data.shapes import COLUMNS, write_split


def paste_digit(digit: np.ndarray, rng: np.random.Generator, size: int = 64) -> tuple[Image.Image, tuple[int, ...]]:
    """One canvas with `digit` (8x8, values 0-16) pasted on it, and the pasted square's pixel box."""
    background = float(rng.integers(0, 140))
    canvas = np.clip(background + rng.normal(0, 20, (size, size)), 0, 255)
    side = int(rng.integers(size // 4, size * 5 // 8 + 1))
    image = Image.fromarray((digit * 15.9).astype(np.uint8))
    glyph = np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), np.float64)
    x1, y1 = (int(v) for v in rng.integers(0, size - side + 1, 2))
    region = canvas[y1 : y1 + side, x1 : x1 + side]
    canvas[y1 : y1 + side, x1 : x1 + side] = np.maximum(region, glyph)  # ink is brighter than any background
    rgb = np.repeat(canvas.astype(np.uint8)[..., None], 3, axis=2)
    return Image.fromarray(rgb, "RGB"), (x1, y1, x1 + side, y1 + side)


def write_digits(
    directory: str | os.PathLike, size: int = 64, fractions: tuple[float, float] = (0.1, 0.2), seed: int = 0
) -> dict[str, Path]:
    """Write the three splits (validation and test `fractions` of the 1,797 digits); split -> CSV path."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_val, n_test = (round(f * len(order)) for f in fractions)
    splits = {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    paths = {}
    for split, indices in splits.items():
        if len(indices) == 0:
            continue
        rows = []
        for i in indices:
            image, box = paste_digit(digits.images[i], np.random.default_rng([seed, int(i)]), size)
            name = f"images/{i:04d}.png"
            image.save(directory / name)
            rows.append(dict(zip(COLUMNS, (name, str(digits.target[i]), *box), strict=True)))
        paths[split] = write_split(directory / f"{split}.csv", rows)
    return paths
