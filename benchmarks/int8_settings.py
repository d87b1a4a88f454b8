"""Would other onnxruntime int8 settings pass `--engine auto`'s check on a run?

The export's int8 graph is onnxruntime's `quantize_dynamic` with its defaults. When the engine
check refuses it (agreement with torch fp32 below 99.5% on a head, or its primary metric moved
more than 0.3 point), this script tries other dynamic-quantisation settings on the same export and
prints, for each, what the check would judge: speed against torch fp32 (the check's own timing),
each head's agreement and primary-metric change. The run's export is not touched (each graph is
written to a copy).

    headkit train --config configs/demo.yaml --output_dir runs/demo
    headkit export runs/demo --to onnx
    python benchmarks/int8_settings.py runs/demo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any


def weight_shapes(graph: Any) -> dict[str, tuple[int, ...]]:
    """Each MatMul / Gemm node that multiplies by a weight, in graph order: its weight's shape."""
    weights = {i.name: tuple(i.dims) for i in graph.initializer}
    return {
        node.name: weights[node.input[1]]
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights
    }


def body_matmuls(shapes: dict[str, tuple[int, ...]], hidden: int, intermediate: int, layers: int) -> list[list[str]]:
    """The encoder's weight matmuls, in graph order, one list per layer: those whose weight is
    hidden x hidden (attention) or touches the feed-forward width (the heads' are neither)."""
    body = [name for name, shape in shapes.items() if shape == (hidden, hidden) or intermediate in shape]
    per_layer = len(body) // layers
    return [body[i * per_layer : (i + 1) * per_layer] for i in range(layers)]


def settings(per_layer: list[list[str]], shapes: dict[str, tuple[int, ...]], hidden: int) -> dict[str, dict[str, Any]]:
    """Named `quantize_dynamic` keyword sets: the export's, per-channel weights, the first layer
    left in fp32 (the most sensitive here), both, and attention projections only."""
    body = [n for layer in per_layer for n in layer]
    return {
        "export default": {},
        "per-channel weights": {"per_channel": True},
        "first layer fp32": {"nodes_to_exclude": per_layer[0]},
        "per-channel + first layer fp32": {"per_channel": True, "nodes_to_exclude": per_layer[0]},
        "attention projections only": {"nodes_to_exclude": [n for n in body if shapes[n] != (hidden, hidden)]},
    }


def main() -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from headkit.ship.engines import (
        EXPORT_DIR,
        MAX_METRIC_CHANGE,
        MIN_AGREEMENT,
        _agreement,
        _metric_change,
        _score,
        load_torch_model,
    )
    from headkit.ship.onnx_engine import ONNX_FILE, ONNX_INT8_FILE, ONNX_MANIFEST, OnnxModel
    from headkit.training.validation_set import load_validation_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a training run with validation.json and an ONNX export")
    args = parser.parse_args()
    from machine import machine_line

    print(machine_line())
    data = load_validation_set(args.run)
    if data is None or not (args.run / EXPORT_DIR / ONNX_FILE).is_file():
        raise SystemExit(f"{args.run}: needs validation.json and {EXPORT_DIR}/ (headkit export RUN --to onnx)")
    reference, _ = load_torch_model(args.run / "model", "float32", "cpu", False)
    expected, torch_speed = _score(reference, data, 0)
    config = reference.backbone.config
    hidden, intermediate, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        shutil.copytree(args.run / EXPORT_DIR, export)
        shapes = weight_shapes(onnx.load(str(export / ONNX_FILE)).graph)
        per_layer = body_matmuls(shapes, hidden, intermediate, layers)
        print(f"{len(data)} validation examples; {sum(map(len, per_layer))} weight matmuls in {layers} layers")
        print(f"the check: every head agreement >= {MIN_AGREEMENT:.1%}, primary metric within "
              f"{MAX_METRIC_CHANGE * 100:.1f} point\n")  # fmt: skip
        print(f"{'setting':32}{'vs torch':>9}  agreement / metric change per head")
        for name, options in settings(per_layer, shapes, hidden).items():
            quantize_dynamic(export / ONNX_FILE, export / ONNX_INT8_FILE, weight_type=QuantType.QInt8, **options)
            manifest = json.loads((export / ONNX_MANIFEST).read_text())
            manifest["files"][ONNX_INT8_FILE] = hashlib.sha256((export / ONNX_INT8_FILE).read_bytes()).hexdigest()
            (export / ONNX_MANIFEST).write_text(json.dumps(manifest))
            got, speed = _score(OnnxModel(export, int8=True), data, 0)
            heads = []
            passes = True
            for head, module in reference.heads.items():
                agreement = _agreement(module.scoring, got.predictions[head], expected.predictions[head])
                change = _metric_change(module.scoring, got.scores[head], expected.scores[head])
                passes &= agreement >= MIN_AGREEMENT and change <= MAX_METRIC_CHANGE
                heads.append(f"{head} {agreement:.1%} / {100 * change:.2f} pt")
            verdict = "passes" if passes else "refused"
            print(f"{name:32}{speed / torch_speed:8.2f}x  {', '.join(heads)}  -> {verdict}")


if __name__ == "__main__":
    main()
