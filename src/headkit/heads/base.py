"""The head contract.

A head is a plain `nn.Module` that turns the backbone's hidden states into its output. It is
fully described by a small config dataclass (serialised into `heads.json`), and it knows its
own loss and metric, so `MultiHeadModel` and the training loop treat every head the same:

    output = head(hidden, mask)            # hidden: (B, T, H), mask: (B, T) of 0/1
    loss, n = head.loss(output, labels, mask)  # mean over the n labelled examples; n == 0 -> loss 0
    preds = head.decode(output, mask)      # one JSON-friendly prediction per example
    refs = head.references(labels, mask)   # labels in the same per-example form (None = missing)
    scores = head.score(preds, refs)       # {"accuracy": ...} via scikit-learn / seqeval

and it knows everything else that is specific to its type, so no code outside heads/ branches on
a type name (the `Head` protocol below lists every member the rest of headkit calls): how its
labels are read from a table and batched, how its predictions read for a person, which
transformers class it exports to, how few-shot training pairs and solves it, what advise counts.

Missing labels (None in data, -100 / NaN in tensors) never contribute to a loss, and a batch
with no labels for a head returns a zero loss that still has a graph, never NaN.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from headkit.data.files import column_values, is_missing
from headkit.errors import DataError, HeadConfigError

IGNORE_INDEX = -100


@dataclass
class HeadConfig:
    """Fields every head has. Head families add their own fields in a subclass."""

    type: str
    input_size: int | None = None  # filled from the backbone's hidden size when None
    labels: list[str] = field(default_factory=list)
    pooling: str = "auto"  # resolved from the backbone when the head joins it (heads/pooling.py)
    dropout: float = 0.1
    loss_weight: float = 1.0
    layer: int = -1  # the hidden state read: -1 the last; 0 the embeddings, k the k-th layer (negative: from the top)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HeadConfigError(
                f"unknown field(s) {unknown} for a '{data.get('type')}' head; expected some of {sorted(known)}"
            )
        return cls(**data)

    def fit_backbone(self, backbone_config: Any) -> None:
        """Fill fields that come from the backbone's config (language-model heads: vocab_size)."""

    def require_labels(self, minimum: int) -> None:
        if len(self.labels) < minimum:
            raise HeadConfigError(
                f"a '{self.type}' head needs at least {minimum} label name(s) in `labels`, got {self.labels}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise HeadConfigError(f"duplicate label names in {self.labels}")


LabelLayout = Literal["index", "vector", "per_token", "sequence"]
"""How a head's labels are stored and batched (the only label shapes the data code knows):
    index      one class id per example: (B,) long, IGNORE_INDEX when missing
    vector     a row of floats per example: (B, K) float, NaN when missing
    per_token  one id per token: (B, T) long, IGNORE_INDEX where a token has no label
    sequence   a target token sequence per example, of its own length: (B, L) long, padded with
               IGNORE_INDEX to the batch's longest target (a missing target is all IGNORE_INDEX)
"""

Inputs = Literal["text", "words", "images", "pairs"]
"""What a head's training rows hold: text, pre-split words (one label per word), image files, or
preference pairs (a prompt and a chosen and a rejected response: headkit.data.pairs)."""


@dataclass(frozen=True)
class LabelSource:
    """Where a head's labels are read from, for label parsing and its error messages."""

    head: str  # the head's name
    column: str  # the label column(s) as the user gave them (several: comma-separated)
    source: str  # the data they come from (a path or a built-in name)
    # label names a source declares per column, in their order (a datasets ClassLabel)
    declared: dict[str, list[str]] = field(default_factory=dict, compare=False, hash=False)

    def declared_names(self, column: str | None = None, present: set[str] | None = None) -> list[str] | None:
        """The declared label names of `column` (default: the label column), checked to hold every
        value `present`; None when the source declares none."""
        names = self.declared.get(column or self.column)
        if names is None:
            return None
        unknown = sorted((present or set()) - set(names))
        if unknown:
            raise DataError(
                f"column '{column or self.column}' of {self.source} holds {unknown}, "
                f"not among its declared labels {names}"
            )
        return list(names)

    def columns(self) -> list[str]:
        return [c.strip() for c in self.column.split(",")]


@dataclass(frozen=True)
class Pair:
    """A contrastive pair for few-shot tuning: two examples and how similar their embeddings
    should be. Position -1 compares pooled vectors; a position >= 0 compares that token's vector."""

    head: str
    left: int
    right: int
    target: float
    left_pos: int = -1
    right_pos: int = -1


class Head(Protocol):
    """Everything code outside heads/ asks of a head; code outside heads/ never reads a head's
    type name to decide what to do. `HeadBase` gives the optional members their defaults. The
    class attributes and classmethods are read before a head is built (data preparation,
    advice); the methods after.
    """

    # type level

    per_token: ClassVar[bool]  # works on every position (no pooling); False: on one pooled vector
    inputs: ClassVar[Inputs]
    label_layout: ClassVar[LabelLayout | None]  # None: this head is not trained from table files
    primary_metric: ClassVar[str]  # what early stopping and the summary rank by (unless told otherwise)
    metrics: ClassVar[dict[str, bool]]  # every metric `score` reports -> whether higher is better
    crop_ok: ClassVar[bool]  # False: outputs are image positions, so images are never centre-cropped
    export_target: ClassVar[str | None]  # the transformers Auto class that holds exactly this head
    pipeline_tag: ClassVar[str | None]  # the Hub's task name for it (model cards), None: no such task
    architectures: ClassVar[tuple[str, ...]]  # transformers class-name endings that carry this head
    fewshot: ClassVar[bool]  # few-shot training can make pairs for it and solve it in closed form
    class_noun: ClassVar[str]  # what one of its labels is called in advice ("class", "label")
    suggested_name: ClassVar[str]  # the head name advise writes in the commands it prints
    needs_processor: ClassVar[bool]  # it reads or writes text, so the model hands it the tokenizer
    writes_text: ClassVar[bool]  # its predictions are generated text (`headkit generate` answers with it)

    @classmethod
    def label_names(cls, rows: list[dict[str, Any]], where: LabelSource) -> list[str]: ...
    @classmethod
    def encode_labels(
        cls, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> Any: ...
    @classmethod
    def tokenize_labels(cls, y: Any, processor: Any, where: LabelSource) -> Any: ...
    @classmethod
    def label_counts(cls, values: list[Any]) -> dict[str, int]: ...
    @classmethod
    def describe_counts(cls, counts: dict[str, int]) -> str: ...
    @classmethod
    def fewshot_pairs(cls, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]: ...
    @classmethod
    def fewshot_similarity(cls, a: Any, b: Any, span: np.ndarray) -> float | None: ...
    @classmethod
    def auto_class_weights(cls, y: Any, width: int) -> list[float] | None: ...

    # instance level
    config: HeadConfig

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor: ...
    def forward_pooled(self, pooled: Tensor) -> Tensor: ...
    def loss(self, output: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, int]: ...
    def decode(self, output: Tensor, mask: Tensor) -> list[Any]: ...
    def references(self, labels: Tensor, mask: Tensor) -> list[Any]: ...
    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]: ...
    def scores_from_loss(self, mean_loss: float) -> dict[str, float]: ...
    def class_decisions(self, predictions: list[Any], references: list[Any]) -> tuple[list, list] | None: ...
    def for_image(self, prediction: Any, width: int, height: int) -> Any: ...
    def for_text(self, prediction: Any, encoding: Any, text: str) -> Any: ...
    def brief(self, prediction: Any) -> str: ...
    def pipeline_output(self, prediction: Any) -> Any: ...
    def table_cells(self, prediction: Any) -> dict[str, Any]: ...
    def attach(self, backbone: nn.Module) -> None: ...
    def use_processor(self, processor: Any) -> None: ...
    def set_generation(self, max_new_tokens: int | None = None, num_beams: int | None = None) -> None: ...
    def export_config(self, config: Any) -> None: ...
    def export_output(self, out: Any) -> Tensor: ...
    def fewshot_fit(self, features: np.ndarray, y: Any) -> None: ...
    def calibrate(self, predictions: list[Any], references: list[Any]) -> dict[str, float] | None: ...
    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None: ...


class HeadBase(nn.Module):
    """Defaults for the optional members of `Head`: a head type overrides what applies to it."""

    per_token: ClassVar[bool] = False
    inputs: ClassVar[Inputs] = "text"
    label_layout: ClassVar[LabelLayout | None] = None
    metrics: ClassVar[dict[str, bool]] = {}  # a metric not listed counts as higher-is-better
    crop_ok: ClassVar[bool] = True
    export_target: ClassVar[str | None] = None
    pipeline_tag: ClassVar[str | None] = None
    architectures: ClassVar[tuple[str, ...]] = ()
    fewshot: ClassVar[bool] = False
    class_noun: ClassVar[str] = "class"
    suggested_name: ClassVar[str] = "label"
    needs_processor: ClassVar[bool] = False
    writes_text: ClassVar[bool] = False
    config: HeadConfig

    @classmethod
    def label_names(cls, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        """The label map, inferred from the training rows (sorted, so it is deterministic)."""
        raise DataError(f"head '{where.head}': a {cls.__name__} cannot be trained from table files yet")

    @classmethod
    def encode_labels(
        cls, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> Any:
        """Raw column values -> this head's label array, in its `label_layout`."""
        raise DataError(f"head '{where.head}': a {cls.__name__} cannot be trained from table files yet")

    @classmethod
    def tokenize_labels(cls, y: Any, processor: Any, where: LabelSource) -> Any:
        """Labels that are text (seq2seq targets) -> token ids with the run's tokenizer; others as they are."""
        return y

    @classmethod
    def label_counts(cls, values: list[Any]) -> dict[str, int]:
        """How many examples carry each label (advise's class balance); {} for heads without classes."""
        return {}

    @classmethod
    def describe_counts(cls, counts: dict[str, int]) -> str:
        """`label_counts` in a few words, e.g. "2 classes (fresh 235, rotten 165)"."""
        shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:8])
        return f"{len(counts)} {cls.class_noun}{'es' if cls.class_noun.endswith('s') else 's'} ({shown})"

    @classmethod
    def fewshot_pairs(cls, head: str, y: Any, iterations: int, rng: np.random.Generator) -> list[Pair]:
        raise HeadConfigError(f"strategy fewshot cannot train a {cls.__name__} ('{head}'): use frozen, lora or full")

    @classmethod
    def fewshot_similarity(cls, a: Any, b: Any, span: np.ndarray) -> float | None:
        """How alike two examples' labels are, in [0, 1] (`span`: each label column's range), for
        few-shot's all-pairs steps; None for heads without one (per-token heads pair tokens, not
        examples, and keep the pairs of `fewshot_pairs`)."""
        return None

    @classmethod
    def auto_class_weights(cls, y: Any, width: int) -> list[float] | None:
        """`class_weights: auto` from the encoded training labels `y` (`width` classes): one loss
        weight per label, inverse to its frequency. None: this head has no classes to weigh."""
        return None

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        raise HeadConfigError(f"a {type(self).__name__} reads every position, not a pooled vector")

    def scores_from_loss(self, mean_loss: float) -> dict[str, float]:
        """Metrics that follow from the mean loss alone (language models: perplexity)."""
        return {}

    def class_decisions(self, predictions: list[Any], references: list[Any]) -> tuple[list, list] | None:
        """(true, predicted) class per labelled example, for a confusion matrix; None if not classes."""
        return None

    def for_image(self, prediction: Any, width: int, height: int) -> Any:
        """A prediction in the coordinates of the image as given (boxes: pixels)."""
        return prediction

    def for_text(self, prediction: Any, encoding: Any, text: str) -> Any:
        """A prediction in terms of the text as given (`encoding`: the fast tokenizer's, or None)."""
        return prediction

    def brief(self, prediction: Any) -> str:
        """One readable line for the CLI."""
        if isinstance(prediction, dict):
            return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in prediction.items())
        return str(prediction)

    def pipeline_output(self, prediction: Any) -> Any:
        """A prediction (after `for_text`) in the form transformers pipelines give for this task."""
        return prediction

    def table_cells(self, prediction: Any) -> dict[str, Any]:
        """Flat columns for a CSV of predictions, by suffix of the head's name ("": its own column)."""
        return {"": json.dumps(prediction, ensure_ascii=False)}

    def attach(self, backbone: nn.Module) -> None:
        """Called once the head sits on its backbone (language-model heads tie their decoder here)."""

    def use_processor(self, processor: Any) -> None:
        """Receive the model's tokenizer (only heads with `needs_processor` are given it)."""

    def set_generation(self, max_new_tokens: int | None = None, num_beams: int | None = None) -> None:
        """How text-writing heads generate from now on (None: unchanged); other heads ignore it."""

    def export_config(self, config: Any) -> None:
        """Set what `export_target` needs in a copy of the backbone's config (labels, problem type)."""

    def export_output(self, out: Any) -> Tensor:
        """The exported model's output, in the layout of this head's own output."""
        return out.logits

    def fewshot_fit(self, features: np.ndarray, y: Any) -> None:
        raise HeadConfigError(f"a {type(self).__name__} has no closed-form few-shot solution")

    def calibrate(self, predictions: list[Any], references: list[Any]) -> dict[str, float] | None:
        """Tune decision settings on validation predictions (multi-label: a threshold per label),
        kept in the config so they are saved with the head, and re-decide `predictions` (in place)
        at them, as `decode` now would; returns what was set, or None."""
        return None

    def report(self, predictions: list[Any], references: list[Any]) -> dict[str, dict[str, float]] | None:
        """Per-class precision / recall / F1 / support (classification_report's dict), or None."""
        return None


def perplexity(mean_loss: float) -> float:
    """exp of a mean token cross-entropy, capped so that a diverged loss reads as huge, not inf."""
    return math.exp(min(mean_loss, 50))


def balanced_weights(counts: np.ndarray) -> list[float]:
    """scikit-learn's "balanced" class weights, n / (k * count); a class never seen weighs 1."""
    counts = np.asarray(counts, dtype=np.float64)
    seen = counts > 0
    weights = np.ones_like(counts)
    weights[seen] = counts[seen].sum() / (seen.sum() * counts[seen])
    return [round(float(w), 6) for w in weights]


def weight_tensor(weights: list[float] | None, output: Tensor) -> Tensor | None:
    """A config's `class_weights` as the loss's `weight` / `pos_weight` tensor (None: unweighted)."""
    return torch.tensor(weights, dtype=torch.float32, device=output.device) if weights else None


def report_dict(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """A classification_report (scikit-learn or seqeval, output_dict=True) as plain floats, per
    class and average; the lone `accuracy` entry is dropped (it is in the head's scores)."""
    return {
        name: {key.replace("f1-score", "f1"): float(v) for key, v in row.items()}
        for name, row in report.items()
        if isinstance(row, dict)
    }


def real_positions(values: Tensor, mask: Tensor) -> list[list[Any]]:
    """Each row's values at its real (mask 1) positions, in order, whichever side the batch was
    padded on: per-token predictions and labels line up with the text's own tokens."""
    keep = mask.bool().cpu()
    return [row[m].tolist() for row, m in zip(values.cpu(), keep, strict=True)]


def zero_loss(output: Tensor) -> Tensor:
    """A zero that keeps the autograd graph, for batches with no labels for a head.

    Masked logits hold huge negative values whose sum overflows to -inf (and -inf * 0 is NaN),
    so entries are zeroed before summing, non-finite ones included.
    """
    return (torch.where(torch.isfinite(output), output, 0.0) * 0.0).sum()


def labelled(predictions: list[Any], references: list[Any]) -> tuple[list[Any], list[Any]]:
    """Keep only the examples that have a reference label."""
    pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
    return [p for p, _ in pairs], [r for _, r in pairs]


def rows_with_labels(labels: Tensor) -> Tensor:
    """Boolean (B,) mask of rows whose float labels are all present (no NaN)."""
    return ~torch.isnan(labels.float()).reshape(labels.shape[0], -1).any(dim=1)


def dropout_linear(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    """The standard classifier: dropout then one linear layer (as in BERT's task heads)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))


def set_label_maps(config: Any, labels: list[str], problem_type: str | None) -> None:
    """id2label / label2id / num_labels / problem_type on a transformers config (for exports)."""
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = problem_type


# ----------------------------------------------------------------------------- label parsing helpers


def label_values(rows: list[dict[str, Any]], where: LabelSource, column: str | None = None) -> list[Any]:
    """A head's label column, or a DataError when it holds no label at all."""
    values = column_values(rows, column or where.column, where.source)
    if all(is_missing(v) for v in values):
        raise DataError(f"column '{where.column}' of {where.source} has no labels at all for head '{where.head}'")
    return values


def label_order(names: Iterable[str]) -> list[str]:
    """Distinct label names in a stable order: numerically when every name is a number (star
    ratings 1, 2, 10, not the strings' 1, 10, 2), else alphabetically."""
    distinct = set(names)
    try:
        return sorted(distinct, key=lambda name: (float(name), name))
    except ValueError:
        return sorted(distinct)


def label_index(labels: list[str], where: LabelSource) -> Callable[[str, int], int]:
    """name -> id in the label map; a name never seen in training is an error naming the row."""
    index = {name: i for i, name in enumerate(labels)}

    def lookup(name: str, row: int) -> int:
        if name not in index:
            raise DataError(
                f"label {name!r} of head '{where.head}' (row {row}) was never seen in training; "
                f"known labels: {labels[:20]}"
            )
        return index[name]

    return lookup
