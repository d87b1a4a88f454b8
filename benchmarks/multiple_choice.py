"""Multiple choice with a `multiple-choice` head: which of four BBC headlines is this article's own?

The built-in `bbc_headlines` data (2,225 articles, each with its headline) in its fixed, seeded
80/20 split by article (`headkit.builtin_dataset`): every article gets four headlines, its own and
three others of the same topic from the same split (seeded; the right one's place is random), so
the topic alone never tells. Accuracy on the 445 test articles for

- MiniLM's own embeddings (all-MiniLM-L6-v2 through sentence-transformers), no training: the
  headline whose embedding is closest (cosine) to the article's;
- a headkit `multiple-choice` head on MiniLM trained on the 1,780 training articles: each
  (article, headline) read as one sentence pair, softmax over the four, with `--strategy frozen`
  (cached features) and `--strategy lora`, every other setting at its default.

Every encoder reads 256 tokens (MiniLM's sentence-transformers limit; a pair cuts the article).
Times: training, and scoring the test articles' 1,780 pairs.

    python benchmarks/multiple_choice.py [--strategies frozen,lora] [--out runs/multiple-choice]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_LENGTH = 256
CHOICES = 4


def choice_rows(split, seed: int) -> list[dict]:
    """Each article with its own headline and three of its topic's others, in a seeded random order."""
    rng = np.random.default_rng(seed)
    articles, headlines, topics = list(split["text"]), list(split["headline"]), list(split["label"])
    by_topic: dict[str, list[int]] = {}
    for i, topic in enumerate(topics):
        by_topic.setdefault(topic, []).append(i)
    rows = []
    for i, article in enumerate(articles):
        others = [j for j in by_topic[topics[i]] if headlines[j] != headlines[i]]
        picked = [headlines[j] for j in rng.choice(others, CHOICES - 1, replace=False)]
        answer = int(rng.integers(CHOICES))
        picked.insert(answer, headlines[i])
        rows.append({"text": article, "choices": picked, "label": answer})
    return rows


def minilm(rows: list[dict]) -> tuple[float, float]:
    from sentence_transformers import SentenceTransformer

    from headkit.backbone.resolve import resolve_model

    model = SentenceTransformer(str(resolve_model("minilm").path), device="cpu")
    model.max_seq_length = MAX_LENGTH
    started = time.perf_counter()
    articles = model.encode([r["text"] for r in rows], normalize_embeddings=True, batch_size=64)
    headlines = model.encode([h for r in rows for h in r["choices"]], normalize_embeddings=True, batch_size=64)
    cosines = np.einsum("nd,nkd->nk", articles, headlines.reshape(len(rows), CHOICES, -1))
    right = cosines.argmax(axis=1) == np.array([r["label"] for r in rows])
    return float(right.mean()), time.perf_counter() - started


def choice_head(strategy: str, train: list[dict], test: list[dict], out: Path) -> tuple[float, float, float, dict]:
    import headkit

    started = time.perf_counter()
    result = headkit.train(
        "minilm", {"answer": {"type": "multiple-choice", "label": "label"}}, train_dataset=train, strategy=strategy,
        max_length=MAX_LENGTH, output_dir=out / strategy, overwrite=True, progress=False, seed=0,
    )  # fmt: skip
    trained = time.perf_counter() - started
    started = time.perf_counter()
    scores = result.model.evaluate(test, batch_size=64)
    return scores["answer"]["accuracy"], trained, time.perf_counter() - started, result.metrics["heads"]["answer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="frozen,lora")
    parser.add_argument("--out", default="runs/multiple-choice")
    args = parser.parse_args()
    from machine import machine_line

    import headkit

    data = headkit.builtin_dataset("bbc_headlines")
    train, test = choice_rows(data["train"], seed=0), choice_rows(data["test"], seed=1)
    accuracy, seconds = minilm(test)
    rows = [("MiniLM embeddings, closest headline", accuracy, None, seconds, None)]
    print(rows[-1], flush=True)
    for strategy in args.strategies.split(","):
        accuracy, trained, scored, validation = choice_head(strategy, train, test, Path(args.out))
        rows.append((f"headkit multiple-choice head, {strategy}", accuracy, trained, scored, validation))
        print(rows[-1], flush=True)
    print(f"\n{machine_line()}")
    print(f"BBC article -> its own headline among {CHOICES} of its topic, {len(test)} test articles", end="")
    print(f" ({MAX_LENGTH} tokens):")
    print(f"{'method':44}{'accuracy':>10}{'train s':>9}{'score s':>9}")
    for name, accuracy, trained, scored, _ in rows:
        shown_train = f"{trained:9.0f}" if trained is not None else f"{'-':>9}"
        print(f"{name:44}{accuracy:10.4f}{shown_train}{scored:9.1f}")


if __name__ == "__main__":
    main()
