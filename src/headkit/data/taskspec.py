"""`TaskSpec`: one head and where its labels come from, as a run config names it.

A config type, not a data step: TrainConfig and the CLI's parser are built from it before any data
is read, so this module imports nothing heavy (data/tasks.py turns TaskSpecs into encoded data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headkit.errors import DataOptionError

DEFAULT_HEAD_TYPE = "classification"


@dataclass
class TaskSpec:
    """One head and where its labels come from.

    Attributes:
        name: the head's name (a Python identifier).
        data: a file (.csv, .jsonl, .json, .parquet, .conll/.txt/.tsv token files) or a built-in
            dataset: rotten_tomatoes, bbc_news, bbc_headlines, tweet_ner, word_scores. None (in
            Python, with `headkit.Trainer`): the trainer's `train_dataset` / `eval_dataset`.
        label: the column holding this head's labels (regression: comma-separated columns).
        text: the column holding the input text (token files: ignored).
        text_pair: the column holding the second text of a sentence pair (NLI, paraphrase, STS,
            reranking): each row is read as `tokenizer(text, text_pair)`; None: single texts.
        type: head type: classification, multilabel, regression, token-classification.
        pooling: auto (the checkpoint's own sentence pooling, else its family's convention: [CLS]
            for BERT-style encoders and ViT, the last token for decoders, the mean for CNNs,
            speech and encoder-decoders), cls, mean, max, last or pooler (the backbone's own
            pooling layer); pooled heads only.
        loss_weight: this head's weight in the total loss.
        dropout: dropout before the head's layers (default: the head type's own, e.g. 0.1).
        limit: use at most this many rows of the source (a seeded random sample).
        eval_data: validate on this file or dataset instead of holding out part of `data`.
        layer: the hidden state the head reads: -1 the last, 0 the embeddings, k the k-th layer
            (negative: counted from the top). Heads on different layers share one backbone pass.
        options: settings of the head type's own config, e.g. a span head's `doc_stride` (the
            overlap of a long context's windows), `max_answer_tokens`, `null_threshold`; see the
            type's config class (`headkit.head_config(type, ...)`). Unknown names are refused.
    """

    name: str
    data: str | None = None
    label: str = "label"
    text: str = "text"
    type: str = DEFAULT_HEAD_TYPE
    pooling: str = "auto"
    loss_weight: float = 1.0
    dropout: float | None = None
    limit: int | None = None
    layer: int = -1
    eval_data: str | None = None
    text_pair: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def parse_task(
    spec: str,
    data: str | None,
    text: str = "text",
    pooling: str = "auto",
    layer: int = -1,
    eval_data: str | None = None,
    text_pair: str | None = None,
) -> TaskSpec:
    """`name:column[:type]` (with shared --data/--text_column/--eval_data/--text_pair) -> TaskSpec."""
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise DataOptionError(
            f"--head '{spec}' should look like NAME:COLUMN or NAME:COLUMN:TYPE (e.g. sentiment:label)"
        )
    if not data:
        raise DataOptionError(f"--head '{spec}' needs --data FILE (or use `tasks:` in a YAML config)")
    kind = parts[2] if len(parts) > 2 else DEFAULT_HEAD_TYPE
    return TaskSpec(
        parts[0], data, parts[1], text, kind, pooling, layer=layer, eval_data=eval_data, text_pair=text_pair
    )


def head_options(specs: list[str], heads: list[str]) -> dict[str, dict[str, Any]]:
    """`--option` values -> each --head head's type settings: `HEAD.KEY=VALUE` for one head,
    `KEY=VALUE` for every one (e.g. `answer.doc_stride=64`; heads of different types: name the
    head). Values are numbers where they read as one (64, 0.5, 1e-3), else YAML (true, null, a list),
    else the text itself; which keys a head type knows is its config's business (unknown ones are
    refused when the head is made)."""
    options: dict[str, dict[str, Any]] = {head: {} for head in heads}
    for spec in specs:
        key, eq, text = spec.partition("=")
        head, _, name = key.rpartition(".")
        if not eq or not name or not name.isidentifier():
            raise DataOptionError(f"--option '{spec}' should look like KEY=VALUE or HEAD.KEY=VALUE (doc_stride=64)")
        if head and head not in options:
            raise DataOptionError(f"--option '{spec}': no --head named '{head}'; the --head heads are {heads}")
        value = _option_value(text, spec)
        for target in [head] if head else heads:
            options[target][name] = value
    return options


def _option_value(text: str, spec: str) -> Any:
    """An `--option` value: an int, else a float (YAML 1.1 reads 1e-3 as text), else YAML's reading
    where it is JSON-like (true, null, [1, 2]), else the text (a date or a timestamp stays text)."""
    import yaml

    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataOptionError(f"--option '{spec}': the value is not readable ({e})") from None
    return value if isinstance(value, str | bool | int | float | list | dict | type(None)) else text
