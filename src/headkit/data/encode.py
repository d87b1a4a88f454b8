"""One source's rows -> encoded inputs with every task's labels and the head configs that fit them,
and the `PreparedData` a run trains on: what data/tasks.py (rows read into memory) and
data/streaming.py (rows encoded as a stream passes) both use, so neither imports the other's
encoders. The tasks are `TaskSpec`s (data/tasks.py); only their fields are read here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from headkit.data.batching import EncodedData, align_tags, check_pair_template, text_values, tokenize
from headkit.data.choices import check_choice_answers, encode_choices
from headkit.data.images import is_image_processor, load_images
from headkit.data.pairs import tokenize_pairs, tokenize_text_pairs
from headkit.data.pixels import pixel_store
from headkit.errors import DataError, DataOptionError
from headkit.heads import HEAD_NAME, HeadConfig, LabelSource, head_class, head_config, head_types_for_tables
from headkit.heads.labels import LabelTally
from headkit.heads.qa import DOC_STRIDE, QAWindows, Question, check_answers, qa_windows, window_labels


@dataclass
class PreparedData:
    train: EncodedData
    val: EncodedData
    heads: dict[str, HeadConfig]

    @property
    def head_types(self) -> dict[str, str]:
        return {name: c.type for name, c in self.heads.items()}

    @property
    def widths(self) -> dict[str, int]:
        return {name: len(c.labels) for name, c in self.heads.items()}


def check_tasks(tasks: list[Any]) -> None:
    """Refuse a task list that cannot train: none, a head name used twice or not an identifier,
    a task with no data, a dropout outside [0, 1), a head type that does not train from tables."""
    if not tasks:
        raise DataOptionError("no tasks: give at least one head and its data (--data FILE --head NAME:COLUMN)")
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"head name(s) {duplicates} used by more than one task; each head needs its own name")
    for t in tasks:
        if not t.data:
            raise DataError(
                f"task '{t.name}' names no data: give it a file or dataset (data: ...), or train it with "
                "headkit.Trainer(..., train_dataset=...)"
            )
        if not HEAD_NAME.match(t.name):
            raise DataError(f"head name '{t.name}' must be a Python identifier (letters, digits, _)")
        if t.dropout is not None and not 0.0 <= t.dropout < 1.0:
            raise DataError(f"task '{t.name}': dropout {t.dropout} is outside [0, 1); use e.g. 0.1, or 0 for none")
        trainable = head_types_for_tables()
        if t.type not in trainable:
            raise DataError(f"task '{t.name}': type '{t.type}' cannot be trained from files; use one of {trainable}")
    answering = [t for t in tasks if head_class(t.type).codec.inputs == "qa"]
    if answering:  # one model's span heads read one set of windows (MultiHeadModel.add_head)
        window_overlap(answering, "this run")
    choosing = [t.name for t in tasks if head_class(t.type).codec.inputs == "choices"]
    if choosing and len(choosing) < len(tasks):
        raise DataError(
            f"multiple-choice heads {choosing} read a context and its choices, rows no other head reads: give "
            f"{sorted({t.name for t in tasks} - set(choosing))} a run of their own"
        )
    pairs = [t for t in tasks if head_class(t.type).codec.inputs == "pairs"]
    if len({head_class(t.type).codec.joins for t in pairs}) > 1:
        raise DataError(
            f"heads {[t.name for t in pairs]} read their pairs of texts in two ways (a reward head joins a prompt to "
            "each response, an embedding head reads each text alone) with one tokenizer: give them runs of their own"
        )


def encode_rows(
    rows: list[dict[str, Any]],
    group: list[Any],
    data: str,
    text_column: str,
    processor: Any,
    max_length: int,
    label_maps: dict[str, list[str]] | None,
    store_pixels: Callable[..., Any] = pixel_store,
    causal: bool = False,
    unseen_labels: bool = False,
) -> tuple[EncodedData, dict[str, HeadConfig]]:
    """One source's rows -> encoded inputs with every task's labels, and the tasks' head configs.
    `store_pixels(processor, files, crop=...)` holds an image source's preprocessed pixels
    (data/pixels.py's disk store; data/tasks.py hands in the one it names). `causal`: encoded for
    a decoder backbone (its question-answering windows differ: heads/qa.py). `unseen_labels`:
    labels outside `label_maps` are encoded past them and named in `EncodedData.unseen` (data
    to score a trained model on) instead of refused (data to train on)."""
    kinds = {t.name: head_class(t.type) for t in group}
    codecs = {t.name: kinds[t.name].codec for t in group}
    words = any(c.inputs == "words" for c in codecs.values())
    pairs = [t for t in group if codecs[t.name].inputs == "pairs"]
    answering = any(c.inputs == "qa" for c in codecs.values())
    choosing = [t.name for t in group if codecs[t.name].inputs == "choices"]
    images = is_image_processor(processor)
    _check_pair_heads(group, codecs, choosing, images, data)
    sizes = None
    windows: QAWindows | None = None
    questions: list[Question] = []
    if answering:  # (question, context) pairs, the contexts cut into windows: a row per window
        if images or words or pairs:
            raise DataError(
                f"{data}: a question-answering head reads a question and a context; other heads on "
                "this data read images, pre-split words or preference pairs: give them a run of their own"
            )
        stride = window_overlap([t for t in group if codecs[t.name].inputs == "qa"], data)
        encoded, windows, questions = encode_questions(
            processor, rows, text_column, group[0].text_pair, max_length, data, stride, causal
        )
    elif choosing:  # a context and N choices: N (context, choice) rows per example
        encoded = encode_choices(processor, rows, text_column, group[0].text_pair, max_length, data)
    elif pairs:  # two texts per example (preference pairs, text pairs): every head on this data reads them
        encoded = encode_pairs(rows, group, pairs, codecs, data, text_column, processor, max_length, images)
    elif images:  # the text column names image files
        if group[0].text_pair is not None:
            raise DataError(f"{data}: text_pair '{group[0].text_pair}' needs a text backbone; this one reads images")
        files, sizes = load_images(rows, text_column, data)  # sizes from the files' headers
        pixels = store_pixels(processor, files, crop=all(c.crop_ok for c in codecs.values()))
        encoded = EncodedData([[] for _ in rows], {}, [r.get(text_column) for r in rows], pixels)
    else:
        pair = group[0].text_pair  # prepare groups tasks by it: one value per group
        input_ids, word_ids, token_type_ids = tokenize(processor, rows, text_column, max_length, data, words, pair)
        texts = [r.get("tokens") if words else _text(r, text_column, pair) for r in rows]
        encoded = EncodedData(input_ids, {}, texts, token_type_ids=token_type_ids)
    configs, declared = {}, getattr(rows, "label_names", {})
    for task in group:
        kind, codec = kinds[task.name], codecs[task.name]
        _check_inputs(task, codec, images)
        where = LabelSource(task.name, task.label, data, declared, LabelTally() if unseen_labels else None)
        known = (label_maps or {}).get(task.name)
        labels = known if known is not None else codec.label_names(rows, where)
        y = codec.tokenize_labels(codec.encode_labels(rows, where, labels, sizes), processor, where)
        if windows is not None:
            y = _labels_per_window(y, task.name if codec.inputs == "qa" else None, windows, questions, rows, data)
        if codec.inputs == "choices":
            check_choice_answers(y, encoded, task.name, task.label, data)
        if codec.inputs == "words":  # a tag per word -> a tag per word's first sub-word token
            assert word_ids is not None  # word inputs are tokenised with their word ids
            y = [align_tags(tags, ids) for tags, ids in zip(y, word_ids, strict=True)]
        encoded.labels[task.name] = y
        if where.tally and where.tally.unseen:
            encoded.unseen[task.name] = unseen_labels_of(where, labels)
        configs[task.name] = _task_config(task, kind.per_token, labels)
    return encoded, configs


def _check_pair_heads(group: list[Any], codecs: dict[str, Any], choosing: list[str], images: bool, data: str) -> None:
    """Refuse heads that score pairs of texts without a second text column, and multiple-choice
    heads on images (beside other heads they are refused for the whole run: `check_tasks`)."""
    lone = [t.name for t in group if codecs[t.name].needs_text_pair and t.text_pair is None]
    if lone:
        raise DataError(
            f"{data}: heads {lone} score pairs of texts (a query and a document): name the second text's column "
            "with text_pair (e.g. {'label': 'relevant', 'text_pair': 'document'})"
        )
    if choosing and images:
        raise DataError(
            f"{data}: multiple-choice heads {choosing} read a context and its choices, not images; give them a text "
            "backbone"
        )


def encode_pairs(
    rows: list[dict[str, Any]],
    group: list[Any],
    pairs: list[Any],
    codecs: dict[str, Any],
    data: str,
    text_column: str,
    processor: Any,
    max_length: int,
    images: bool,
) -> EncodedData:
    """Rows of two texts each, as the heads that read them ask: a prompt joined to each response
    (reward heads), or a text and its partner read alone (embedding heads). Beside text pairs,
    heads of one text per example read the first text (a topic head beside an embedding head);
    preference pairs and images are refused beside other heads."""
    if group[0].text_pair is not None:
        raise DataError(
            f"{data}: heads {[t.name for t in pairs]} read their pairs of texts from their label column; drop "
            f"text_pair '{group[0].text_pair}'"
        )
    joins = codecs[pairs[0].name].joins  # preference pairs (reward heads), or a text and its partner
    beside = [t for t in group if t not in pairs]
    if images or (beside and joins) or any(codecs[t.name].joins != joins for t in pairs):
        raise DataError(
            f"{data}: heads {[t.name for t in pairs]} train on {'preference pairs' if joins else 'pairs of texts'}"
            ", which other heads and images cannot share; give them a run of their own"
        )
    others = [
        t.name
        for t in beside
        if codecs[t.name].inputs != "text" or codecs[t.name].multi_row or head_class(t.type).per_token
    ]
    if others:
        raise DataError(
            f"{data}: heads {others} cannot read the pairs of texts of heads {[t.name for t in pairs]} (a head beside "
            "them reads the first text of each pair, as one text); give them a run of their own"
        )
    if len({t.label for t in pairs}) > 1:  # one encoding of the rows: the pairs' texts are their inputs
        raise DataError(
            f"{data}: heads {[t.name for t in pairs]} read their pairs from different columns "
            f"{sorted({t.label for t in pairs})}; heads on one set of rows read the same pairs: give them runs of "
            "their own"
        )
    if joins:
        chosen, rejected = tokenize_pairs(processor, rows, text_column, pairs[0].label, max_length, data)
        more = [[ids] for ids in rejected]
    else:
        first, partners, negatives = tokenize_text_pairs(processor, rows, text_column, pairs[0].label, max_length, data)
        chosen, more = first, [[p] if negatives is None else [p, negatives[i]] for i, p in enumerate(partners)]
    return EncodedData(chosen, {}, [r.get(text_column) for r in rows], None, more)


def unseen_labels_of(where: LabelSource, labels: list[str]) -> list[str]:
    """The labels of data to score that the head never had (`where.tally`), refused when none of
    its labels is one it had: that is a wrong label column or format (1.0 for 1, ids for names),
    not a class training lacked."""
    assert where.tally is not None
    if not where.tally.known:
        raise DataError(
            f"head '{where.head}': none of the labels in column '{where.column}' of {where.source} is one it "
            f"was trained on (found {where.tally.unseen[:10]}; it knows {labels[:20]}): check the label column, "
            "and that its labels are written as in training"
        )
    return where.tally.unseen


def _check_inputs(task: Any, codec: Any, images: bool) -> None:
    """Refuse a head whose inputs the data does not hold (images for text heads, or the reverse)."""
    if codec.inputs == "images" and not images:
        raise DataError(f"task '{task.name}': a {task.type} head needs an image backbone and image files")
    if images and codec.inputs == "words":
        raise DataError(f"task '{task.name}': a '{task.type}' head needs text, not images")


def _task_config(task: Any, per_token: bool, labels: list[str]) -> HeadConfig:
    """The head config a task asks for, with its label map."""
    options = {} if per_token else {"pooling": task.pooling}
    if task.dropout is not None:
        options["dropout"] = task.dropout
    options.update(head_options(task))
    return head_config(task.type, labels=list(labels), loss_weight=task.loss_weight, layer=task.layer, **options)


def encode_questions(
    tokenizer: Any,
    rows: list[dict[str, Any]],
    question: str,
    context: str | None,
    max_length: int,
    data: str,
    doc_stride: int = DOC_STRIDE,
    causal: bool = False,
) -> tuple[EncodedData, QAWindows, list[Question]]:
    """The windows of each row's (question, context), as encoded rows, and a `Question` per row
    (the heads' answers are added to it): the question in the text column (or a `question` column
    when the text column is absent), the context in `text_pair` (default `context`). A decoder's
    windows (`causal`) mark the border between the two themselves (heads/qa.py); an encoder's
    tokenizer must have a pair template."""
    question, context = qa_columns(rows, question, context)
    if not causal:
        check_pair_template(tokenizer, data)  # a run-on question and context: no boundary to learn
    contexts = text_values(rows, context, data)
    asked = text_values(rows, question, data)
    windows = qa_windows(tokenizer, asked, contexts, max_length, doc_stride, causal)
    records = [Question(q, c) for q, c in zip(asked, contexts, strict=True)]
    texts = [_text(rows[e], question, context) for e in windows.example]
    paragraph = {c: i for i, c in enumerate(dict.fromkeys(contexts))}  # the questions on one context: one group
    encoded = EncodedData(windows.input_ids, {}, texts, token_type_ids=windows.token_type_ids)
    encoded.groups = [paragraph[contexts[e]] for e in windows.example]
    encoded.questions = [records[e] for e in windows.example]
    return encoded, windows, records


def head_options(task: Any) -> dict[str, Any]:
    """A task's `options`, refusing those that are the task's own fields (set there instead)."""
    own = sorted(set(task.options) & {f.name for f in dataclasses.fields(HeadConfig)})
    if own:
        raise DataError(
            f"task '{task.name}': {own} in options are the task's own settings; set them as its fields "
            f"(options hold what the '{task.type}' head type adds, e.g. a span head's doc_stride)"
        )
    return dict(task.options)


def window_overlap(tasks: list[Any], data: str) -> int:
    """The overlap of the windows the question-answering heads on this data read (their configs'
    `doc_stride`, as their tasks' options set it): one value, as they share the windows."""
    strides = {head_config(t.type, **head_options(t)).doc_stride for t in tasks}  # type: ignore[attr-defined]
    if len(strides) > 1:
        raise DataError(
            f"{data}: the question-answering heads {[t.name for t in tasks]} ask for windows that overlap by "
            f"{sorted(strides)} tokens; they read the same windows: give them one doc_stride"
        )
    return strides.pop()


def qa_columns(rows: list[dict[str, Any]], question: str, context: str | None) -> tuple[str, str]:
    """The question and context columns of QA rows: the text column (or `question` when the rows
    lack it), and `text_pair` (default `context`)."""
    if rows and question not in rows[0] and "question" in rows[0]:
        question = "question"
    return question, context or "context"


def _labels_per_window(
    y: Any, answering: str | None, windows: QAWindows, questions: list[Question], rows: list[dict[str, Any]], data: str
) -> Any:
    """A task's labels for each window: the answers of QA head `answering` become each window's start
    and end tokens (once its context is known to hold them; each question keeps its answers as
    given); any other label is its pair's, repeated."""
    if answering is not None:
        check_answers(y, [q.context for q in questions], [r.get("id") for r in rows], data)
        for record, answers in zip(questions, y, strict=True):
            record.answers[answering] = answers
        return window_labels(windows, y)
    return y[windows.example] if isinstance(y, np.ndarray) else [y[e] for e in windows.example]


def _text(row: dict[str, Any], column: str, pair: str | None) -> Any:
    """What an example's text is shown as in reports: the text, or (text, text_pair)."""
    return row.get(column) if pair is None else (row.get(column), row.get(pair))
