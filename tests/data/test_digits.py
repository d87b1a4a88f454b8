"""The digits-on-canvas task: real scanned digits, seeded placement, boxes that hold the ink."""

import csv

import numpy as np
from PIL import Image

from headkit.data.digits import paste_digit, write_digits


def test_pasting_is_seeded_and_the_ink_lies_inside_the_box():
    from sklearn.datasets import load_digits

    digit = load_digits().images[0]
    a, box_a = paste_digit(digit, np.random.default_rng(5))
    b, box_b = paste_digit(digit, np.random.default_rng(5))
    assert box_a == box_b and np.array_equal(np.asarray(a), np.asarray(b))
    for seed in range(30):
        image, (x1, y1, x2, y2) = paste_digit(digit, np.random.default_rng(seed), 64)
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and x2 - x1 == y2 - y1 >= 16
        pixels = np.asarray(image)[..., 0].astype(float)
        inside = pixels[y1:y2, x1:x2]
        assert inside.max() > 200  # the brightest ink is in the box


def test_splits_are_disjoint_cover_every_digit_and_name_their_images(tmp_path):
    paths = write_digits(tmp_path, size=32, fractions=(0.1, 0.2))
    rows = {split: list(csv.DictReader(p.read_text(encoding="utf-8").splitlines())) for split, p in paths.items()}
    images = [r["image"] for split in rows.values() for r in split]
    assert len(images) == len(set(images)) == 1797
    assert len(rows["test"]) == 359 and len(rows["validation"]) == 180
    assert {r["label"] for r in rows["train"]} == {str(d) for d in range(10)}
    first = rows["test"][0]
    assert Image.open(tmp_path / first["image"]).size == (32, 32)
