"""A class head and a box head on one vision backbone: what shape is in the image, and where.

`headkit.data.shapes` draws a seeded synthetic task (one circle, square, triangle or cross per
noisy image; its class and its pixel box) and saves a small randomly initialised ViT with its
image processor. Both heads train with the backbone (`strategy="full"`: a random ViT has nothing
to keep frozen): cross-entropy for the class, L1 + GIoU for the box. The data is a CSV whose
`image` column names PNG files beside it; `model.predict` takes image
paths or PIL images and returns each box in pixels of the image given.

Run: python examples/vision_class_and_box.py   (about 40 s on a shared 2-core CPU; examples/README.md)

Everything is written under a temporary directory. For CI it trains 5 epochs on 400 images of 48
pixels: that shows the whole API but leaves both heads near chance (accuracy 0.2-0.4 of 4 classes,
every box near the average box). A real run trains longer on more images: the vision benchmark
(`python benchmarks/vision_multihead.py`: 3,000 images, 25 epochs, 267 s) reaches 0.64 accuracy and
0.66 mean IoU from scratch; a real task starts from a pretrained backbone (any transformers vision
checkpoint, or a timm one such as the shipped `efficientnet-lite0`) and its own images and boxes.
"""

import tempfile
from pathlib import Path

import pandas as pd

import headkit
from headkit.data.shapes import save_small_vit, write_shapes

with tempfile.TemporaryDirectory() as directory:
    root = Path(directory)
    splits = write_shapes(root / "shapes", train=400, validation=100, test=100, size=48)  # split -> CSV path
    save_small_vit(root / "vit", image_size=48, hidden_size=96, layers=3)

    result = headkit.train(
        str(root / "vit"),
        {"shape": "label", "box": {"label": "x1,y1,x2,y2", "type": "box"}},  # a box: four pixel columns
        train_dataset=splits["train"],  # a CSV file: its image paths are read relative to it
        eval_dataset=splits["validation"],
        text_column="image",  # the column naming each example's image file
        strategy="full",
        epochs=5,
        lr=1e-3,
        backbone_lr=5e-4,
        batch_size=32,
        progress=False,
    )
    print("shape:", {k: round(v, 3) for k, v in result.metrics["heads"]["shape"].items()})
    print("box:", {k: round(v, 3) for k, v in result.metrics["heads"]["box"].items()})

    model = result.model
    held_out = model.evaluate(splits["test"])  # a file works wherever a dataset does
    print("held-out:", {head: {k: round(v, 3) for k, v in m.items()} for head, m in held_out.items()})
    rows = pd.read_csv(splits["test"]).head(3)  # image,label,x1,y1,x2,y2
    images = [str(Path(splits["test"]).parent / name) for name in rows["image"]]  # paths (or PIL images)
    for row, prediction in zip(rows.itertuples(), model.predict(images), strict=True):
        box = [row.x1, row.y1, row.x2, row.y2]
        print(f"true {row.label:8} {box}  predicted {prediction['shape']['label']:8} {prediction['box']}")
