"""Export spec: the transformers class that holds exactly a head type, its Hub task, and how the
exported model is configured and read (the part `export`; headkit.ship.export does the export).

    export = ExportSpec("AutoModelForTokenClassification", "token-classification", configure=label_maps(None))

A head type without a transformers equivalent keeps the default, `ExportSpec()`: it still
exports to ONNX, which runs any head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from headkit.heads.part import Part


def logits(out: Any) -> Tensor:
    """What most transformers task classes return: `logits`, in the layout of the head's output."""
    return out.logits


@dataclass(frozen=True)
class ExportSpec(Part):
    target: str | None = None  # the transformers Auto class that holds exactly this head
    pipeline_tag: str | None = None  # the Hub's task name for it (model cards), None: no such task
    architectures: tuple[str, ...] = ()  # transformers class-name endings that carry this head (inspect)
    fill: Callable[[Any, Any], None] | None = None  # (head, transformers config) -> None
    read: Callable[[Any], Tensor] = logits  # the exported model's output -> this head's output
    feed: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None  # our inputs -> the exported model's

    def configure(self, config: Any) -> None:
        """Set what `target` needs in a copy of the backbone's config (labels, problem type)."""
        if self.fill is not None:
            self.fill(self.head, config)

    def inputs(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The inputs the exported model takes for the rows this head reads (most: the same)."""
        return inputs if self.feed is None else self.feed(inputs)

    def output(self, out: Any) -> Tensor:
        """The exported model's output, in the layout of this head's own output."""
        return self.read(out)


def label_maps(problem_type: str | None) -> Callable[[Any, Any], None]:
    """A `fill` that sets id2label / label2id / num_labels / problem_type from the head's labels."""

    def fill(head: Any, config: Any) -> None:
        labels = list(head.config.labels)
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        config.problem_type = problem_type

    return fill
