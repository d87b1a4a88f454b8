"""Headline generation on the shipped BBC News articles: a seq2seq head on MiniLM against a lead baseline.

Each article's first line is its headline, the rest its body (the built-in `bbc_headlines`). A
seeded 10% of the articles is held out; the rest trains one MiniLM backbone with two heads in one
run — `headline` (seq2seq: a decoder warm-started from MiniLM's own weights, BERT2BERT) and
`topic` (classification) — for a fixed number of epochs: full fine-tuning, or `--strategy frozen`
(the encoder's states are computed once and cached; only the decoder and the topic head train). The held-out
bodies are then given to the trained model, and ROUGE-1/2/L F1 (rouge-score, stemmed) of its
greedy and beam-search headlines is compared with the lead baseline: the body's first 10 words.

    python benchmarks/seq2seq_headlines.py                                    # frozen encoder, 12 epochs
    python benchmarks/seq2seq_headlines.py --strategy full --epochs 3 --lr 3e-4  # full fine-tuning
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

KINDS = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F1 x 100 (rouge-score with Porter stemming, as in the summarisation literature)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(KINDS), use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
    return {k: 100 * sum(s[k].fmeasure for s in scores) / len(scores) for k in KINDS}


def lead(body: str, words: int = 10) -> str:
    return " ".join(body.split()[:words])


def write_csv(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def main() -> None:
    import torch
    from machine import machine_line

    from headkit.data.batching import split_indices
    from headkit.data.builtin import bbc_headlines
    from headkit.data.tasks import TaskSpec
    from headkit.ship.predict import load_for_inference, predict_texts
    from headkit.training.recipe import TrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--strategy", default="frozen", help="frozen: the encoder runs once (cached), only the decoder trains; or full"
    )
    parser.add_argument("--max-length", type=int, default=128, help="body tokens the encoder reads")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4, help="the decoder's (and topic head's) learning rate")
    parser.add_argument("--backbone-lr", type=float, default=1e-4)
    parser.add_argument("--limit", type=int, default=None, help="use only this many articles (a quick look)")
    args = parser.parse_args()

    rows = bbc_headlines()
    if args.limit:  # a seeded sample over all topics
        import random

        rows = random.Random(0).sample(rows, args.limit)
    train_idx, test_idx = split_indices(len(rows), 0.1, seed=0)
    test = [rows[i] for i in test_idx]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_csv(Path(tmp) / "train.csv", [rows[i] for i in train_idx])
        config = TrainConfig(
            model="minilm",
            tasks=[TaskSpec("headline", data, label="headline", type="seq2seq"), TaskSpec("topic", data)],
            output_dir=f"{tmp}/run",
            strategy=args.strategy,
            epochs=args.epochs,
            batch_size=16,
            lr=args.lr,
            backbone_lr=args.backbone_lr,
            max_length=args.max_length,
            val_fraction=0.05,
            patience=0,
            progress=False,
        )
        started = time.perf_counter()
        result = train(config)
        train_seconds = time.perf_counter() - started
        model, tokenizer = load_for_inference(f"{tmp}/run")
        bodies, headlines = [r["text"] for r in test], [r["headline"] for r in test]
        runs = {}
        for beams in (1, args.beams):
            model.heads["headline"].set_generation(num_beams=beams)
            started = time.perf_counter()
            predictions = predict_texts(model, tokenizer, bodies, batch_size=32)
            runs[beams] = (predictions, time.perf_counter() - started)
    greedy = runs[1][0]
    topic_accuracy = sum(p["topic"]["label"] == r["label"] for p, r in zip(greedy, test, strict=True)) / len(test)

    print(machine_line())
    print(
        f"\nBBC News headlines: {len(train_idx)} training articles (5% of them for per-epoch validation), "
        f"{len(test)} held out (seed 0); MiniLM-L6 encoder + warm-started 6-layer decoder, strategy {args.strategy}, "
        f"{args.epochs} epochs, batch 16, body cut to {args.max_length} tokens, torch threads {torch.get_num_threads()}"
    )
    print(f"training: {train_seconds:.0f} s (budget 900 s), {result.metrics['trainable_params']:,} parameters")
    print(f"\n{'headlines from':34}{'ROUGE-1':>9}{'ROUGE-2':>9}{'ROUGE-L':>9}{'seconds':>9}")
    table = [("lead baseline (first 10 words)", [lead(b) for b in bodies], 0.0)]
    table += [
        (f"headkit seq2seq, {'greedy' if b == 1 else f'beam {b}'}", [p["headline"] for p in preds], secs)
        for b, (preds, secs) in runs.items()
    ]
    for name, predictions, seconds in table:
        scores = rouge(predictions, headlines)
        print(f"{name:34}" + "".join(f"{scores[k]:9.2f}" for k in KINDS) + f"{seconds:9.1f}")
    print(f"\ntopic head (same model, same pass): accuracy {topic_accuracy:.4f} on the {len(test)} held-out articles")
    print(f"\nfive held-out examples (beam {args.beams}):")
    for row, prediction in list(zip(test, runs[args.beams][0], strict=True))[:5]:
        print(
            f"  reference: {row['headline']}\n  headkit:   {prediction['headline']}\n  lead:      {lead(row['text'])}\n"
        )


if __name__ == "__main__":
    main()
