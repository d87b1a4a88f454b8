"""Export every head to one ONNX graph: the backbone and every head (one backbone pass answers all
heads), dynamic batch and sequence axes, onnxruntime's transformer fusions where it has them, and
optionally an int8 copy (quantize.py). The directory also holds the tokenizer, the backbone's
config and `onnx.json` (the head configs), which is all `headkit predict --engine onnx` needs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from headkit._fs import atomic_write_bytes, atomic_write_json, staged_dir
from headkit.errors import ExportError
from headkit.extras import require
from headkit.model import MultiHeadModel
from headkit.ship.export.common import (
    ExportResult,
    check_output_dir,
    load_merged,
    next_step,
    probe_inputs,
    steps_bar,
)
from headkit.ship.export.quantize import describe_error, quantize_graph
from headkit.ship.onnx_engine import HEAD_STATE, ONNX_FILE, ONNX_FORMAT, ONNX_INT8_FILE, ONNX_MANIFEST
from headkit.ship.save import read_manifest


class AllHeads(nn.Module):
    """The graph ONNX sees: backbone inputs in, one output tensor per head out (in head order)."""

    def __init__(self, model: MultiHeadModel, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        out = self.model(**dict(zip(self.input_names, inputs, strict=True)))
        return tuple(out.outputs[name] for name in self.model.heads)


def export_onnx(
    run: str | os.PathLike,
    output_dir: str | os.PathLike,
    quantize: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    optimize: bool = True,
) -> ExportResult:
    """Every head in one ONNX graph with dynamic batch/sequence axes, with onnxruntime's transformer
    fusions for the backbone's type (`optimize`); `quantize` adds an int8 copy of that graph and
    measures how far its outputs move from the fp32 graph's on the probe inputs (`int8_error`)."""
    require("onnx", "ONNX export")
    steps = ["loading", "tracing the graph", *(["fusing"] if optimize else []), *(["quantising"] if quantize else [])]
    bar = steps_bar("export onnx", [*steps, "writing"], progress)
    model, processor, source = load_merged(run)
    next_step(bar)
    writers = [name for name, head in model.heads.items() if head.view.writes_text]
    if writers:
        raise ExportError(
            f"head(s) {writers} write text with a decoding loop (generate), which one ONNX graph of the forward "
            "pass does not hold; serve or predict this model with the torch engine"
        )
    output_dir = Path(output_dir)
    check_output_dir(output_dir, source, overwrite)
    inputs = probe_inputs(model, processor)
    names = list(inputs)
    int8_error: dict[str, float] = {}
    with staged_dir(output_dir) as staging:
        outputs = graph_outputs(list(model.heads))
        _export_graph(AllHeads(model, names).eval(), inputs, outputs, _dynamic_axes(inputs), staging)
        next_step(bar)
        fused = "not asked for"
        if optimize:
            fused = _optimize(staging / ONNX_FILE, model.backbone.config)
            next_step(bar)
        if quantize:
            by_output = quantize_graph(staging / ONNX_FILE, staging / ONNX_INT8_FILE, inputs)
            int8_error = {head: by_output[out] for head, out in zip(model.heads, outputs, strict=True)}
            next_step(bar)
        if processor is not None:
            processor.save_pretrained(staging)
        model.backbone.config.save_pretrained(staging)
        _write_head_state(model, staging)
        _write_manifest(staging, source, names, outputs, fused, int8_error)
    bar.close()
    from headkit.ship.engines import validate_after_export  # engines read this export, never write one

    checked = validate_after_export(source, output_dir)
    files = ONNX_FILE + (f" and {ONNX_INT8_FILE} (int8 weights; {describe_error(int8_error)})" if quantize else "")
    return ExportResult(
        output_dir,
        "onnx",
        f"{len(model.heads)} head(s) ({', '.join(model.heads)}) in one graph: {files}; graph optimisation: "
        f"{fused}; run it with headkit predict {output_dir} --engine onnx",
        int8_error,
        checked,
    )


def graph_outputs(heads: list[str]) -> list[str]:
    """The graph's output per head, prefixed: a head named as a node of the backbone's graph (a head
    called `embedding`) would otherwise define that name twice, and onnxruntime refuses the graph."""
    return [f"headkit.{name}" for name in heads]


def _dynamic_axes(inputs: dict[str, Tensor]) -> dict[str, dict[int, Any]]:
    """Batch on every input; sequence (tokens, or audio samples: 262 s at 16 kHz) on 2-D ones."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    if "input_values" in inputs:
        seq = torch.export.Dim("samples", min=1, max=2**22)
    else:
        seq = torch.export.Dim("sequence", min=1, max=8192)
    return {n: ({0: batch, 1: seq} if t.dim() == 2 else {0: batch}) for n, t in inputs.items()}


def _write_head_state(model: MultiHeadModel, staging: Path) -> None:
    """The heads' fitted buffers (multi-label thresholds), which the ONNX engine's heads decide with."""
    state = {
        f"{name}.{key}": buffer.detach().cpu().contiguous()
        for name, head in model.heads.items()
        for key, buffer in head.named_buffers()
        if key in head.state_dict()
    }
    if state:
        atomic_write_bytes(staging / HEAD_STATE, safetensors.torch.save(state))


def saved_columns(source: Path) -> dict[str, Any]:
    """The training columns a save's config.json records ({} for a save without one)."""
    from headkit.config import MultiHeadConfig
    from headkit.errors import CheckpointError

    try:
        return dict(MultiHeadConfig.from_pretrained(source).columns)
    except CheckpointError:
        return {}


def _write_manifest(
    staging: Path, source: Path, inputs: list[str], outputs: list[str], fused: str, int8_error: dict[str, float]
) -> None:
    """onnx.json: what the ONNX engine reads (inputs, outputs, head configs, fingerprint, limit)
    and the sha256 of each graph, checked on load."""
    manifest = read_manifest(source)  # head configs, whichever save format holds them
    graphs = [f for f in (ONNX_FILE, ONNX_INT8_FILE, HEAD_STATE) if (staging / f).is_file()]
    atomic_write_json(
        staging / ONNX_MANIFEST,
        {
            "format": ONNX_FORMAT,
            "inputs": inputs,
            "outputs": outputs,  # one per head, in the order of "heads"
            "heads": manifest["heads"],
            "backbone": manifest["backbone"],
            "max_length": manifest.get("max_length"),
            "columns": saved_columns(source),  # the data columns each head trained on (predict --input reads them)
            "graph_optimization": fused,
            **({"int8_error": int8_error} if int8_error else {}),
            "files": {f: hashlib.sha256((staging / f).read_bytes()).hexdigest() for f in graphs},
        },
    )


# transformers model types whose graphs onnxruntime's transformer optimizer knows (as its own types)
ORT_MODEL_TYPES = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet"), "bert"),
    "gpt2": "gpt2",
    "vit": "vit",
    "swin": "swin",
}


def _optimize(path: Path, config: Any) -> str:
    """onnxruntime's transformer fusions (SkipLayerNormalization, BiasGelu, Attention where it finds
    the pattern) for the backbone's model type, in place; returns what was fused. A type the
    optimizer does not know, or a graph it cannot read, is kept as exported (said so)."""
    kind = ORT_MODEL_TYPES.get(getattr(config, "model_type", ""))
    if kind is None:
        return f"none (onnxruntime has no transformer fusions for {getattr(config, 'model_type', '?')})"
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimized = optimize_model(
            str(path),
            model_type=kind,
            num_heads=getattr(config, "num_attention_heads", 0) or 0,
            hidden_size=getattr(config, "hidden_size", 0) or 0,
        )
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(path))
    except Exception as e:  # onnxruntime raises its own untyped errors
        return f"none (onnxruntime's optimizer failed: {type(e).__name__}; the graph is kept as exported)"
    return ", ".join(f"{n} {op}" for op, n in fused.items()) or "nothing to fuse"


def _export_graph(module: nn.Module, inputs: dict[str, Tensor], outputs: list[str], dynamic, staging: Path) -> None:
    """torch.onnx (dynamo) writes `module` to staging/model.onnx; its failures become ExportError."""
    import logging
    import warnings

    # The exporter logs a warning per torchvision op it cannot register; none is used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    names = list(inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                tuple(inputs.values()),
                input_names=names,
                output_names=outputs,
                dynamic_shapes=(tuple(dynamic[n] for n in names),),  # one entry: forward(*inputs)
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as e:  # the exporter raises many internal types; the user needs the reason
            raise ExportError(f"torch.onnx could not export this model: {type(e).__name__}: {str(e)[:400]}") from e
    assert program is not None  # the dynamo exporter returns its program
    program.save(str(staging / ONNX_FILE))
