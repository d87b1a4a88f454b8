"""Encoded examples in, padded tensor batches out.

    rows -> EncodedData (token ids or pixels + each head's label array)
         -> length-grouped, dynamically padded batches (collate)

Tasks on different sources become separate EncodedData whose examples are joined (`concat`),
each missing the other heads' labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from headkit.data.files import column_values
from headkit.data.pixels import Pixels
from headkit.errors import DataError, UsageError
from headkit.heads import IGNORE_INDEX, head_class

T = TypeVar("T")


@dataclass
class EncodedData(Dataset):
    """Token ids (text) or pixel tensors (images) plus each head's labels, one entry per example.

    Heads absent from `labels` are missing for every example here. An example may be several
    rows the heads read apart: a preference pair (reward heads) holds the chosen text's ids in
    `input_ids` and the rejected one's in `more_ids`, a text pair (embedding heads) the text and
    its partner, a multiple-choice example (context, choice) for its first choice and for the
    others. Sentence pairs (a task with `text_pair`, or choices) are one sequence each,
    `tokenizer(text, text_pair)`; `token_type_ids` (and `more_types`) keep the segment ids the
    tokenizer gave them (BERT tells the two texts apart by them: without them a pair model would
    read one run-on text)."""

    input_ids: list[list[int]]
    labels: dict[str, Any] = field(default_factory=dict)  # head -> np.ndarray or list of per-token lists
    texts: list[Any] = field(default_factory=list)
    pixels: Pixels | None = None  # image data (N examples of (C, H, W), on disk); input_ids are then empty lists
    more_ids: list[list[list[int]]] | None = None  # each example's further rows (as many for every example)
    token_type_ids: list[list[int]] | None = None  # segment ids, one per token (sentence pairs)
    # Rows that must stay on one side of a validation split (the windows of one QA context and its
    # questions), as a group id per row; None: each row is its own.
    groups: list[int] | None = None
    # The question each row is a window of (heads.qa.Question: its text, context and answers as
    # given), for QA data; None elsewhere.
    questions: list[Any] | None = None
    # Per head, the names of labels training never had (evaluation data only, `prepare(...,
    # unseen_labels=True)`): the label ids from the head's own count on stand for them, in order.
    unseen: dict[str, list[str]] = field(default_factory=dict)
    more_types: list[list[list[int]]] | None = None  # the further rows' segment ids (choices as sentence pairs)

    def __post_init__(self) -> None:
        if isinstance(self.pixels, torch.Tensor):  # (N, C, H, W) made in memory (library use)
            self.pixels = Pixels.of(self.pixels)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        example = {"index": i, "input_ids": self.input_ids[i], "labels": {h: y[i] for h, y in self.labels.items()}}
        if self.pixels is not None:
            example["pixel_values"] = self.pixels[i]
        if self.more_ids is not None:
            example["more_ids"] = self.more_ids[i]
        if self.token_type_ids is not None:
            example["token_type_ids"] = self.token_type_ids[i]
        if self.more_types is not None:
            example["more_types"] = self.more_types[i]
        return example

    @property
    def rows_per_example(self) -> int:
        """How many rows the heads read per example: 1, 2 for a pair, the choice count for choices."""
        return 1 + len(self.more_ids[0]) if self.more_ids else 1

    def subset(self, indices: list[int] | np.ndarray) -> EncodedData:
        idx = [int(i) for i in indices]
        labels = {h: (y[idx] if isinstance(y, np.ndarray) else [y[i] for i in idx]) for h, y in self.labels.items()}
        texts = [self.texts[i] for i in idx] if self.texts else []
        pixels = self.pixels.subset(idx) if self.pixels is not None else None  # indices, not pixels
        return EncodedData(
            [self.input_ids[i] for i in idx], labels, texts, pixels, _pick(self.more_ids, idx),
            _pick(self.token_type_ids, idx), _pick(self.groups, idx), _pick(self.questions, idx), self.unseen,
            _pick(self.more_types, idx),
        )  # fmt: skip

    def lengths(self) -> list[int]:
        """Each example's length: its longest row's (every row of a batch pads to the longest)."""
        if self.more_ids is not None:
            return [max(len(a), *map(len, more)) for a, more in zip(self.input_ids, self.more_ids, strict=True)]
        return [len(x) or 1 for x in self.input_ids]  # images: all one length


def _pick(values: list[T] | None, indices: list[int]) -> list[T] | None:
    return None if values is None else [values[i] for i in indices]


def concat(parts: list[EncodedData], heads: dict[str, str]) -> EncodedData:
    """Join datasets; each example gets a 'missing' label for heads its dataset lacks.

    `heads` maps head names to types; labels are joined by each type's codec."""
    input_ids, texts = [], []
    for part in parts:
        input_ids += part.input_ids
        texts += part.texts or [None] * len(part)
    images = [p.pixels is not None for p in parts]
    if any(images) and not all(images):
        raise DataError("a run trains on text or on images, not both: give every task the same kind of data")
    pixels = Pixels.join([p.pixels for p in parts if p.pixels is not None]) if all(images) and parts else None
    counts = {p.rows_per_example for p in parts if len(p)}
    if len(counts) > 1 and 1 not in counts:  # pairs, triplets, N choices
        raise DataError(
            f"sources of {sorted(counts)} rows per example (pairs 2, triplets 3, N choices N): every example of a "
            "run needs as many (the same number of choices, pairs or triplets throughout); give them runs of their own"
        )
    if len(counts) > 1:
        raise DataError(
            "a run trains on pairs of texts, on choices or on single texts, one kind only: give reward, embedding "
            "and multiple-choice heads a run of their own"
        )
    more_ids = [ids for p in parts for ids in p.more_ids or []] if parts and parts[0].more_ids is not None else None
    # a sentence-pair source beside a single-text one: the single texts are all segment 0, as
    # their tokenizer would have given them
    types = None
    if any(p.token_type_ids is not None for p in parts):
        types = [t for p in parts for t in (p.token_type_ids or [[0] * len(ids) for ids in p.input_ids])]
    more_types = [t for p in parts for t in p.more_types or []] if all(p.more_types for p in parts) else None
    labels = {
        head: head_class(head_type).codec.concat([p.labels.get(head) for p in parts], [len(p) for p in parts])
        for head, head_type in heads.items()
    }
    questions = None
    if any(p.questions is not None for p in parts):
        questions = [q for p in parts for q in (p.questions or [None] * len(p))]
    unseen = {head: names for p in parts for head, names in p.unseen.items()}  # a head reads one source
    return EncodedData(
        input_ids, labels, texts, pixels, more_ids, types, questions=questions, unseen=unseen, more_types=more_types
    )


class Tokenized(NamedTuple):
    """What `tokenize` gives: token ids, each position's word (pre-split tokens only) and each
    position's segment (sentence pairs, when the tokenizer has segments: BERT yes, RoBERTa no)."""

    input_ids: list[list[int]]
    word_ids: list[list[int | None]] | None = None
    token_type_ids: list[list[int]] | None = None


def tokenize(
    tokenizer,
    rows: list[dict[str, Any]],
    text_column: str,
    max_length: int,
    source: str,
    is_tokens: bool,
    text_pair: str | None = None,
) -> Tokenized:
    """Token ids (truncated to max_length) and, for pre-split tokens, the word index of each position.

    With `text_pair` (a second text column: NLI, paraphrase, STS, reranking) each row is encoded
    as `tokenizer(text, text_pair)`, the tokenizer's own pair template ([CLS] a [SEP] b [SEP] for
    BERT), truncating the longer text first; its segment ids are kept when it gives them."""
    if is_tokens:
        if text_pair is not None:
            raise DataError(f"{source}: pre-split tokens (a tagging head) cannot be read as sentence pairs")
        words = column_values(rows, "tokens", source)
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        return Tokenized(enc["input_ids"], [enc.word_ids(i) for i in range(len(words))])
    texts = text_values(rows, text_column, source)
    if text_pair is None:
        return Tokenized(tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    return tokenize_pairs_of_texts(tokenizer, texts, text_values(rows, text_pair, source), max_length, source)


def tokenize_pairs_of_texts(
    tokenizer: Any, texts: list[str], pairs: list[str], max_length: int, source: str
) -> Tokenized:
    """Each `tokenizer(text, pair)` in the tokenizer's pair template, cut at `max_length` tokens
    (longest first), with its segment ids where the tokenizer gives them."""
    check_pair_template(tokenizer, source)
    try:  # "longest_first" (truncation=True) cuts whichever text is longer, token by token
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    except (ValueError, TypeError) as e:  # an image processor, or a tokenizer without pairs
        raise DataError(f"{source}: the tokenizer cannot encode text pairs ({e})") from e
    return Tokenized(enc["input_ids"], None, enc.get("token_type_ids"))


def check_pair_template(tokenizer: Any, source: str) -> None:
    """Refuse sentence pairs on a tokenizer whose pair template puts nothing between the two texts
    (GPT-2, Llama, SmolLM2: `tokenizer(a, b)` is one run-on text), which would train and predict on
    texts whose boundary the model cannot see."""
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    if count is not None and count(pair=True) <= count(pair=False):
        raise DataError(
            f"{source}: this tokenizer ({type(tokenizer).__name__}) has no sentence-pair template (no separator "
            "between the two texts, as on decoder LLMs); join the two columns into one text with a separator "
            "of your choice, or use an encoder (BERT, RoBERTa, MiniLM) for text pairs"
        )


def text_values(rows: list[dict[str, Any]], column: str, source: str) -> list[str]:
    """A text column's values, refusing an empty or non-text one by its row number."""
    texts = column_values(rows, column, source)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise DataError(f"row {bad + 1} of {source}: text column '{column}' is empty or not text: {texts[bad]!r}")
    return texts


def align_tags(tag_ids: list[int] | None, word_ids: list[int | None]) -> list[int]:
    """Word-level tag ids -> token positions: first sub-word gets the tag, the rest -100."""
    out, previous = [], None
    for word in word_ids:
        if tag_ids is None or word is None or word == previous:
            out.append(IGNORE_INDEX)
        else:
            out.append(tag_ids[word])
        previous = word
    return out


def split_indices(
    n: int, val_fraction: float, seed: int, strata: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic shuffled train/validation split; with `strata` (a label per example,
    missing labels a stratum of their own) each stratum gives its share, so the classes keep
    their proportions (a class with one example stays in training)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0  # a requested split is never empty
    if val_fraction > 0 and n - n_val < 1:
        raise DataError(f"only {n} examples: too few to hold out {val_fraction:.0%} for validation")
    if strata is None or n_val == 0:
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    strata = np.asarray(strata)[order]
    val: list[int] = []
    for value in np.unique(strata):
        members = order[strata == value]  # already shuffled
        val.extend(members[: round(len(members) * val_fraction)] if len(members) > 1 else [])
    val = val or list(order[:n_val])  # every stratum too small: a plain split
    train = np.setdiff1d(order, val)
    if len(train) == 0:
        raise DataError(f"only {n} examples: too few to hold out {val_fraction:.0%} for validation")
    return np.sort(train), np.sort(np.asarray(val, dtype=order.dtype))


def split_groups(groups: list[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`split_indices` over groups of rows: every row of a group lands on the same side, so the
    windows of one context (and the questions on it) are never both trained on and validated on."""
    ids = np.asarray(groups)
    unique = np.unique(ids)
    if val_fraction > 0 and len(unique) < 2:
        raise DataError(
            f"all {len(ids)} rows are windows of one context: too few to hold out {val_fraction:.0%} for "
            "validation; give more contexts or validation data of its own (eval_data)"
        )
    _, val = split_indices(len(unique), val_fraction, seed)
    held_out = np.isin(ids, unique[val])
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


# ----------------------------------------------------------------------------- batching


def token_batches(lengths: Sequence[int], max_tokens: int | None, max_examples: int) -> list[list[int]]:
    """Indices cut into inference batches: sorted by length (shortest first, ties in input order), a
    batch grows while (examples) x (its longest length) stays within `max_tokens` and it holds at
    most `max_examples`. An example longer than the budget gets a batch of its own; `max_tokens`
    None caps the count only.

    Why a token budget and not only a count: the cost of a pass is its padded tokens, so a fixed
    count makes passes over long texts slow and memory-hungry and passes over short ones too small
    to keep the cores busy."""
    if max_examples < 1 or (max_tokens is not None and max_tokens < 1):
        raise UsageError(
            f"batch_size={max_examples}, max_tokens={max_tokens}: a forward pass needs room for at least one "
            "example; give positive numbers (max_tokens None: no token limit)"
        )
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        # sorted: example i is the longest of the batch it joins, so the batch pads to its length
        full = len(batch) >= max_examples or (max_tokens is not None and (len(batch) + 1) * lengths[i] > max_tokens)
        if batch and full:
            batches.append(batch)
            batch = []
        batch.append(i)
    return [*batches, batch] if batch else batches


def data_batches(data: EncodedData, max_tokens: int | None, max_examples: int) -> list[list[int]]:
    """`token_batches` over a dataset's examples, counting the rows its batches pad: a preference
    pair is two rows (chosen and rejected) of the longer one's length, N choices N rows."""
    rows = data.rows_per_example
    return token_batches([rows * n for n in data.lengths()], max_tokens, max_examples)


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of similar length (less padding), in a random order that is fixed by seed + epoch.

    Indices are shuffled, cut into mega-batches of 50 batches, sorted by length inside each
    mega-batch and cut into batches; the batch order is shuffled again. Determinism per epoch
    is what lets an interrupted run resume mid-epoch on exactly the same batches.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        group: bool = True,
        short_last: bool = False,
    ):
        self.lengths, self.batch_size, self.seed, self.shuffle = lengths, batch_size, seed, shuffle
        self.group = group  # False: plain shuffled batches (more padding, batches of mixed lengths)
        # the short batch (if any) last: accelerate deals the batches to several processes a round
        # at a time and drops a round that a short batch ends before the last one (its examples
        # unseen that epoch, every process a step short)
        self.short_last = short_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            return token_batches(self.lengths, None, size)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n).tolist()
        if not self.group:
            return self._ordered([order[i : i + size] for i in range(0, n, size)])
        mega = size * 50
        batches = []
        for start in range(0, n, mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        return self._ordered([batches[i] for i in rng.permutation(len(batches))])

    def _ordered(self, batches: list[list[int]]) -> list[list[int]]:
        if not self.short_last:
            return batches
        return [b for b in batches if len(b) == self.batch_size] + [b for b in batches if len(b) < self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def collate(
    examples: list[dict[str, Any]],
    pad_id: int,
    head_types: dict[str, str],
    widths: dict[str, int],
    inputs: bool = True,
) -> dict[str, Any]:
    """Pad a list of examples to the longest one in the batch (dynamic padding); stack images.

    A batch of B preference pairs has 2B rows of inputs (chosen, then rejected) and B of labels;
    B examples of N choices N x B rows, every example's first choice first (choice-major).
    `inputs` False: the labels (and index) alone, for a phase that reads cached features (building
    and padding inputs no backbone reads cost a frozen run more than its heads' steps)."""
    if "pixel_values" in examples[0]:
        length = 0
        batch: dict[str, Any] = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])} if inputs else {}
    else:
        # preference pairs: the B chosen texts, then the B rejected ones (reward heads split the halves)
        sequences, types = _rows(examples)
        length = max(len(ids) for ids in sequences)
        batch = _padded(sequences, types, length, pad_id) if inputs else {}
    labels = {
        head: head_class(kind).codec.collate([e["labels"].get(head) for e in examples], length, widths.get(head, 0))
        for head, kind in head_types.items()
    }
    if "index" not in examples[0]:  # transformers.Trainer drops what forward does not name
        return {**batch, "labels": labels}
    return {**batch, "labels": labels, "index": torch.tensor([e["index"] for e in examples])}


def _rows(examples: list[dict[str, Any]]) -> tuple[list[list[int]], list[list[int]] | None]:
    """A batch's rows (the examples' first rows, then their second rows ...) and their segment ids
    (None: the tokenizer gave none); refused when the examples have different row counts."""
    counts = {len(e.get("more_ids", ())) for e in examples}
    if len(counts) > 1:
        raise DataError(
            f"a batch holds examples of {sorted(c + 1 for c in counts)} rows (choices): every example of a "
            "multiple-choice head needs the same number of choices"
        )
    more = counts.pop()
    sequences = [e["input_ids"] for e in examples] + [e["more_ids"][k] for k in range(more) for e in examples]
    if "token_type_ids" not in examples[0]:
        return sequences, None
    firsts = [e["token_type_ids"] for e in examples]
    if more == 0:
        return sequences, firsts
    if "more_types" not in examples[0]:  # a pair of single texts: segment 0 throughout
        return sequences, firsts + [[0] * len(ids) for ids in sequences[len(examples) :]]
    return sequences, firsts + [e["more_types"][k] for k in range(more) for e in examples]


def _padded(sequences: list[list[int]], types: list[list[int]] | None, length: int, pad_id: int) -> dict[str, Any]:
    """Token ids padded to `length` on the right, their attention mask and, for sentence pairs, segment ids."""
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, ids in enumerate(sequences):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if types is not None:  # sentence pairs: segment ids on the same positions, padding 0
        token_type_ids = torch.zeros((len(sequences), length), dtype=torch.long)
        for i, row in enumerate(types):
            token_type_ids[i, : len(row)] = torch.tensor(row)
        batch["token_type_ids"] = token_type_ids
    return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids", "pixel_values", "input_values")


def model_inputs(batch: dict[str, Any], device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a batch that the backbone reads (whatever the modality), on `device`."""
    return {k: (v.to(device) if device is not None else v) for k, v in batch.items() if k in MODEL_INPUTS}
