"""Probing: one linear head per hidden state of MiniLM on the same task, trained together.

Seven classification heads (hidden state 0 = the embeddings, then layers 1-6), each reading the
mean-pooled hidden state of its layer, on the fixed 80/20 Rotten Tomatoes split of
benchmarks/accuracy.py. One frozen run: the backbone runs once per text (its hidden states
requested once), the feature cache keeps the seven pooled layers, and the seven heads train
together for 30 epochs with no validation selection. Reported: test accuracy by layer, as a
table and as a PNG plot.

    python benchmarks/probing.py [--limit 3000] [--out runs/probing]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def plot(accuracies: dict[int, float], chance: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    layers = sorted(accuracies)
    ax.plot(layers, [accuracies[k] for k in layers], marker="o")
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"majority class {chance:.3f}")
    ax.set_xticks(layers, ["emb"] + [str(k) for k in layers[1:]])
    ax.set_xlabel("MiniLM hidden state (layer)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Rotten Tomatoes sentiment: a linear probe per layer", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    from accuracy import MAX_LENGTH, write_split

    from headkit.data.tasks import TaskSpec
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset
    from headkit.training.recipe import TrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=3000)
    parser.add_argument("--out", default="runs/probing")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "cache", ignore_errors=True)
    os.environ["HEADKIT_CACHE"] = str(out / "cache")  # the run's seconds include computing the features
    train_csv, test_csv = write_split("rotten_tomatoes", args.limit, out)
    layers = range(7)  # MiniLM: the embeddings + 6 layers
    tasks = [TaskSpec(f"layer{k}", str(train_csv), layer=k, dropout=0.0) for k in layers]
    started = time.perf_counter()
    train(
        TrainConfig(
            model="minilm",
            tasks=tasks,
            strategy="frozen",
            epochs=30,
            lr=3e-3,
            patience=0,
            val_fraction=0.0,
            max_length=MAX_LENGTH,
            output_dir=str(out / "run"),
            overwrite=True,
            progress=False,
        )
    )
    seconds = time.perf_counter() - started
    model, tokenizer = load_for_inference(out / "run")
    result, _ = evaluate_dataset(
        model, tokenizer, str(test_csv), {f"layer{k}": "label" for k in layers}, max_length=MAX_LENGTH
    )
    accuracies = {k: result.scores[f"layer{k}"]["accuracy"] for k in layers}
    with open(test_csv, newline="", encoding="utf-8") as f:
        labels = [row["label"] for row in csv.DictReader(f)]  # snippets may hold newlines: read it as CSV
    fresh = labels.count("fresh") / len(labels)
    path = plot(accuracies, max(fresh, 1 - fresh), out / "probing.png")
    print(f"\nRotten Tomatoes, {len(labels)} test snippets; 7 probes trained in one frozen run: {seconds:.1f} s")
    print(f"{'hidden state':14}{'test accuracy':>14}")
    for k, accuracy in accuracies.items():
        print(f"{'embeddings' if k == 0 else f'layer {k}':14}{accuracy:14.4f}")
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
