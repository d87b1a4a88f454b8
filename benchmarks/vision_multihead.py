"""One ViT, a class head and a box head: class-only, box-only and joint training at the same budget.

Data: the seeded shapes task (`headkit.data.shapes`: one circle/square/triangle/cross per noisy
48x48 image, 3,000 train / 300 validation / 600 test). Backbone: a small ViT (patch 8, hidden 96,
3 layers) trained from scratch, the same initial weights for every run. Each run trains for the
same number of epochs with the same optimiser settings; joint training uses static loss weights
1 and 1. Reported on the test split: classification accuracy and mean IoU of the box head, the
training time, and a PNG grid of test images with predicted (red) and true (green) boxes and
labels, written into the joint run's directory.

    python benchmarks/vision_multihead.py [--epochs 25] [--out runs/vision]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(name: str, tasks, vit: Path, out: Path, args) -> tuple[float, Path]:
    from headkit.training.recipe import TrainConfig, train

    started = time.perf_counter()
    train(
        TrainConfig(
            model=str(vit),
            tasks=tasks,
            strategy="full",
            epochs=args.epochs,
            batch_size=32,
            lr=1e-3,
            backbone_lr=5e-4,
            patience=0,
            val_fraction=0.1,
            output_dir=str(out / name),
            overwrite=True,
            progress=False,
        )
    )
    return time.perf_counter() - started, out / name


def test_scores(run_dir: Path, test_csv: Path, class_head: str = "shape") -> dict[str, float]:
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset

    model, processor = load_for_inference(run_dir)
    columns = {n: ("label" if h.config.type == "classification" else "x1,y1,x2,y2") for n, h in model.heads.items()}
    result, _ = evaluate_dataset(model, processor, str(test_csv), columns, text="image")
    scores = {}
    if class_head in result.scores:
        scores["accuracy"] = result.scores[class_head]["accuracy"]
    if "box" in result.scores:
        scores["mean_iou"] = result.scores["box"]["mean_iou"]
    return scores


def draw_grid(run_dir: Path, test_csv: Path, count: int = 16, class_head: str = "shape") -> Path:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    from headkit.data.images import open_image
    from headkit.ship.predict import load_for_inference, predict_images

    with open(test_csv, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:count]
    images = [open_image(test_csv.parent / r["image"], "test")[0] for r in rows]
    model, processor = load_for_inference(run_dir)
    predictions = predict_images(model, processor, images)
    side = int(count**0.5)
    fig, axes = plt.subplots(side, side, figsize=(2.2 * side, 2.4 * side))
    for ax, image, row, pred in zip(axes.flat, images, rows, predictions, strict=False):
        ax.imshow(image)
        true = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        for box, colour in ((true, "lime"), (pred["box"], "red")):
            ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, lw=2, ec=colour))
        ax.set_title(f"{pred[class_head]['label']} / true {row['label']}", fontsize=8)
        ax.axis("off")
    fig.suptitle("test: predicted (red) vs true (green) boxes; predicted / true label", fontsize=9)
    fig.tight_layout()
    path = run_dir / "test_predictions.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    from headkit.data.shapes import save_small_vit, write_shapes
    from headkit.data.tasks import TaskSpec

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--out", default="runs/vision")
    args = parser.parse_args()
    out = Path(args.out)
    splits = write_shapes(out / "data", train=3000, validation=300, test=600, size=48)
    vit = save_small_vit(out / "vit-init", image_size=48, patch_size=8, hidden_size=96, layers=3)
    train_csv = str(splits["train"])
    shape = TaskSpec("shape", train_csv, text="image", pooling="mean")
    box = TaskSpec("box", train_csv, text="image", label="x1,y1,x2,y2", type="box", pooling="mean")
    rows = []
    for name, tasks in (("joint", [shape, box]), ("class-only", [shape]), ("box-only", [box])):
        seconds, run_dir = run(name, tasks, vit, out, args)
        rows.append((name, seconds, test_scores(run_dir, splits["test"])))
        if name == "joint":
            grid = draw_grid(run_dir, splits["test"])
    print(f"\nshapes test split (600 images), ViT from scratch, {args.epochs} epochs each, chance accuracy 0.25")
    print(f"{'training':12}{'accuracy':>10}{'mean IoU':>10}{'seconds':>10}")
    for name, seconds, scores in rows:
        acc, iou = scores.get("accuracy"), scores.get("mean_iou")
        print(
            f"{name:12}{'-' if acc is None else f'{acc:.4f}':>10}{'-' if iou is None else f'{iou:.4f}':>10}"
            f"{seconds:10.1f}"
        )
    print(f"grid of test predictions: {grid}")


if __name__ == "__main__":
    main()
