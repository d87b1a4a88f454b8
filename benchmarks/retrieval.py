"""Retrieval with an embedding head: a BBC News headline finds its own article.

The built-in `bbc_headlines` data (2,225 articles, each with its headline) in its fixed, seeded
80/20 split by article (`headkit.builtin_dataset`): 1,780 training pairs, 445 test articles. Each
test headline is a query, the 445 test articles are the corpus, and the query's own article is
the one right answer: recall@1 and MRR@10 over the 445 queries, for

- BM25 (bm25s, English stop words), no training;
- MiniLM's own embeddings (all-MiniLM-L6-v2 through sentence-transformers), no training;
- a headkit `embedding` head on MiniLM trained on the 1,780 training pairs (headline -> article,
  in-batch negatives), with `--strategy frozen` (cached features) and `--strategy lora`;
- with `--joint` strategies, the embedding head trained together with a topic head (the headline's
  BBC topic) on one backbone, against a topic head trained alone with the same strategy: topic
  accuracy on the 445 test headlines for both, over `--seeds` (each a seed of both runs; the
  table shows their means);
- with `--rerank` strategies, MiniLM's top 20 articles per headline reordered by a `cross-encoder`
  head on MiniLM, trained on the training headlines with their own article (relevant) and one hard
  negative each, mined by sentence-transformers' `mine_hard_negatives` with MiniLM as the reranked
  search finds them: drawn at random from its top 30 training articles, leaving out any within 5%
  of the own article's similarity (`relative_margin=0.05`: near-copies of the story, which BBC
  News holds; the most similar article alone taught the head nothing: AUC 0.57 after an epoch).

Every encoder reads 256 tokens (MiniLM's sentence-transformers limit). Times: training, and
encoding the 890 test texts.

    python benchmarks/retrieval.py [--strategies frozen,lora] [--joint frozen] [--seeds 0,1,2] [--rerank lora]
                                   [--out runs/retrieval]
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
CUTOFF = 10


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """Query i's right answer is document i: its place (1 = first) by score, ties against it."""
    own = np.diag(scores)[:, None]
    return (scores >= own).sum(axis=1)


def metrics(ranks: np.ndarray) -> dict[str, float]:
    return {
        "recall@1": float(np.mean(ranks == 1)),
        "mrr@10": float(np.mean(np.where(ranks <= CUTOFF, 1.0 / ranks, 0.0))),
    }


def bm25(queries: list[str], corpus: list[str]) -> tuple[dict[str, float], float]:
    import bm25s

    started = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    found, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=CUTOFF,
                                  show_progress=False)  # fmt: skip
    ranks = np.array([list(row).index(i) + 1 if i in row else CUTOFF + 1 for i, row in enumerate(found)])
    return metrics(ranks), time.perf_counter() - started


def minilm_model():
    """all-MiniLM-L6-v2 through sentence-transformers, reading MAX_LENGTH tokens."""
    from sentence_transformers import SentenceTransformer

    from headkit.backbone.resolve import resolve_model

    model = SentenceTransformer(str(resolve_model("minilm").path), device="cpu")
    model.max_seq_length = MAX_LENGTH
    return model


def minilm_scores(queries: list[str], corpus: list[str]) -> np.ndarray:
    """Cosine similarities of MiniLM's own embeddings: (queries, corpus)."""
    model = minilm_model()
    q = model.encode(queries, normalize_embeddings=True, batch_size=64)
    c = model.encode(corpus, normalize_embeddings=True, batch_size=64)
    return q @ c.T


def minilm(queries: list[str], corpus: list[str]) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    scores = minilm_scores(queries, corpus)
    return metrics(ranks_from_scores(scores)), time.perf_counter() - started


RERANKED = 20


def reranked(strategy: str, train, queries: list[str], corpus: list[str], out: Path):
    """MiniLM's top RERANKED per query, reordered by a cross-encoder head trained on mined negatives."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    import headkit

    pairs = Dataset.from_dict({"query": list(train["headline"]), "article": list(train["text"])})
    mined = mine_hard_negatives(
        pairs, minilm_model(), range_max=30, relative_margin=0.05, num_negatives=1, sampling_strategy="random",
        output_format="labeled-pair", batch_size=64, verbose=False,
    )  # fmt: skip
    query, document, label = mined.column_names
    rows = [{"text": r[query], "document": r[document], "relevant": int(r[label])} for r in mined]
    print(f"cross-encoder rows: {len(rows)} ({sum(r['relevant'] for r in rows)} relevant)", flush=True)
    started = time.perf_counter()
    result = headkit.train(
        "minilm", {"rerank": {"type": "cross-encoder", "label": "relevant", "text_pair": "document"}},
        train_dataset=rows, strategy=strategy, max_length=MAX_LENGTH, output_dir=out / f"rerank-{strategy}",
        overwrite=True, progress=False, seed=0,
    )  # fmt: skip
    trained = time.perf_counter() - started
    top = np.argsort(-minilm_scores(queries, corpus), axis=1)[:, :RERANKED]
    started = time.perf_counter()
    ranks = []
    for i, query in enumerate(queries):
        order = [int(top[i][r["index"]]) for r in result.model.rank(query, [corpus[j] for j in top[i]])]
        ranks.append(order.index(i) + 1 if i in order else RERANKED + 1)
    return metrics(np.array(ranks)), trained, time.perf_counter() - started


EMBED = {"type": "embedding", "label": "text", "text": "headline"}  # headline -> its article
TOPIC = {"label": "label", "text": "headline"}  # the headline's topic


def embedding_head(strategy: str, train, queries: list[str], corpus: list[str], out: Path, heads=None, seed=0):
    import headkit

    started = time.perf_counter()
    result = headkit.train(
        "minilm",
        heads or {"embed": EMBED},
        train_dataset=train,
        strategy=strategy,
        max_length=MAX_LENGTH,
        output_dir=out / strategy,
        overwrite=True,
        progress=False,
        seed=seed,
    )
    trained = time.perf_counter() - started
    started = time.perf_counter()
    q = result.model.encode(queries, batch_size=64)
    c = result.model.encode(corpus, batch_size=64)
    encoded = time.perf_counter() - started
    return metrics(ranks_from_scores(q @ c.T)), trained, encoded, result


def topic_accuracy(model, test) -> float:
    return model.evaluate(test, heads=["topic"], batch_size=64)["topic"]["accuracy"]


def topic_alone(strategy: str, train, test, out: Path, seed: int = 0) -> tuple[float, float]:
    import headkit

    started = time.perf_counter()
    result = headkit.train(
        "minilm", {"topic": TOPIC}, train_dataset=train, strategy=strategy, max_length=MAX_LENGTH,
        output_dir=out / f"topic-{strategy}", overwrite=True, progress=False, seed=seed,
    )  # fmt: skip
    return topic_accuracy(result.model, test), time.perf_counter() - started


def joint(strategy: str, data, queries: list[str], corpus: list[str], out: Path, seeds: list[int]):
    """The embedding + topic run and the topic head alone, once per seed: the mean scores and
    times, and each seed's topic accuracies (joint, alone) and the epochs each head was taken from."""
    test, runs = data["test"], []
    for seed in seeds:
        alone, alone_s = topic_alone(strategy, data["train"], test, out / f"seed{seed}", seed)
        heads = {"embed": EMBED, "topic": TOPIC}
        scores, trained, encoded, result = embedding_head(
            strategy, data["train"], queries, corpus, out / f"seed{seed}" / "joint", heads, seed
        )
        epochs = result.metrics.get("head_best_epochs") or result.metrics["best_epoch"]
        runs.append((scores, trained, encoded, topic_accuracy(result.model, test), alone, alone_s, epochs))
        print(f"seed {seed}: {runs[-1]}", flush=True)
    mean = {k: float(np.mean([r[0][k] for r in runs])) for k in runs[0][0]}
    topic = (float(np.mean([r[3] for r in runs])), float(np.mean([r[4] for r in runs])), np.mean([r[5] for r in runs]))
    per_seed = [(seed, r[3], r[4], r[6]) for seed, r in zip(seeds, runs, strict=True)]
    return mean, float(np.mean([r[1] for r in runs])), float(np.mean([r[2] for r in runs])), (*topic, per_seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="frozen,lora")
    parser.add_argument("--joint", default="", help="strategies of the joint embedding + topic runs")
    parser.add_argument("--seeds", default="0", help="seeds of the joint runs and their topic-only runs")
    parser.add_argument("--rerank", default="", help="strategies of the cross-encoder that reranks MiniLM's top 20")
    parser.add_argument("--out", default="runs/retrieval")
    args = parser.parse_args()
    from machine import machine_line

    import headkit

    data = headkit.builtin_dataset("bbc_headlines")
    test = data["test"]
    queries, corpus = list(test["headline"]), list(test["text"])
    scores, seconds = bm25(queries, corpus)
    rows = [("BM25 (bm25s)", scores, None, seconds, None)]
    print(rows[-1], flush=True)
    scores, seconds = minilm(queries, corpus)
    rows.append(("MiniLM embeddings (sentence-transformers)", scores, None, seconds, None))
    print(rows[-1], flush=True)
    for strategy in [s for s in args.strategies.split(",") if s]:
        scores, trained, encoded, _ = embedding_head(strategy, data["train"], queries, corpus, Path(args.out))
        rows.append((f"headkit embedding head, {strategy}", scores, trained, encoded, None))
        print(rows[-1], flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    for strategy in [s for s in args.joint.split(",") if s]:
        scores, trained, encoded, topic = joint(strategy, data, queries, corpus, Path(args.out) / "joint", seeds)
        rows.append((f"embedding + topic heads, {strategy}", scores, trained, encoded, topic))
        print(rows[-1], flush=True)
    for strategy in [s for s in args.rerank.split(",") if s]:
        scores, trained, encoded = reranked(strategy, data["train"], queries, corpus, Path(args.out))
        rows.append((f"MiniLM top {RERANKED} + cross-encoder, {strategy}", scores, trained, encoded, None))
        print(rows[-1], flush=True)
    print(f"\n{machine_line()}")
    print(f"BBC headline -> its article among the {len(corpus)} test articles ({MAX_LENGTH} tokens):")
    print(f"{'method':44}{'recall@1':>10}{'MRR@10':>9}{'train s':>9}{'encode s':>10}")
    for name, s, trained, encoded, _ in rows:
        shown_train = f"{trained:9.0f}" if trained is not None else f"{'-':>9}"
        shown_encode = f"{encoded:10.1f}" if encoded is not None else f"{'-':>10}"
        print(f"{name:44}{s['recall@1']:10.4f}{s['mrr@10']:9.4f}{shown_train}{shown_encode}")
    for name, _, _, _, topic in rows:
        if topic is not None:
            print(f"{name}, mean of seeds {args.seeds}: topic accuracy {topic[0]:.4f} (a topic head alone: "
                  f"{topic[1]:.4f}, {topic[2]:.0f} s)")  # fmt: skip
            for seed, together, alone, epochs in topic[3]:
                print(f"  seed {seed}: joint {together:.4f}, alone {alone:.4f}; joint run's best epochs {epochs}")


if __name__ == "__main__":
    main()
