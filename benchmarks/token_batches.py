"""Inference batches by tokens against fixed counts: which budget predicts fastest?

`predict_texts` sorts texts by token length and cuts them into batches of at most `batch_size`
texts and, with a budget, at most `max_tokens` padded tokens (texts x the longest one's length).
This times it on texts of very different lengths (Rotten Tomatoes snippets of ~30 tokens and BBC
News articles cut at `--max-length`, half each, from the built-in `reviews_and_news`) with the
shipped MiniLM and 4 heads, at several budgets, against the fixed count of 64 a pass that
predict used before, measured in the same run (best of `--rounds`, interleaved). It also checks
that every setting gives the same labels. `--long` times news articles alone, where the budget
decides every batch; `--features` times the feature-cache pass of frozen training
(`compute_features`) the same way. The first line names the machine.

    python benchmarks/token_batches.py [--n 600] [--max-length 512] [--rounds 5] [--long] [--features]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

# (name, batch_size, max_tokens): the baseline first
SETTINGS = [
    ("fixed 64 (before)", 64, None),
    ("fixed 16", 16, None),
    ("64, 2048 tokens", 64, 2048),
    ("64, 4096 tokens", 64, 4096),
    ("64, 8192 tokens", 64, 8192),
    ("64, 16384 tokens", 64, 16384),
    ("256, 8192 tokens", 256, 8192),
]


def texts(n: int, long: bool) -> list[str]:
    """n texts, half short reviews and half long news articles, in the built-in data's shuffled
    order; `long`: news articles only."""
    import random

    from headkit.data.builtin import bbc_news, reviews_and_news

    if long:
        return [r["text"] for r in random.Random(0).sample(bbc_news(), n)]
    return [r["text"] for r in reviews_and_news(per_source=n // 2)]


def main() -> None:
    from inference import best_times
    from machine import machine_line

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long", action="store_true", help="news articles only (most at the length cut)")
    parser.add_argument("--features", action="store_true", help="time the feature-cache pass instead")
    args = parser.parse_args()
    print(machine_line())
    if args.features:
        feature_pass(texts(args.n, args.long), args.max_length, args.rounds, best_times)
        return

    from inference import TAGS, four_head_minilm

    from headkit.ship.predict import predict_texts

    model, tokenizer = four_head_minilm(("pooler", "mean", "mean"), TAGS[:7])  # no MISC, as measured
    items = texts(args.n, args.long)
    lengths = sorted(len(ids) for ids in tokenizer(items, truncation=True, max_length=args.max_length)["input_ids"])
    print(
        f"{len(items)} texts, tokens per text: median {lengths[len(lengths) // 2]}, "
        f"90th percentile {lengths[len(lengths) * 9 // 10]}, max {lengths[-1]} (cut at {args.max_length})"
    )

    answers = {}

    def run(batch_size: int, max_tokens: int | None, name: str):
        def go() -> None:
            answers[name] = predict_texts(
                model, tokenizer, items, batch_size=batch_size, max_length=args.max_length, max_tokens=max_tokens
            )

        return go

    runs = {name: run(size, budget, name) for name, size, budget in SETTINGS}
    predict_texts(model, tokenizer, items[:64], batch_size=64, max_length=args.max_length)  # warm-up
    best = best_times(runs, args.rounds)
    base_name = SETTINGS[0][0]
    base = best[base_name]
    reference = answers[base_name]
    print(f"{'setting':<20} {'s':>7} {'texts/s':>8} {'vs fixed 64':>11}  decisions unlike fixed 64's")
    for name, *_ in SETTINGS:
        pairs = [(decisions(a), decisions(b)) for a, b in zip(answers[name], reference, strict=True)]
        unlike = sum(x != y for a, b in pairs for x, y in zip(a, b, strict=True))
        total = sum(len(a) for a, _ in pairs)
        speed = f"{best[name]:7.2f} {len(items) / best[name]:8.1f} {base / best[name]:10.2f}x"
        print(f"{name:<20} {speed}  {unlike} of {total}")


def feature_pass(items: list[str], max_length: int, rounds: int, best_times) -> None:
    """The frozen-training feature cache's backbone pass (`compute_features`: mean-pooled vectors
    and every position of the last layer) in fixed batches of 64 against the default budget."""
    from headkit import MultiHeadModel, load_processor
    from headkit.adapter import LAST_LAYER
    from headkit.data import MAX_TOKENS
    from headkit.data.batching import EncodedData
    from headkit.training.features import compute_features

    tokenizer = load_processor("minilm")
    model = MultiHeadModel.from_pretrained("minilm", heads={"t": {"type": "classification", "labels": ["a", "b"]}})
    data = EncodedData(tokenizer(items, truncation=True, max_length=max_length)["input_ids"])
    settings = {"fixed 64 (before)": None, f"64, {MAX_TOKENS} tokens": MAX_TOKENS}
    caches = {}

    def run(name: str, budget: int | None):
        def go() -> None:
            caches[name] = compute_features(model, data, {"mean"}, {LAST_LAYER}, 64, max_tokens=budget, progress=False)

        return go

    best = best_times({name: run(name, budget) for name, budget in settings.items()}, rounds)
    base, first = best["fixed 64 (before)"], caches["fixed 64 (before)"]
    print(f"feature-cache pass over {len(data)} texts (cut at {max_length} tokens):")
    for name in settings:
        pooled = (caches[name].pooled["mean"] - first.pooled["mean"]).abs().max().item()
        tokens = (caches[name].tokens[LAST_LAYER].float() - first.tokens[LAST_LAYER].float()).abs().max().item()
        gaps = f"largest difference: pooled {pooled:.1e}, per-token (bfloat16) {tokens:.1e}"
        print(f"{name:<20} {best[name]:7.2f} s {base / best[name]:6.2f}x  {gaps}")


def decisions(prediction: dict) -> list:
    """A text's decisions: its two classes, its genres and each word's tag (untrained heads: these
    check that batching changes nothing, not that they are right)."""
    tags = [w["tag"] for w in prediction["entities"]]
    return [prediction["sentiment"]["label"], prediction["topic"]["label"], prediction["genres"]["labels"], *tags]


if __name__ == "__main__":
    main()
