"""Evaluation: every head's metrics on a dataset, from one backbone pass per batch."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from headkit.data import MAX_TOKENS
from headkit.data.batching import EncodedData, collate, data_batches, model_inputs
from headkit.errors import DataError, HeadkitError, UsageError
from headkit.heads.base import first_rows
from headkit.training.features import FeatureCache

logger = logging.getLogger(__name__)

# A headkit.model.MultiHeadModel, not imported: model.py reaches this module (model.evaluate),
# and nothing model.py imports imports headkit.model back.
Model = Any


@dataclass
class Evaluation:
    scores: dict[str, dict[str, float]]  # head -> metric -> value
    losses: dict[str, float]  # head -> mean loss over labelled examples
    predictions: dict[str, list[Any]] = field(default_factory=dict)
    references: dict[str, list[Any]] = field(default_factory=dict)
    reports: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # head -> per-class report
    # head -> labels of the data that training never had: in the references, never predicted (misses)
    unseen: dict[str, list[str]] = field(default_factory=dict)

    def objective(self, model: Model, metric: str | None = None) -> float:
        """One number to select checkpoints by, sign-adjusted so that higher is better.

        `metric` (TrainConfig.metric_for_best_model): None, the mean primary metric of the heads;
        `HEAD/METRIC`, that head's metric; `METRIC`, its mean over the heads that report it;
        `loss` / `HEAD/loss`, the validation loss (summed over heads).
        """
        if metric is None:
            values = [
                self._signed(model, name, head.scoring.primary)
                for name, head in model.heads.items()
                if head.scoring.primary in self.scores.get(name, {})
            ]
            return sum(values) / len(values) if values else -math.inf
        head, _, name = metric.rpartition("/")
        if name == "loss":
            losses = [v for h, v in self.losses.items() if h == head or not head]
            return -sum(losses) if losses else -math.inf
        heads = [head] if head else [h for h in model.heads if name in self.scores.get(h, {})]
        values = [self._signed(model, h, name) for h in heads if name in self.scores.get(h, {})]
        if not values:
            reported = sorted(f"{h}/{m}" for h, s in self.scores.items() for m in s)
            # check_metric refused the names no head can report: this is a validation split without
            # labelled rows for that head, a data problem found at run time (exit 1, not 2)
            raise DataError(
                f"--metric_for_best_model {metric!r}: no head reports it on this validation split; "
                f"reported here: {reported}"
            )
        return sum(values) / len(values)

    def _signed(self, model: Model, head: str, metric: str) -> float:
        return signed(model, head, metric, self.scores[head][metric])


def signed(model: Model, head: str, metric: str, value: float) -> float:
    """A head's metric with higher always better (mse, cer, perplexity, loss: negated)."""
    return value if model.heads[head].scoring.metrics.get(metric, True) else -value


def check_metric(model: Model, metric: str | None) -> None:
    """Refuse a `metric_for_best_model` no head can report, before any training, naming those that can.
    (A head type whose scoring does not list its `metrics` is checked when it is first scored.)"""
    if metric is None:
        return
    head, _, name = metric.rpartition("/")
    heads = [model.heads[head]] if head in model.heads else [] if head else list(model.heads.values())
    metrics = [h.scoring.metrics for h in heads]
    if heads and (name == "loss" or any(name in m or not m for m in metrics)):
        return
    available = ["loss"] + [f"{n}/{m}" for n, h in model.heads.items() for m in [*h.scoring.metrics, "loss"]]
    raise UsageError(f"--metric_for_best_model {metric!r}: no head reports it; choose one of {available}")


@torch.no_grad()
def evaluate(
    model: Model,
    data: EncodedData,
    pad_id: int,
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    make_batch: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    progress: bool = False,
    max_tokens: int | None = MAX_TOKENS,
    reports: bool = True,
) -> Evaluation:
    """Decode every head on `data` and score it against the labels (missing labels skipped);
    `progress` shows a bar over the batches; `reports`: also each head's per-class report.
    Batches are as prediction's: similar lengths, at most `batch_size` examples and `max_tokens`
    padded tokens (`data_batches`).

    `make_batch` builds a batch from examples (default: padding + labels); it must be
    deterministic so that two evaluations are comparable (pretraining masks with a fixed seed).
    Labels training never had (`data.unseen`) are references the head cannot predict, so they count
    as misses in its metrics; its loss skips them (it has no output for them).
    """
    was_training = model.training
    model.eval()
    # the heads the data has labels for (data to score some heads of a model need not fit the
    # others: pairs of texts for a topic head's rows); all of them where labels come with make_batch
    scored = [n for n in model.heads if n in data.labels] or list(model.heads)
    head_types = {n: h.config.type for n, h in model.heads.items() if n in scored}
    unseen = {n: data.unseen.get(n, []) for n in model.heads}
    widths = {n: len(h.config.labels) + len(unseen[n]) for n, h in model.heads.items()}
    preds: dict[str, list[Any]] = {n: [] for n in model.heads}
    refs: dict[str, list[Any]] = {n: [] for n in model.heads}
    loss_sums: dict[str, float] = {n: 0.0 for n in model.heads}
    counts: dict[str, int] = {n: 0 for n in model.heads}
    device = model.device
    batches = data_batches(data, max_tokens, batch_size)
    for indices in tqdm(batches, desc="evaluate", unit="batch", disable=not progress or len(batches) < 2, leave=False):
        examples = [data[i] for i in indices]
        if make_batch:
            batch = make_batch(examples)
        else:  # on cached features the heads read no inputs: labels alone
            batch = collate(examples, pad_id, head_types, widths, inputs=cache is None)
        labels = {k: v.to(device) for k, v in batch["labels"].items()}
        known = {k: model.heads[k].codec.known_labels(v) if unseen.get(k) else v for k, v in labels.items()}
        if cache is not None:
            out = model.forward_heads(cache.batch(batch["index"]).to(device), known, heads=scored)
        else:
            out = model(labels=known, heads=scored, **model_inputs(batch, device))
        for name in scored:
            head = model.heads[name]
            # an engine that reads no labels (ONNX) gives a one-row head every row: its first ones are its own
            output = first_rows(head, out.outputs[name], labels[name].shape[0])
            preds[name] += head.decode(output, out.mask)
            refs[name] += head.codec.references(labels[name], out.mask, unseen[name])
            if name in out.losses:
                loss_sums[name] += float(out.losses[name]) * out.counts[name]
                counts[name] += out.counts[name]
    model.train(was_training)
    losses = {n: loss_sums[n] / counts[n] for n in model.heads if counts[n]}
    evaluation = Evaluation({}, losses, preds, refs, unseen={n: u for n, u in unseen.items() if u})
    return score_heads(model, evaluation, reports)


def score_heads(model: Model, evaluation: Evaluation, reports: bool = True) -> Evaluation:
    """Each head's scores and per-class report from the evaluation's predictions and losses (also
    after a head re-decided its predictions, e.g. at tuned thresholds: no second pass needed)."""
    preds, refs, losses = evaluation.predictions, evaluation.references, evaluation.losses
    labelled = {n: h for n, h in model.heads.items() if any(r is not None for r in refs[n])}  # others: not scored
    evaluation.scores = {n: h.scoring.score(preds[n], refs[n]) for n, h in labelled.items()}
    for name, head in labelled.items():
        if name in losses:
            evaluation.scores[name].update(head.scoring.scores_from_loss(losses[name]))
    if reports:
        evaluation.reports = {n: r for n, h in model.heads.items() if (r := h.scoring.report(preds[n], refs[n]))}
    return evaluation


def label_columns(heads: list[str], available: set[str], data: str) -> dict[str, str]:
    """Each head's label column when none are given: the column named like the head; `label`
    stands in for the one head without such a column, never for several (they would all be
    scored against the same labels)."""
    columns = {head: head for head in heads if head in available}
    rest = [head for head in heads if head not in columns]
    if len(rest) > 1:
        raise HeadkitError(
            f"heads {rest} have no column of their own in {data} (columns: {sorted(available)}), and one "
            "'label' column cannot score them all: name each head's column with --head NAME:COLUMN "
            "(in Python: model.evaluate(data, heads={NAME: COLUMN}))"
        )
    columns.update(dict.fromkeys(rest, "label"))
    return columns


Columns = Mapping[str, str | Mapping[str, str | None]]  # head -> label column, or {"label", "text", "text_pair"}


def evaluate_dataset(
    model: Model,
    processor,
    data: Any,
    columns: Columns | None = None,
    text: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[Evaluation, int]:
    """Score a trained model on labelled data with the label maps saved at training time.

    `data`, `columns`, `text`, `max_length`: as `encode_dataset`. Returns the evaluation and the
    number of examples. Labels training never had are scored as misses (the model cannot predict
    them; small training sets often lack a rare class) and named in one warning and in
    `Evaluation.unseen`.
    """
    encoded = encode_dataset(
        model, processor, data, columns, text, max_length, name="the evaluation data", unseen_labels=True
    )
    warn_unseen(encoded.unseen)
    pad_id = getattr(processor, "pad_token_id", None) or 0  # image processors have none
    evaluation = evaluate(model, encoded, pad_id, batch_size=batch_size, progress=progress)
    answering = [n for n in evaluation.scores if model.heads[n].codec.inputs == "qa"]
    if not answering:
        return evaluation, len(encoded)
    from headkit.heads.qa import distinct_questions

    for name in answering:
        windows = {f"window_{k}": v for k, v in evaluation.scores[name].items()}
        questions = distinct_questions(encoded.questions or [], name)
        evaluation.scores[name] = {
            **answer_scores(model, processor, questions, name, max_length, batch_size),
            **windows,
        }
    return evaluation, len(distinct_questions(encoded.questions or []))


def warn_unseen(unseen: dict[str, list[str]]) -> None:
    """One warning naming, per head, the labels of the evaluation data that training never had."""
    if unseen:
        listed = "; ".join(f"head '{head}': {names}" for head, names in unseen.items())
        logger.warning(
            "labels the model never saw in training are scored as misses (it cannot predict them): %s", listed
        )


def answer_scores(
    model: Model, processor: Any, questions: list[Any], head: str, max_length: int | None, batch_size: int
) -> dict[str, float]:
    """A question-answering head's official SQuAD 2.0 scores per question (`heads.qa.Question`s with
    its answers): its answer to each from all of the context's windows, as `predict` gives it."""
    from headkit.heads.squad import squad_scores
    from headkit.ship.predict_batches import predict_texts

    pairs = [(q.question, q.context) for q in questions]
    answers = predict_texts(model, processor, pairs, batch_size, max_length, heads=[head])
    rows = [{"id": str(i), "answers": q.answers[head]} for i, q in enumerate(questions)]
    return squad_scores({r["id"]: a[head]["answer"] for r, a in zip(rows, answers, strict=True)}, rows)


def encode_dataset(
    model: Model,
    processor,
    data: Any,
    columns: Columns | None = None,
    text: str | None = None,
    max_length: int | None = None,
    name: str = "the given data",
    unseen_labels: bool = False,
) -> EncodedData:
    """Labelled data encoded for `model`'s heads with their saved label maps: what `evaluate` scores,
    and a torch Dataset that `transformers.Trainer` trains on with `model.data_collator()`.

    `data`: whatever `read_rows` reads: a file, a built-in dataset, `hf:...`, or in memory a
    `datasets.Dataset`, a pandas DataFrame, a dict of lists or a list of dicts.
    `columns`: the heads to encode labels for (default: all), each mapped to its label column or to
    a dict `{"label", "text", "text_pair"}` (keys left out take their defaults): see `head_columns`.
    `text`: the text column of every head (default: each head's own, else 'text').
    `max_length`: the token limit (default: the one the model was trained with, else 128).
    `name`: what errors call in-memory data.
    `unseen_labels`: labels outside a head's saved map are encoded past it for scoring as misses
    (`EncodedData.unseen`) instead of refused; not for data to train on (the head has no output
    for them).
    """
    from headkit.backbone import max_input_tokens
    from headkit.backbone_outputs import is_causal
    from headkit.data.readers import read_rows
    from headkit.data.tasks import TaskSpec, prepare

    where = str(data) if isinstance(data, str | os.PathLike) else name  # the name errors give
    rows = read_rows(data)  # read once: the columns are looked up in it, and prepare encodes it
    chosen = head_columns(model, columns, set(rows[0]) if rows else set(), text, where)
    tasks = []
    for name, spec in chosen.items():
        # TaskSpec has text_pair when pairs train; head_columns gives every head its label and text columns
        pair: dict[str, Any] = {"text_pair": spec["text_pair"]} if spec.get("text_pair") else {}
        head = model.heads[name].config
        tasks.append(TaskSpec(name, where, label=spec["label"], text=spec["text"], type=head.type,  # type: ignore[arg-type]
                              options=head.task_options(), **pair))  # fmt: skip
    label_maps = {n: model.heads[n].config.labels for n in chosen}
    max_length = max_length or model.max_length or 128  # default: the limit the model was trained with
    config = getattr(model, "backbone_config", None) or model.backbone.config  # an ONNX engine has no backbone
    limit = max_input_tokens(config, processor, max_length)
    causal = is_causal(config)
    return prepare(
        tasks, processor, limit, 0.0, label_maps=label_maps, sources={where: rows}, causal=causal,
        unseen_labels=unseen_labels,
    ).train  # fmt: skip


COLUMN_KEYS = ("label", "text", "text_pair")


def head_columns(
    model: Model, columns: Columns | None, available: set[str], text: str | None, where: str
) -> dict[str, dict[str, str | None]]:
    """Each scored head's columns {"label", "text", "text_pair"} in the data.

    Given ones first (a str is the label column). Then what the head read in training
    (`model.columns`, saved with the model), its label column only where this data has it; then
    the CLI's defaults: a label column named like the head ('label' for the one head without
    one), text column `text` (or the `text` given for all), no text pair."""
    given = dict(columns or {})
    unknown = sorted(set(given) - set(model.heads))
    if unknown:
        raise HeadkitError(f"heads {unknown} are not heads of this model: {list(model.heads)}")
    recorded = getattr(model, "columns", None) or {}
    chosen: dict[str, dict[str, str | None]] = {}
    for name in given or model.heads:
        spec = given.get(name)
        spec = {"label": spec} if isinstance(spec, str) else dict(spec or {})
        wrong = sorted(set(spec) - set(COLUMN_KEYS))
        if wrong:
            raise HeadkitError(
                f"head '{name}': unknown column key(s) {wrong}; a head's columns are {list(COLUMN_KEYS)}"
            )
        saved = recorded.get(name) or {}
        if "label" not in spec and saved.get("label") and _has(saved["label"], available):
            spec["label"] = saved["label"]
        spec.setdefault("text", text or saved.get("text") or "text")
        spec.setdefault("text_pair", saved.get("text_pair"))
        chosen[name] = spec
    rest = [n for n, spec in chosen.items() if "label" not in spec]
    for name, column in label_columns(rest, available, where).items() if rest else ():
        trained = (recorded.get(name) or {}).get("label")
        if trained and not _has(column, available):
            raise DataError(
                f"head '{name}' was trained on the label column '{trained}', which {where} lacks (columns: "
                f"{sorted(available)}): name the column it should be scored on, e.g. {{'{name}': 'COLUMN'}}"
            )
        chosen[name]["label"] = column
    return chosen


def _has(label: str, available: set[str]) -> bool:
    """Whether the data holds a label column spec (comma-separated for regression targets and pairs)."""
    return all(c.strip() in available for c in label.split(","))
