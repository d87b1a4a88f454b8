"""What advise looks at: the labelled data (task type, class balance, lengths, domain shift)
and the hardware. Label counting and checking are asked of the head type that will train."""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headkit.data.batching import check_pair_template, text_values
from headkit.data.files import SEQUENCE_TYPES, column_values
from headkit.data.readers import read_rows
from headkit.errors import DataError, HeadkitError, UsageError
from headkit.heads import LabelSource, head_class, head_types_for_tables


@dataclass
class DataFacts:
    source: str
    text: str
    label: str
    task_type: str  # classification | multilabel | regression | token-classification (tags per word)
    labelled: int  # labelled examples (tags: sentences)
    # examples per class (multilabel: per label; tags: entities per type); empty for regression
    class_counts: dict[str, int]
    tokens_median: float
    tokens_p95: float
    truncated_share: float  # labelled texts longer than max_length
    fragmented_share: float  # words split into 3+ pieces
    unlabelled: int  # texts without a label (rows with an empty label + --unlabelled)
    labelled_tokens: int
    unlabelled_tokens: int
    text_pair: str | None = None  # the second text's column (sentence pairs: tokens count both texts)

    @property
    def n_classes(self) -> int:
        return len(self.class_counts)

    @property
    def min_per_class(self) -> int:
        return min(self.class_counts.values()) if self.class_counts else 0

    @property
    def imbalance(self) -> float:
        return max(self.class_counts.values()) / self.min_per_class if self.class_counts else 1.0


@dataclass
class Hardware:
    device: str  # cuda | cpu
    name: str
    cores: int
    memory_gb: float


WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def _texts(rows: list[dict[str, Any]], column: str, source: str) -> list[str]:
    return as_texts(column_values(rows, column, source))


def as_texts(values: list[Any]) -> list[str]:
    """The non-empty texts of a text column; a list of words (tagging data) as one text."""
    texts = [" ".join(str(w) for w in v) if isinstance(v, SEQUENCE_TYPES) else v for v in values]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value)


CLASSES, LABEL_SETS, TARGETS = "classification", "multilabel", "regression"  # the head types advise chooses from


def _task_type(values: list[Any]) -> str:
    """Lists (or '|'-joined CSV cells) are label sets; numbers with a fraction (mean ratings:
    2.875) or many distinct whole values are a regression target; anything else is classes
    (whole numbers with few values, such as 1-5 stars or class ids)."""
    if any(isinstance(v, SEQUENCE_TYPES) or (isinstance(v, str) and "|" in v) for v in values):
        return LABEL_SETS
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return CLASSES
    if any(not n.is_integer() for n in numbers if np.isfinite(n)) or len(set(numbers)) > max(20, len(numbers) // 4):
        return TARGETS
    return CLASSES


def fragmented_share(texts: list[str], tokenizer, limit: int = 50_000) -> float:
    """Share of words the tokenizer splits into 3 or more pieces: a sign the backbone has not
    seen this vocabulary (a domain shift), cheap to compute and independent of labels."""
    words = [w for t in texts for w in WORD.findall(t)][:limit]
    if not words:
        return 0.0
    counts = Counter(words)
    pieces = {w: len(tokenizer.tokenize(w)) for w in counts}
    return sum(n for w, n in counts.items() if pieces[w] >= 3) / len(words)


def read_facts(
    data: str,
    text: str,
    label: str,
    tokenizer,
    max_length: int = 128,
    unlabelled: list[str] | None = None,
    rows: list[dict[str, Any]] | None = None,
    text_pair: str | None = None,
) -> DataFacts:
    """Everything the rules look at, from the user's file (and optional unlabelled text).

    `rows`: the file's rows when the caller has read them already. `text_pair`: the column of each
    row's second text (sentence pairs), whose tokens count with the first's, as training encodes them.
    """
    rows = read_rows(data) if rows is None else rows
    if not rows:
        raise DataError(f"{data} holds no rows; advise needs labelled examples")
    values = column_values(rows, label, data)
    texts = column_values(rows, text, data)
    if text_pair:  # refused as training refuses them: an empty second text, a tokenizer without pairs
        check_pair_template(tokenizer, data)
        seconds = text_values(rows, text_pair, data)
    labelled = [(t, v) for t, v in zip(texts, values, strict=True) if not _is_missing(v)]
    if not labelled:
        raise DataError(f"column '{label}' of {data} has no labels; advise needs labelled examples")
    words = any(isinstance(t, SEQUENCE_TYPES) for t, _ in labelled)
    if words and any(isinstance(v, SEQUENCE_TYPES) for _, v in labelled):  # a tag per word: token tags
        if text_pair:
            raise DataError(f"{data}: token tags read one list of words per row; --text_pair does not apply")
        task_type, counts, labelled_texts = _tag_facts(labelled, text, label, data)
    else:  # one label per row (on word lists: of the sentence they make, as training reads them)
        labelled = [(" ".join(map(str, t)) if isinstance(t, SEQUENCE_TYPES) else t, v) for t, v in labelled]
        task_type, counts = _label_facts(labelled, text, label, data)
        labelled_texts = [t for t, _ in labelled]
    pairs = [s for s, v in zip(seconds, values, strict=True) if not _is_missing(v)] if text_pair else None
    free = unlabelled_texts(rows, text, [label], unlabelled)
    return DataFacts(
        source=data,
        text=text,
        label=label,
        task_type=task_type,
        labelled=len(labelled),
        class_counts=counts,
        fragmented_share=fragmented_share(labelled_texts + (pairs or []) + free[:5000], tokenizer),
        text_pair=text_pair,
        **_text_facts(tokenizer, labelled_texts, pairs, free, max_length),
    )


def unlabelled_texts(rows: list[dict[str, Any]], text: str, labels: list[str], files: list[str] | None) -> list[str]:
    """The texts of the rows without a label for any of `labels` (training leaves them out; a
    tagger's are word lists, joined), and of the `--unlabelled` files."""
    free = as_texts([row.get(text) for row in rows if all(_is_missing(row.get(label)) for label in labels)])
    for source in files or []:
        free += _texts(read_rows(source), text, source)
    return free


def _text_facts(
    tokenizer, texts: list[str], pairs: list[str] | None, free: list[str], max_length: int
) -> dict[str, Any]:
    """The DataFacts fields measured in tokens: the labelled texts' (or pairs') lengths, and the
    unlabelled texts'."""
    lengths = np.array(_token_counts(tokenizer, texts, pairs))
    return {
        "tokens_median": float(np.median(lengths)),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "truncated_share": float(np.mean(lengths > max_length)),
        "labelled_tokens": int(np.minimum(lengths, max_length).sum()),
        "unlabelled": len(free),
        "unlabelled_tokens": _free_tokens(tokenizer, free),
    }


def _token_counts(tokenizer, texts: list[str], second: list[str] | None = None) -> list[int]:
    """Each text's (or pair's) full length in tokens; verbose=False: no too-long warning."""
    return [len(ids) for ids in tokenizer(texts, second, truncation=False, verbose=False)["input_ids"]]


def _free_tokens(tokenizer, free: list[str], limit: int = 20_000) -> int:
    """Tokens of the unlabelled texts, the rest estimated from the first `limit`."""
    counted = sum(_token_counts(tokenizer, free[:limit])) if free else 0
    return round(counted * len(free) / limit) if len(free) > limit else counted


def run_facts(
    heads: list[DataFacts], rows: list[dict[str, Any]], tokenizer, max_length: int, unlabelled: list[str] | None
) -> DataFacts:
    """The facts a run that trains every head is costed by: its examples are the rows labelled for
    any head (training leaves out the others: data/tasks.py `labelled_rows`), its unlabelled text
    the rows labelled for none. One head's facts are already that."""
    if len(heads) == 1:
        return heads[0]
    first = heads[0]
    texts = [
        " ".join(map(str, t)) if isinstance(t, SEQUENCE_TYPES) else t
        for t in column_values(rows, first.text, first.source)
    ]
    seconds = column_values(rows, first.text_pair, first.source) if first.text_pair else None
    kept = [i for i, row in enumerate(rows) if any(not _is_missing(row.get(f.label)) for f in heads)]
    free = unlabelled_texts(rows, first.text, [f.label for f in heads], unlabelled)
    pairs = [seconds[i] for i in kept] if seconds else None
    return dataclasses.replace(
        max(heads, key=lambda f: f.labelled),
        labelled=len(kept),
        **_text_facts(tokenizer, [texts[i] for i in kept], pairs, free, max_length),
    )


def _label_facts(labelled: list[tuple[Any, Any]], text: str, label: str, data: str) -> tuple[str, dict[str, int]]:
    """One label (or label set, or target) per text: the head type it asks for and the examples
    per class, checked as training checks them."""
    bad = next((t for t, _ in labelled if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise DataError(f"text column '{text}' of {data} has an empty or non-text value: {bad!r}")
    label_values = [v for _, v in labelled]
    task_type = _task_type(label_values)
    codec = head_class(task_type).codec
    codec.label_names([{label: v} for v in label_values], LabelSource(label, label, data))  # training's own checks
    counts = codec.label_counts(label_values)
    scarce = {c: n for c, n in counts.items() if n < 2}
    if scarce:
        raise DataError(
            f"class(es) {sorted(scarce)} of column '{label}' have a single example; every class needs at least 2 "
            "(few-shot training pairs each example with another of its class): label more, or drop the class"
        )
    return task_type, counts


def _tag_facts(
    labelled: list[tuple[Any, Any]], text: str, label: str, data: str
) -> tuple[str, dict[str, int], list[str]]:
    """A list of words and one tag per word per row: the tagging head type, the entities per type
    (tagged words per tag when the tags are not BIO), and each sentence as one text."""
    task_type = next(t for t in head_types_for_tables() if head_class(t).codec.inputs == "words")
    for i, (words, tags) in enumerate(labelled, start=1):
        if not isinstance(words, SEQUENCE_TYPES) or not isinstance(tags, SEQUENCE_TYPES) or len(words) != len(tags):
            raise DataError(
                f"tagged sentence {i} of {data}: column '{text}' needs a list of words and column '{label}' a "
                "list of as many tags (one per word)"
            )
    if text != "tokens":  # what training reads words from (CoNLL files and datasets name it so)
        raise DataError(f"{data}: a tagger trains on the words in a column named 'tokens'; use --text_column tokens")
    counts = head_class(task_type).codec.label_counts([tags for _, tags in labelled])
    if not counts:
        raise DataError(f"column '{label}' of {data} tags every word 'O': there is nothing to learn to tag")
    return task_type, counts, as_texts([words for words, _ in labelled])


def detect_hardware(device: str = "auto") -> Hardware:
    """The machine the plan will run on: a CUDA GPU if there is one (or asked for), else the CPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not '{device}'")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device == "cuda" and not torch.cuda.is_available():
        raise HeadkitError("--device cuda, but torch sees no CUDA GPU here; use --device auto or cpu")
    if device != "cpu" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware("cuda", props.name, cores, props.total_memory / 2**30)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = 0.0
    return Hardware("cpu", f"CPU, {cores} cores", cores, memory)
