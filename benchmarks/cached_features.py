"""Frozen training with the feature cache vs. the same training with the backbone run every epoch.

Same backbone (MiniLM), data (Rotten Tomatoes snippets), head, seed and batches; both runs in
this process. Prints the time of epochs 2..n of each, their ratio (goal >= 20x), the one-off
cost of filling the cache, and both validation accuracies (goal: equal within 0.5 points).

    python benchmarks/cached_features.py [--limit 3000] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(cached: bool, args: argparse.Namespace, out: str) -> dict:
    from headkit.data.tasks import TaskSpec
    from headkit.training.recipe import TrainConfig, train

    config = TrainConfig(
        model=args.model,
        tasks=[TaskSpec("sentiment", "rotten_tomatoes", limit=args.limit)],
        output_dir=out,
        strategy="frozen",
        epochs=args.epochs,
        lr=3e-3,
        max_length=64,
        patience=0,
        feature_cache=cached,
        progress=False,
        overwrite=True,
    )
    return train(config).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--limit", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    os.environ["HEADKIT_CACHE"] = tempfile.mkdtemp(prefix="headkit-bench-")  # start with an empty cache
    with tempfile.TemporaryDirectory() as tmp:
        cached = run(True, args, f"{tmp}/cached")
        uncached = run(False, args, f"{tmp}/uncached")

    def later_epochs(metrics: dict) -> float:
        return sum(e["train_seconds"] for e in metrics["epochs"][1:])

    t_cached, t_uncached = later_epochs(cached), later_epochs(uncached)
    acc_cached = cached["heads"]["sentiment"]["accuracy"]
    acc_uncached = uncached["heads"]["sentiment"]["accuracy"]
    fill = cached["seconds"] - sum(e["train_seconds"] for e in cached["epochs"])
    print(f"\nfrozen MiniLM + classification head, {cached['train_examples']} training snippets, {args.epochs} epochs")
    print(f"{'':32}{'cache':>12}{'no cache':>12}")
    print(f"{'epochs 2..n, seconds':32}{t_cached:12.2f}{t_uncached:12.2f}")
    print(f"{'whole run, seconds':32}{cached['seconds']:12.1f}{uncached['seconds']:12.1f}")
    print(f"{'validation accuracy':32}{acc_cached:12.4f}{acc_uncached:12.4f}")
    print(f"speed-up of epochs 2..n: {t_uncached / max(t_cached, 1e-9):.1f}x (goal >= 20x)")
    print(f"accuracy difference: {100 * abs(acc_cached - acc_uncached):.2f} points (goal <= 0.5)")
    print(f"one-off cost of filling the cache (backbone pass + load + setup): ~{fill:.1f} s")


if __name__ == "__main__":
    main()
