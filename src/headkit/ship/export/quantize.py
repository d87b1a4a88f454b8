"""The int8 copy of an exported graph: one call to onnxruntime's dynamic quantisation, then its
error measured against the fp32 graph on the export's own probe inputs, so a user reads how far
int8 moves the outputs instead of trusting that it did not."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from torch import Tensor

from headkit.errors import ExportError
from headkit.ship.onnx_engine import as_feed

logger = logging.getLogger(__name__)


def quantize_graph(source: Path, target: Path, inputs: dict[str, Tensor]) -> dict[str, float]:
    """Write `target`: `source` with int8 weights (QInt8) and activations quantised on the fly
    (onnxruntime's `quantize_dynamic`, its defaults otherwise). Returns, per graph output, the
    largest |int8 - fp32| difference on `inputs`. A graph onnxruntime cannot quantise is an
    ExportError that says what to do; nothing is retried another way (onnxruntime's own
    pre-processing changed nothing measurable: see _without_preprocessing_advice)."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _without_preprocessing_advice():
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise ExportError(
            f"onnxruntime {onnxruntime.__version__} could not quantise the graph: {type(e).__name__}: "
            f"{str(e)[:300]}. Export without --quantize (the fp32 graph is complete), or upgrade onnxruntime to "
            "1.32 or newer (Python 3.11+): its quantiser before 1.32 (1.23, the newest for Python 3.10, up to "
            "1.31) rejects the shapes torch.onnx records in the graph as conflicting"
        ) from e
    error = int8_error(source, target, inputs)
    logger.info("int8 graph: %s", describe_error(error))
    return error


def int8_error(fp32: Path, int8: Path, inputs: dict[str, Tensor]) -> dict[str, float]:
    """Per output of the graphs, the largest |int8 - fp32| over every position of `inputs`."""
    import onnxruntime as ort

    feed = {name: as_feed(tensor) for name, tensor in inputs.items()}
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    names = [o.name for o in sessions[0].get_outputs()]
    ours, quantised = (s.run(names, feed) for s in sessions)
    # equal values count 0 even where both are infinite (a masked position), which a - b makes nan
    differences = (np.where(a == b, 0.0, np.abs(a - b)) for a, b in zip(ours, quantised, strict=True))
    return {name: float(d.max()) for name, d in zip(names, differences, strict=True)}


def describe_error(error: dict[str, float]) -> str:
    """One line a person reads: how far int8 moved each head's output from fp32."""
    moved = ", ".join(f"{name} {diff:.3g}" for name, diff in error.items())
    return f"largest |int8 - fp32| output difference on the export's probe inputs: {moved}"


@contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """quantize_dynamic advises, on the root logger, pre-processing the graph first. Measured on
    the MiniLM export of benchmarks/inference.py (onnxruntime 1.32): with pre-processing the int8
    graph has the same operators and gives bit-identical outputs on 400 reviews, so the advice is
    noise to a user and the one call is kept."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
