"""Calibration: expected calibration error of classification heads before and after temperature
scaling, on held-out test rows.

For Rotten Tomatoes sentiment (3,000 rows) and BBC News topics, one fixed, seeded 80/20
train/test split (benchmarks/accuracy.py's). A classification head on MiniLM is trained on the
training rows (10% of them held out as the validation split, where the run fits its softmax
temperature; `temperature_scaling` is on by default), then scored on the test rows twice: as
saved (calibrated), and with the temperature taken back out of its output layer (the head as
trained, exactly: the temperature is folded into that layer's weights, nowhere else). Accuracy
must be the same; ECE (15 bins) and NLL are what change.

    python benchmarks/calibration.py [--strategies frozen,full] [--out runs/calibration]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASETS = {"rotten_tomatoes": 3000, "bbc_news": None}  # name -> rows used (a seeded sample)
MAX_LENGTH = 64


def train_run(run: Path, train_csv: Path, strategy: str) -> tuple[dict, float]:
    from headkit.data.tasks import TaskSpec
    from headkit.training.recipe import TrainConfig, train

    started = time.perf_counter()
    result = train(
        TrainConfig(
            model="minilm",
            tasks=[TaskSpec("head", str(train_csv))],
            strategy=strategy,
            max_length=MAX_LENGTH,
            output_dir=str(run),
            overwrite=True,
            progress=False,
            seed=0,
        )
    )
    return result.metrics, time.perf_counter() - started


def test_scores(run: Path, test_csv: Path, temperature: float) -> dict[str, tuple[float, float, float]]:
    """{"before": (accuracy, ECE, NLL), "after": ...} on the test rows."""
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset

    model, tokenizer = load_for_inference(run, engine="torch")
    scores = {}
    for when, factor in (("after", 1.0), ("before", temperature)):
        model.heads["head"].scale_output(factor)  # after: as saved; before: the temperature taken out
        evaluation, _ = evaluate_dataset(model, tokenizer, str(test_csv), {"head": "label"}, max_length=MAX_LENGTH)
        s = evaluation.scores["head"]
        scores[when] = (s["accuracy"], s["ece"], evaluation.losses["head"])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="frozen,full")
    parser.add_argument("--out", default="runs/calibration")
    args = parser.parse_args()
    from accuracy import write_split
    from machine import machine_line

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, limit in DATASETS.items():
        train_csv, test_csv = write_split(name, limit, out)
        for strategy in args.strategies.split(","):
            run = out / f"{name}-{strategy}"
            metrics, seconds = train_run(run, train_csv, strategy)
            fit = metrics["calibration"].get("head", {"temperature": 1.0, "ece_before": None, "ece_after": None})
            scores = test_scores(run / "model", test_csv, fit["temperature"])
            rows.append((name, strategy, fit, scores, seconds))
            print(f"{name} {strategy}: T {fit['temperature']:.3f}, test {scores}, {seconds:.0f} s", flush=True)
    print(f"\n{machine_line()}")
    print("MiniLM, seeded 80/20 split, temperature fitted on 10% of the training rows; test rows:")
    print(
        f"{'data':17}{'strategy':9}{'T':>7}{'accuracy':>10}{'accuracy T':>12}"
        f"{'ECE':>8}{'ECE T':>8}{'NLL':>8}{'NLL T':>8}{'train s':>9}"
    )
    for name, strategy, fit, s, seconds in rows:
        (acc0, ece0, nll0), (acc1, ece1, nll1) = s["before"], s["after"]
        print(
            f"{name:17}{strategy:9}{fit['temperature']:7.3f}{acc0:10.4f}{acc1:12.4f}"
            f"{ece0:8.4f}{ece1:8.4f}{nll0:8.4f}{nll1:8.4f}{seconds:9.0f}"
        )


if __name__ == "__main__":
    main()
