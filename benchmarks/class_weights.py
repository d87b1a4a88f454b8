"""Class weights on imbalanced tags: tweet NER with and without `class_weights: auto`.

The shipped tweet NER data (BIO tags over 10 entity types; `O` is most tokens and some entity
types are rare) is split 80/20 with a fixed seed. The same token-classification head on
MiniLM is trained twice with the same seed, epochs, strategy and validation split — once with
`class_weights: none`, once with `auto` (inverse tag frequency over the training tokens) — and
both are scored on the held-out 20% with seqeval: entity-level micro-F1 (headkit's `f1`) and
macro-F1 (the unweighted mean over entity types, where rare types count as much as common ones).

    python benchmarks/class_weights.py [--strategy full] [--epochs 5] [--out runs/class_weights]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_LENGTH = 64


def write_split(out: Path, seed: int = 0) -> tuple[Path, Path]:
    from headkit.data.batching import split_indices
    from headkit.data.builtin import tweet_ner

    rows = tweet_ner()
    train_idx, test_idx = split_indices(len(rows), 0.2, seed)
    paths = []
    for part, idx in (("train", train_idx), ("test", test_idx)):
        path = out / f"tweet_ner-{part}.jsonl"
        path.write_text("".join(json.dumps({"tokens": rows[i]["tokens"], "tags": rows[i]["tags"]}) + "\n" for i in idx))
        paths.append(path)
    return paths[0], paths[1]


def train_and_score(run: Path, train_file: Path, test_file: Path, **options):
    """A token-classification head on MiniLM trained on the tweet NER split (`options`: TrainConfig
    fields), then scored on the held-out file with seqeval. Returns (train result, evaluation,
    examples scored, seconds of training)."""
    from headkit.data.tasks import TaskSpec
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset
    from headkit.training.recipe import TrainConfig, train

    started = time.perf_counter()
    result = train(
        TrainConfig(
            model="minilm",
            tasks=[TaskSpec("ner", str(train_file), label="tags", type="token-classification")],
            batch_size=32,
            max_length=MAX_LENGTH,
            val_fraction=0.1,
            patience=0,
            output_dir=str(run),
            overwrite=True,
            progress=False,
            **options,
        )
    )
    seconds = time.perf_counter() - started
    model, tokenizer = load_for_inference(run)
    evaluation, count = evaluate_dataset(model, tokenizer, str(test_file), {"ner": "tags"}, max_length=MAX_LENGTH)
    return result, evaluation, count, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's learning rate")
    parser.add_argument("--backbone_lr", type=float, default=1e-4)
    parser.add_argument("--out", default="runs/class_weights")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_file, test_file = write_split(out)
    results = {}
    options = {"epochs": args.epochs, "lr": args.lr, "backbone_lr": args.backbone_lr, "seed": 0}
    for setting in ("none", "auto"):
        _, evaluation, count, seconds = train_and_score(
            out / f"run-{setting}", train_file, test_file, strategy=args.strategy, class_weights=setting, **options
        )
        report = evaluation.reports["ner"]
        results[setting] = (evaluation.scores["ner"], report, seconds, count)
    entities = sorted(k for k in results["none"][1] if not k.endswith(" avg"))
    count = results["none"][3]
    print(f"\ntweet NER, {count} held-out sentences; MiniLM, strategy {args.strategy}, {args.epochs} epochs, seed 0")
    header = f"{'class_weights':14}{'macro-F1':>10}{'micro-F1':>10}{'precision':>11}{'recall':>8}{'seconds':>9}"
    print(header)
    for setting, (scores, report, seconds, _) in results.items():
        macro = report["macro avg"]["f1"]
        print(
            f"{setting:14}{macro:10.4f}{scores['f1']:10.4f}{scores['precision']:11.4f}{scores['recall']:8.4f}"
            f"{seconds:9.1f}"
        )
    print(f"\n{'entity':14}{'support':>8}{'F1 none':>9}{'F1 auto':>9}")
    for entity in entities:
        none, auto = results["none"][1][entity], results["auto"][1][entity]
        print(f"{entity:14}{none['support']:8.0f}{none['f1']:9.4f}{auto['f1']:9.4f}")


if __name__ == "__main__":
    main()
