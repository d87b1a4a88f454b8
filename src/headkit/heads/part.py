"""A part: one job of a head type (its labels, metrics, presentation, export, few-shot solution).

A head type picks its parts as class attributes (`codec = IndexCodec()`), so a new head type
answers only what is its own and takes ready-made parts for the rest. A part is a plain object
with methods; what makes it a part is how it is read:

    head_class("classification").codec.label_names(rows, where)   # from the class: type-level facts
    head.codec.references(labels, mask)                            # from a head: bound, self.head is it

Bound parts are how a metric reads the head's label names or a calibration its thresholds,
without every method taking the head as an argument: the way a function read from an instance
comes bound as a method.
"""

from __future__ import annotations

import copy
from typing import Any


class Part:
    """Base of every part: reading it from a head gives a copy bound to that head (`self.head`)."""

    head: Any = None  # the head this copy is bound to; None when read from the class

    def __get__(self, head: Any, owner: type | None = None) -> Any:
        if head is None:
            return self
        bound = copy.copy(self)
        object.__setattr__(bound, "head", head)  # also for parts that are frozen dataclasses
        return bound

    @property
    def names(self) -> list[str]:
        """The bound head's label names (class names, tags, target names, a CTC vocabulary)."""
        if self.head is None:
            raise TypeError(f"{type(self).__name__} needs a head: read it from a head, not from its class")
        return list(self.head.config.labels)
