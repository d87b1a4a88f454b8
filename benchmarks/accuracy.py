"""Accuracy of headkit's strategies on the shipped data, against scikit-learn on the same features.

For each dataset: one fixed, seeded 80/20 train/test split (written to CSV so every method sees
the same rows). Baseline: scikit-learn LogisticRegression on frozen MiniLM mean-pooled
features of the training rows. headkit: the same frozen features and the same training rows
with a trained classification head, a fixed 30 epochs and no validation selection (so both see
exactly the same data). On Rotten Tomatoes, LoRA and full fine-tuning are reported beside them
(10% of their training rows held out to pick the best epoch). Every number is test accuracy
on the same held-out rows. (A first protocol that held out 10% of headkit's training rows for
early stopping gave 78.5% on RT and 94.8% on BBC; it was replaced by this same-rows one after
that run, so treat the small BBC gap as measured after one protocol change.)

    python benchmarks/accuracy.py [--rt-limit 3000] [--skip-finetune]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_LENGTH = 64


def write_split(name: str, limit: int | None, out: Path, seed: int = 0) -> tuple[Path, Path]:
    from headkit.data.batching import split_indices
    from headkit.data.builtin import BUILTIN_DATASETS
    from headkit.data.tasks import _sample

    rows = _sample(BUILTIN_DATASETS[name](), limit, seed)
    train_idx, test_idx = split_indices(len(rows), 0.2, seed)
    paths = []
    for part, idx in (("train", train_idx), ("test", test_idx)):
        path = out / f"{name}-{part}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows({"text": rows[i]["text"], "label": rows[i]["label"]} for i in idx)
        paths.append(path)
    return paths[0], paths[1]


def logistic_regression(train_csv: Path, test_csv: Path) -> tuple[float, float]:
    """sklearn LogisticRegression on frozen mean-pooled MiniLM features (headkit's feature cache)."""
    from sklearn.linear_model import LogisticRegression

    from headkit import MultiHeadModel, load_processor
    from headkit.data.tasks import TaskSpec, prepare
    from headkit.training.features import cached_features

    started = time.perf_counter()
    tokenizer = load_processor("minilm")
    model = MultiHeadModel.from_pretrained("minilm").eval()
    feats, labels = [], []
    for path in (train_csv, test_csv):
        data = prepare([TaskSpec("y", str(path))], tokenizer, MAX_LENGTH, val_fraction=0.0).train
        cache, _ = cached_features(model, data, {"mean"}, token_layers=set(), progress=False)
        feats.append(cache.pooled["mean"].numpy())
        labels.append(data.labels["y"])
    clf = LogisticRegression(max_iter=3000).fit(feats[0], labels[0])
    return float((clf.predict(feats[1]) == labels[1]).mean()), time.perf_counter() - started


def headkit_strategy(strategy: str, train_csv: Path, test_csv: Path, out: Path, **overrides) -> tuple[float, float]:
    from headkit.data.tasks import TaskSpec
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset
    from headkit.training.recipe import TrainConfig, train

    fields = dict(
        model="minilm",
        tasks=[TaskSpec("y", str(train_csv))],
        output_dir=str(out / strategy),
        strategy=strategy,
        max_length=MAX_LENGTH,
        progress=False,
        overwrite=True,
    )
    fields.update(overrides)
    started = time.perf_counter()
    train(TrainConfig(**fields))
    model, tokenizer = load_for_inference(out / strategy)
    result, _ = evaluate_dataset(model, tokenizer, str(test_csv), {"y": "label"}, max_length=MAX_LENGTH)
    return result.scores["y"]["accuracy"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rt-limit", type=int, default=3000)
    parser.add_argument("--skip-finetune", action="store_true", help="skip LoRA and full fine-tuning (slow on CPU)")
    args = parser.parse_args()
    frozen = {"epochs": 30, "lr": 3e-3, "patience": 0, "val_fraction": 0.0}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name, limit in (("rotten_tomatoes", args.rt_limit), ("bbc_news", None)):
            train_csv, test_csv = write_split(name, limit, out)
            rows.append(
                (name, "sklearn LogisticRegression (frozen features)", *logistic_regression(train_csv, test_csv))
            )
            rows.append(
                (name, "headkit frozen + head", *headkit_strategy("frozen", train_csv, test_csv, out, **frozen))
            )
            if name == "rotten_tomatoes" and not args.skip_finetune:
                rows.append(
                    (
                        name,
                        "headkit lora (r=8)",
                        *headkit_strategy(
                            "lora", train_csv, test_csv, out, epochs=3, lr=1e-3, lora_lr=5e-4, patience=0
                        ),
                    )
                )
                rows.append(
                    (
                        name,
                        "headkit full fine-tuning",
                        *headkit_strategy(
                            "full", train_csv, test_csv, out, epochs=3, lr=1e-3, backbone_lr=3e-5, patience=0
                        ),
                    )
                )
    print(f"\ntest accuracy on fixed 80/20 splits (MiniLM, max_length {MAX_LENGTH}, seed 0)")
    print(f"{'dataset':18}{'method':48}{'accuracy':>10}{'seconds':>10}")
    for name, method, acc, secs in rows:
        print(f"{name:18}{method:48}{acc:10.4f}{secs:10.1f}")


if __name__ == "__main__":
    main()
