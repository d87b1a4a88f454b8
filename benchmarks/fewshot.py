"""Few-shot accuracy and training time: headkit `fewshot` vs the `setfit` package vs frozen + LR.

For Rotten Tomatoes (2 classes) and BBC News (5 classes): a fixed test set (the first `--test`
rows of a seeded shuffle) and, for each seed and each size k, k training examples per class
drawn from the rest. All three methods see exactly the same training rows and the same MiniLM
backbone (all-MiniLM-L6-v2, shipped in a PyPI package):

  frozen+LR  sentence-transformers embeddings of the frozen backbone + scikit-learn
             LogisticRegression (SetFit's head without SetFit's body training)
  setfit     setfit.Trainer at its defaults, except the shared settings below
  headkit    `headkit train --strategy fewshot --fewshot_recipe setfit` (SetFit's pairs, heads
             solved by sklearn); benchmarks/fewshot_defaults.py compares the default recipe

Shared settings, identical for setfit and headkit: pairs = 2 x iterations x examples, batch 16
pairs, one pass, token limit --max_length. The iterations per size (--iterations, default 8:5
and 64:1) are far below SetFit's usual 20 so that 5 seeds fit in about 45 minutes on 2 CPU cores;
give `--iterations 8:20,64:20` on a GPU. Learning rates are each tool's default (setfit 2e-5,
headkit 3e-5). Training time is wall clock from loading the model to a trained classifier;
setfit and headkit run in alternating order so machine noise hits both.

    python benchmarks/fewshot.py [--seeds 5] [--sizes 8,64] [--datasets rotten_tomatoes,bbc_news]
    python benchmarks/fewshot.py --table runs/bench/fewshot.jsonl   # the table from saved rows

Every row is appended to --out (JSON lines) as it finishes, so an interrupted run keeps its rows.
Needs `pip install -e .[bench]` (setfit).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np


def split(name: str, n_test: int) -> tuple[list[dict], list[dict]]:
    from headkit.data.builtin import BUILTIN_DATASETS

    return split_rows(BUILTIN_DATASETS[name](), n_test)


def split_rows(rows: list[dict], n_test: int) -> tuple[list[dict], list[dict]]:
    """(test, pool): the first n_test rows of a fixed shuffle, and the rest."""
    order = np.random.default_rng(1234).permutation(len(rows))
    rows = [rows[i] for i in order]
    return rows[:n_test], rows[n_test:]


def sample(pool: list[dict], k: int, seed: int) -> list[dict]:
    """k rows of every class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted({r["label"] for r in pool}):
        members = [r for r in pool if r["label"] == label]
        chosen += [members[i] for i in rng.choice(len(members), size=k, replace=False)]
    return chosen


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return path


def minilm_path() -> str:
    from headkit.backbone import resolve_model

    return str(resolve_model("minilm").path)


def frozen_lr(train: list[dict], test_embeddings: np.ndarray, test_labels: list[str], encoder) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    x = encoder.encode([r["text"] for r in train], batch_size=64)
    clf = LogisticRegression(max_iter=2000).fit(x, [r["label"] for r in train])
    seconds = time.perf_counter() - started
    return float(np.mean(clf.predict(test_embeddings) == np.asarray(test_labels))), seconds


def run_setfit(train: list[dict], test: list[dict], iterations: int, max_length: int, seed: int) -> tuple[float, float]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    started = time.perf_counter()
    model = SetFitModel.from_pretrained(minilm_path())
    model.model_body.max_seq_length = max_length
    args = TrainingArguments(
        batch_size=16,
        num_iterations=iterations,
        num_epochs=1,
        seed=seed,
        max_length=max_length,
        report_to="none",
        show_progress_bar=False,
        save_strategy="no",
    )
    dataset = Dataset.from_dict({"text": [r["text"] for r in train], "label": [r["label"] for r in train]})
    Trainer(model=model, args=args, train_dataset=dataset).train()
    seconds = time.perf_counter() - started
    predictions = model.predict([r["text"] for r in test], batch_size=64)
    return float(np.mean(np.asarray(predictions) == np.asarray([r["label"] for r in test]))), seconds


def run_headkit(
    train: list[dict], test_csv: Path, max_length: int, seed: int, work: Path, **options
) -> tuple[float, float]:
    """`headkit train --strategy fewshot` on `train` with TrainConfig `options` (none: its defaults)."""
    from headkit.data.tasks import TaskSpec
    from headkit.training.evaluate import evaluate_dataset
    from headkit.training.recipe import TrainConfig
    from headkit.training.recipe import train as headkit_train

    train_csv = write_csv(train, work / "train.csv")
    config = TrainConfig(
        model="minilm",
        tasks=[TaskSpec("label", str(train_csv))],
        output_dir=str(work / "run"),
        strategy="fewshot",
        max_length=max_length,
        seed=seed,
        overwrite=True,
        progress=False,
        **options,
    )
    started = time.perf_counter()
    result = headkit_train(config)
    seconds = time.perf_counter() - started
    evaluation, _ = evaluate_dataset(
        result.model, load_tokenizer(), str(test_csv), {"label": "label"}, max_length=max_length
    )
    return evaluation.scores["label"]["accuracy"], seconds


def load_tokenizer():
    from headkit import load_processor

    return load_processor("minilm")


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines results file (what --out appends)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def append_row(out: Path, row: dict) -> None:
    """Append one finished row to `out` (an interrupted run keeps it) and echo it on stderr."""
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), file=sys.stderr, flush=True)


def paired(differences: list[float]) -> tuple[float, float]:
    """Mean of per-seed paired differences and its standard error over seeds (0 for one seed)."""
    error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0.0
    return statistics.mean(differences), error


def parse_configs(text: str) -> dict[str, dict]:
    """'default; backbone_lr=1e-4,fewshot_steps=20' -> {label: TrainConfig options}."""
    configs = {}
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        options = {}
        if item != "default":
            for pair in item.split(","):
                key, value = pair.split("=", 1)
                options[key.strip()] = ast.literal_eval(value.strip())
        configs[item] = options
    return configs


def summarise(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first_seed", type=int, default=0, help="run seeds first_seed .. first_seed+seeds-1")
    parser.add_argument("--sizes", default="8,64", help="examples per class")
    parser.add_argument("--iterations", default="8:5,64:1", help="size:iterations, pairs = 2 x iterations x N")
    parser.add_argument("--datasets", default="rotten_tomatoes,bbc_news")
    parser.add_argument("--test", type=int, default=500, help="test rows per dataset")
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--out", default="runs/bench/fewshot.jsonl")
    parser.add_argument("--table", help="only print the table of the rows in this JSON-lines file")
    args = parser.parse_args()
    if args.table:
        print_table(read_rows(args.table))
        return

    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    sizes = [int(s) for s in args.sizes.split(",")]
    iterations = {int(k): int(v) for k, v in (p.split(":") for p in args.iterations.split(","))}
    encoder = SentenceTransformer(minilm_path(), device="cpu")
    encoder.max_seq_length = args.max_length
    results: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.datasets.split(","):
            test, pool = split(name, args.test)
            test_csv = write_csv(test, work / f"{name}-test.csv")
            test_embeddings = encoder.encode([r["text"] for r in test], batch_size=64)
            for k in sizes:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    train = sample(pool, k, seed)
                    it = iterations[k]
                    row = {"dataset": name, "k": k, "seed": seed, "iterations": it, "pairs": 2 * it * len(train)}
                    row["lr_acc"], row["lr_s"] = frozen_lr(train, test_embeddings, [r["label"] for r in test], encoder)
                    order = ["setfit", "headkit"] if seed % 2 == 0 else ["headkit", "setfit"]
                    for method in order:
                        if method == "setfit":
                            row["setfit_acc"], row["setfit_s"] = run_setfit(train, test, it, args.max_length, seed)
                        else:
                            row["headkit_acc"], row["headkit_s"] = run_headkit(
                                train, test_csv, args.max_length, seed, work,
                                fewshot_recipe="setfit", fewshot_iterations=it, batch_size=16,
                            )  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    with open(out, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
    print(f"\ntest {args.test} rows per dataset, max_length {args.max_length}")
    print_table(results)


def paired_difference(rows: list[dict]) -> str:
    """Mean per-seed accuracy difference and wins: both tools saw the same rows in each seed,
    so the paired difference is far less noisy than comparing two means whose spread is mostly
    which examples were drawn."""
    differences = [r["headkit_acc"] - r["setfit_acc"] for r in rows]
    wins = sum(d > 0 for d in differences)
    ties = sum(d == 0 for d in differences)
    tied = f", {ties} tied" if ties else ""
    return f"{statistics.mean(differences):+.3f} ({wins}/{len(rows)} seeds higher{tied})"


def print_table(results: list[dict]) -> None:
    print("accuracy mean ± std over seeds; seconds: mean wall clock from loading the model to a trained classifier")
    print(
        "| data | k/class | seeds | pairs | frozen+LR | setfit | headkit fewshot | headkit - setfit (paired) "
        "| setfit s | headkit s | time ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["dataset"] for r in results):
        for k in sorted({r["k"] for r in results if r["dataset"] == name}):
            rows = [r for r in results if r["dataset"] == name and r["k"] == k]
            setfit_s = statistics.mean(r["setfit_s"] for r in rows)
            headkit_s = statistics.mean(r["headkit_s"] for r in rows)
            print(
                f"| {name} | {k} | {len(rows)} | {rows[0]['pairs']} | {summarise([r['lr_acc'] for r in rows])} "
                f"| {summarise([r['setfit_acc'] for r in rows])} | {summarise([r['headkit_acc'] for r in rows])} "
                f"| {paired_difference(rows)} | {setfit_s:.1f} | {headkit_s:.1f} | {headkit_s / setfit_s:.2f}x |"
            )


if __name__ == "__main__":
    main()
