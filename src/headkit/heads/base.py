"""The head contract: a module for the computation, and parts for every other job.

A head is a plain `nn.Module` that turns the backbone's hidden states into its output, with its
own loss and decoding:

    output = head(hidden, mask)                  # hidden: (B, T, H), mask: (B, T) of 0/1
    loss, n = head.loss(output, labels, mask)    # mean over the n labelled examples; n == 0 -> loss 0
    preds = head.decode(output, mask)            # one JSON-friendly prediction per example

Everything else the rest of headkit asks of a head type is a *part* it picks (heads/part.py),
one job each, so a new head type answers what is its own and takes ready-made parts for the rest:

    codec     its labels: read from tables, batched, turned into references (heads/codecs/, one per layout)
    scoring   its metrics: score, report, calibrate, the primary metric and directions (scoring.py)
    view      its predictions for a person, a table or a pipeline (presentation.py)
    export    the transformers class and Hub task that hold it (export.py)
    fewshot   its closed-form few-shot solution, or None (fewshot.py)

Code outside heads/ asks the parts (`head.scoring.score(...)`, `head_class(t).codec.label_names(...)`)
and never branches on a head's type name. A head is described completely by a small frozen
config (serialised into `heads.json`): what the backbone decides is resolved into a new config
before the head is built (`fitted_to`), and what training fits afterwards (multi-label
thresholds) lives in the head's buffers, saved with its weights.

Missing labels (None in data, -100 / NaN in tensors) never contribute to a loss, and a batch
with no labels for a head returns a zero loss that still has a graph, never NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headkit._typing import Backbone
from headkit.errors import HeadConfigError
from headkit.heads.codecs import Codec
from headkit.heads.export import ExportSpec
from headkit.heads.fewshot import FewShot
from headkit.heads.labels import IGNORE_INDEX
from headkit.heads.pooling import pool
from headkit.heads.presentation import View
from headkit.heads.scoring import Scoring


@dataclass(frozen=True)
class HeadConfig:
    """Fields every head has. Head families add their own fields in a subclass, also a frozen
    dataclass: a config is a value (PEFT keeps config, layer and model apart), so nothing changes
    it under a head built from it; `dataclasses.replace` makes the new config a change needs."""

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

    def task_options(self) -> dict[str, Any]:
        """The settings of this config that its data is encoded with (a task's `options`), so that
        a head given as a config, or a saved head trained or scored again, reads data as it did;
        {} for most heads."""
        return {}

    def fitted_to(self, backbone: Backbone) -> HeadConfig:
        """This config with what the backbone decides filled in (language-model heads: the
        vocabulary, whether the decoder is tied); a new object, this one is left as it is."""
        return self

    def require_labels(self, minimum: int) -> None:
        if len(self.labels) < minimum:
            raise HeadConfigError(
                f"a '{self.type}' head needs at least {minimum} label name(s) in `labels`, got {self.labels}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise HeadConfigError(f"duplicate label names in {self.labels}")


class Head(Protocol):
    """Everything code outside heads/ asks of a head: the module, and the parts it picked. The
    class attributes are read before a head is built (data preparation, advice); the rest after."""

    per_token: ClassVar[bool]  # works on every position (no pooling); False: on one pooled vector
    needs_processor: ClassVar[bool]  # it reads or writes text, so the model hands it the tokenizer
    codec: ClassVar[Codec]
    scoring: ClassVar[Scoring]
    view: ClassVar[View]
    export: ClassVar[ExportSpec]
    fewshot: ClassVar[FewShot | None]

    @property
    def config(self) -> HeadConfig: ...  # read-only here: each head type holds its own config class

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor: ...
    def forward_pooled(self, pooled: Tensor) -> Tensor: ...
    def loss(self, output: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, int]: ...
    def decode(self, output: Tensor, mask: Tensor) -> list[Any]: ...
    def attach(self, backbone: Backbone) -> None: ...
    def use_processor(self, processor: Any) -> None: ...
    def set_generation(self, max_new_tokens: int | None = None, num_beams: int | None = None) -> None: ...


class HeadBase(nn.Module):
    """The defaults a head type starts from: a pooled head (it defines `forward_pooled`, `loss`
    and `decode`) with the plain parts; a head type overrides what applies to it."""

    per_token: ClassVar[bool] = False
    needs_processor: ClassVar[bool] = False
    # the head's learning rate is the run's `lr` times this: a head that starts from something
    # learned (an embedding head's identity projection) wants a gentler rate than a new classifier
    lr_scale: ClassVar[float] = 1.0
    # a head type built from pretrained modules (a copied decoder, an imported language-model head)
    # trains at this rate where the run's `lr` is its strategy's: frozen's and lora's 1e-2 are
    # chosen for new layers, and would undo what such a head brings. An --lr set by hand applies.
    pretrained_lr: ClassVar[float | None] = None
    codec: ClassVar[Codec] = Codec()  # not trained from table files
    scoring: ClassVar[Scoring] = Scoring()
    view: ClassVar[View] = View()
    export: ClassVar[ExportSpec] = ExportSpec()  # no transformers class holds it (ONNX does)
    fewshot: ClassVar[FewShot | None] = None
    config: HeadConfig

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.forward_pooled(pool(hidden, mask, self.config.pooling))

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        raise HeadConfigError(f"a {type(self).__name__} reads every position, not a pooled vector")

    # The mask is the contract's (Head): heads that read every position need it, pooled heads
    # may take it as optional.
    def loss(self, output: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, int]:
        raise NotImplementedError

    def decode(self, output: Tensor, mask: Tensor) -> list[Any]:
        raise NotImplementedError

    def attach(self, backbone: Backbone) -> None:
        """Called once the head sits on its backbone (language-model heads tie their decoder here)."""

    def use_processor(self, processor: Any) -> None:
        """Receive the model's tokenizer (only heads with `needs_processor` are given it)."""

    def set_generation(self, max_new_tokens: int | None = None, num_beams: int | None = None) -> None:
        """How text-writing heads generate from now on (None: unchanged); other heads ignore it."""


if TYPE_CHECKING:

    class HeadModules(nn.ModuleDict):
        """`MultiHeadModel.heads` as the type checker sees it: torch types an nn.ModuleDict's values
        as plain Modules, and a model's are heads."""

        def __getitem__(self, key: str) -> HeadBase: ...
        def values(self) -> Iterator[HeadBase]: ...  # type: ignore[override]  # a narrower element type
        def items(self) -> Iterator[tuple[str, HeadBase]]: ...  # type: ignore[override]


def first_rows(head: Any, output: Tensor, examples: int) -> Tensor:
    """A head's output for `examples` examples: beside a head whose examples are several rows of
    a batch (a text and its partner), a head of one row per example reads each example's first
    row (the text column), the first `examples` rows."""
    if output.shape[0] > examples and not head.codec.multi_row:
        return output[:examples]
    return output


def zero_loss(output: Tensor) -> Tensor:
    """A zero that keeps the autograd graph, for batches with no labels for a head.

    Masked logits hold huge negative values whose sum overflows to -inf (and -inf * 0 is NaN),
    so entries are zeroed before summing, non-finite ones included.
    """
    return (torch.where(torch.isfinite(output), output, 0.0) * 0.0).sum()


def class_loss(output: Tensor, labels: Tensor, weights: list[float] | None = None) -> tuple[Tensor, int]:
    """Cross-entropy of (B, C) logits against (B,) class ids, IGNORE_INDEX skipped; `weights` per
    class; and the number of labelled examples."""
    n = int((labels != IGNORE_INDEX).sum())
    if n == 0:
        return zero_loss(output), 0
    weight = weight_tensor(weights, output)
    return F.cross_entropy(output.float(), labels.long(), weight=weight, ignore_index=IGNORE_INDEX), n


def weight_tensor(weights: list[float] | None, output: Tensor) -> Tensor | None:
    """A config's `class_weights` as the loss's `weight` / `pos_weight` tensor (None: unweighted)."""
    return torch.tensor(weights, dtype=torch.float32, device=output.device) if weights else None


def dropout_linear(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    """The standard classifier: dropout then one linear layer (as in BERT's task heads)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))
