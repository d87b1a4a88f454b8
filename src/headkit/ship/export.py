"""Export a headkit save to a plain `transformers` checkpoint or to one ONNX graph.

transformers: a single head becomes the matching `AutoModelFor*` class. The backbone's weights
go in unchanged and the head's layers are matched to the class's own head layers by type and
shape; then both models run on the same probe inputs and the export is written only if their
outputs agree. A mapping that is merely plausible (BERT's classifier reads the tanh pooler, a
head with 'cls' pooling does not) is refused with the reason, never written.

ONNX: the backbone and every head in one graph (one backbone pass answers all heads), dynamic
batch and sequence axes, optionally int8 dynamic quantisation. The directory also holds the
tokenizer, the backbone's config and `onnx.json` (the head configs), which is all
`headkit predict --engine onnx` needs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from headkit._fs import atomic_write_json, staged_dir
from headkit.errors import ExportError, ModelNotFoundError
from headkit.extras import require
from headkit.heads import Head
from headkit.model import MultiHeadModel, load
from headkit.ship.onnx_engine import ONNX_FILE, ONNX_FORMAT, ONNX_INT8_FILE, ONNX_MANIFEST
from headkit.ship.predict import resolve_model_dir
from headkit.ship.save import BACKBONE_DIR, MANIFEST, save

MAPPED_LAYERS = (nn.Linear, nn.LayerNorm, nn.Conv1d, nn.Conv2d)


@dataclass
class ExportResult:
    path: Path
    target: str  # the class written, e.g. "BertForSequenceClassification", or "backbone + heads"
    message: str


def load_merged(run: str | os.PathLike) -> tuple[MultiHeadModel, object, Path]:
    """The saved model with any LoRA adapter merged into the backbone (eval mode), its processor, its dir."""
    from headkit.backbone import load_processor

    directory = resolve_model_dir(run)
    model = load(directory)  # the heads are checked against the backbone (and adapter) they were saved with
    if hasattr(model.backbone, "merge_and_unload"):  # a LoRA adapter becomes plain weights
        model.backbone = model.backbone.merge_and_unload()
    try:
        processor = load_processor(directory / BACKBONE_DIR)
    except ModelNotFoundError:
        processor = None  # a backbone saved without its tokenizer/image processor still exports
    return model, processor, directory


def probe_inputs(model: MultiHeadModel, processor) -> dict[str, Tensor]:
    """Two inputs of different lengths (one padded), whatever the modality, for parity checks."""
    config = model.backbone.config
    main = model.backbone.main_input_name
    if main == "pixel_values":
        return {"pixel_values": torch.randn(2, *_pixels_shape(config, processor))}
    if main == "input_values":
        mask = torch.ones(2, 16000, dtype=torch.long)
        mask[1, 12000:] = 0
        return {"input_values": torch.randn(2, 16000), "attention_mask": mask}
    if processor is None:
        raise ExportError("the save has no tokenizer, so the export cannot be checked on text; save it with one")
    texts = ["A short probe.", "A longer probe sentence, so that the first one is padded in the batch."]
    enc = processor(texts, padding=True, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _pixels_shape(config, processor) -> tuple[int, int, int]:
    """(C, H, W) of what the image processor makes (a CNN reads any size, so only the processor
    knows what predict will feed); the config's image_size when there is no processor."""
    from headkit.data.images import is_image_processor

    if processor is not None and is_image_processor(processor):
        from PIL import Image

        return tuple(processor(Image.new("RGB", (64, 64)), return_tensors="pt")["pixel_values"].shape[1:])
    size = getattr(config, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    return getattr(config, "num_channels", 3), size, size


def _layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, MAPPED_LAYERS)]


def _copy_head(head: nn.Module, target: nn.Module, prefix: str, tied: bool) -> None:
    """Copy the head's layers, in order, into the target's own head layers of the same type and shape."""
    ours = _layers(head)
    theirs = [(n, m) for n, m in _layers(target) if not n.startswith(f"{prefix}.") and n != prefix]
    described = [f"{n}: {type(m).__name__}{tuple(m.weight.shape)}" for n, m in theirs]
    mine = [f"{n}: {type(m).__name__}{tuple(m.weight.shape)}" for n, m in ours]
    if len(ours) != len(theirs) or any(
        type(a) is not type(b) or a.weight.shape != b.weight.shape for (_, a), (_, b) in zip(ours, theirs, strict=True)
    ):
        raise ExportError(
            f"{type(target).__name__}'s head has layers {described}, this head has {mine}: no exact mapping; "
            "export --to onnx, or keep the headkit save"
        )
    with torch.no_grad():
        for (_, a), (_, b) in zip(ours, theirs, strict=True):
            if not (tied and b.weight is target.get_input_embeddings().weight):
                b.weight.copy_(a.weight)
            if (a.bias is None) != (b.bias is None):
                raise ExportError(
                    f"{type(target).__name__}'s output layer {'has' if b.bias is not None else 'has no'} bias and "
                    "this head's does not match: no exact mapping; export --to onnx, or keep the headkit save"
                )
            if b.bias is not None:
                b.bias.copy_(a.bias)


def _target_config(model: MultiHeadModel, head: Head):
    """The backbone's config with what the head's transformers class needs (labels, tying)."""
    config = copy.deepcopy(model.backbone.config)
    config.architectures = None
    head.export_config(config)
    return config


def to_transformers_model(model: MultiHeadModel, head_name: str, processor) -> nn.Module:
    """The plain transformers model equivalent to one head on this backbone, checked for parity."""
    import transformers

    head = model.heads[head_name]
    auto_name = head.export_target
    if auto_name is None:
        raise ExportError(
            f"head '{head_name}' is a '{head.config.type}' head and transformers has no AutoModelFor* class for it; "
            "export --to onnx, or keep the headkit save"
        )
    config = _target_config(model, head)
    try:
        target = getattr(transformers, auto_name).from_config(config)
    except ValueError as e:  # its message lists every model type the class knows: too long to be read
        raise ExportError(
            f"transformers has no {auto_name} for a '{config.model_type}' backbone, so head '{head_name}' has no "
            "plain transformers equivalent; export --to onnx, or keep the headkit save"
        ) from e
    target.eval()
    prefix = target.base_model_prefix
    missing, unexpected = target.base_model.load_state_dict(model.backbone.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]  # task classes may drop the pooler
    if missing or unexpected:
        raise ExportError(
            f"{type(target).__name__}'s backbone does not match this one: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    tied = any(n.startswith(f"{head_name}.") for n in model.tied_parameter_names())
    _copy_head(head, target, prefix, tied=tied)
    check_parity(model, head_name, target, probe_inputs(model, processor))
    return target


@torch.no_grad()
def check_parity(model: MultiHeadModel, head_name: str, target: nn.Module, inputs: dict[str, Tensor]) -> float:
    """Max abs difference between our head's output and the exported model's, over real positions."""
    out = model(heads=[head_name], **inputs)
    ours, mask = out.outputs[head_name].float(), out.mask
    theirs = model.heads[head_name].export_output(target(**inputs)).float()
    if ours.shape != theirs.shape:
        raise ExportError(f"{type(target).__name__} returns shape {tuple(theirs.shape)}, this head {tuple(ours.shape)}")
    if model.heads[head_name].per_token:  # padding positions carry no prediction (our span head masks them)
        keep = mask.bool()
        ours, theirs = ours[keep], theirs[keep]
    diff = float((ours - theirs).abs().max())
    scale = float(ours.abs().max().clamp(min=1.0))
    if diff > 1e-4 * scale:
        pooling = model.heads[head_name].config.pooling
        hint = (
            " BERT-style classes classify the backbone's tanh pooler output: train the head with pooling: pooler."
            if pooling in ("cls", "mean", "max") and not model.heads[head_name].per_token
            else ""
        )
        if getattr(model.heads[head_name].config, "normalize", False):
            hint = " The head L2-normalises its input (a fewshot head), which transformers task classes never do."
        raise ExportError(
            f"{type(target).__name__} computes something other than head '{head_name}' (pooling '{pooling}'): "
            f"outputs differ by up to {diff:.3g}, so there is no exact export.{hint} "
            "Otherwise export --to onnx, or keep the headkit save"
        )
    return diff


def _check_output(output_dir: Path, source: Path, overwrite: bool) -> None:
    if output_dir.resolve() == source.resolve() or source.resolve().is_relative_to(output_dir.resolve()):
        raise ExportError(f"the export directory {output_dir} would replace the model being exported; choose another")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ExportError(f"{output_dir} already exists and is not empty; pass --overwrite to replace it")


def steps_bar(description: str, names: list[str], progress: bool) -> tqdm:
    """A bar over an export's named steps (loading, tracing, quantising, writing): the slow ones
    take tens of seconds, and a user should see which one is running."""
    bar = tqdm(total=len(names), desc=description, unit="step", disable=not progress, leave=False)
    bar.step_names = iter(names)  # type: ignore[attr-defined]
    bar.set_postfix_str(next(bar.step_names))  # type: ignore[attr-defined]
    return bar


def next_step(bar: tqdm) -> None:
    bar.update(1)
    bar.set_postfix_str(next(bar.step_names, "done"))  # type: ignore[attr-defined]


def export_transformers(
    run: str | os.PathLike,
    output_dir: str | os.PathLike,
    head: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ExportResult:
    """A single head (or the named one) as a plain transformers checkpoint; several heads as backbone + heads."""
    bar = steps_bar("export transformers", ["loading", "converting and checking parity", "writing"], progress)
    model, processor, source = load_merged(run)
    next_step(bar)
    output_dir = Path(output_dir)
    _check_output(output_dir, source, overwrite)
    names = list(model.heads)
    if head is not None and head not in names:
        raise ExportError(f"no head named '{head}'; this model has {names}")
    if head is None and len(names) > 1:
        save(model, output_dir, processor=processor)
        bar.close()
        return ExportResult(
            output_dir,
            "backbone + heads",
            f"this model has {len(names)} heads ({', '.join(names)}) and a transformers model class has exactly "
            f"one, so it was written as {BACKBONE_DIR}/ (a plain AutoModel checkpoint with its tokenizer, loadable "
            f"without headkit) plus {MANIFEST} + heads.safetensors (load both with headkit.load). For a plain "
            "model of one head, pass --only_head NAME; for every head in one graph, export --to onnx.",
        )
    name = head or names[0]
    target = to_transformers_model(model, name, processor)
    next_step(bar)
    with staged_dir(output_dir) as staging:
        target.save_pretrained(staging, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(staging)
    bar.close()
    return ExportResult(
        output_dir,
        type(target).__name__,
        f"head '{name}' written as {type(target).__name__}; load it with transformers alone, e.g. "
        f"{model.heads[name].export_target}.from_pretrained('{output_dir}') or transformers.pipeline",
    )


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
    fusions for the backbone's type (`optimize`); `quantize` adds an int8 copy of that graph."""
    require("onnx", "ONNX export")
    steps = ["loading", "tracing the graph", *(["fusing"] if optimize else []), *(["quantising"] if quantize else [])]
    steps.append("writing")
    bar = steps_bar("export onnx", steps, progress)
    model, processor, source = load_merged(run)
    next_step(bar)
    writers = [name for name, head in model.heads.items() if head.writes_text]
    if writers:
        raise ExportError(
            f"head(s) {writers} write text with a decoding loop (generate), which one ONNX graph of the forward "
            "pass does not hold; serve or predict this model with the torch engine"
        )
    output_dir = Path(output_dir)
    _check_output(output_dir, source, overwrite)
    inputs = probe_inputs(model, processor)
    names = list(inputs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if "input_values" in inputs:  # audio: samples (262 s at 16 kHz), not tokens
        seq = torch.export.Dim("samples", min=1, max=2**22)
    else:
        seq = torch.export.Dim("sequence", min=1, max=8192)
    dynamic = {n: ({0: batch, 1: seq} if inputs[n].dim() == 2 else {0: batch}) for n in names}
    with staged_dir(output_dir) as staging:
        _export_graph(AllHeads(model, names).eval(), inputs, names, list(model.heads), dynamic, staging / ONNX_FILE)
        next_step(bar)
        fused = "not asked for"
        if optimize:
            fused = _optimize(staging / ONNX_FILE, model.backbone.config)
            next_step(bar)
        if quantize:
            _quantize(staging / ONNX_FILE, staging / ONNX_INT8_FILE)
            next_step(bar)
        if processor is not None:
            processor.save_pretrained(staging)
        model.backbone.config.save_pretrained(staging)
        manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
        atomic_write_json(
            staging / ONNX_MANIFEST,
            {
                "format": ONNX_FORMAT,
                "inputs": names,
                "outputs": list(model.heads),
                "heads": manifest["heads"],
                "backbone": manifest["backbone"],
                "max_length": manifest.get("max_length"),
                "graph_optimization": fused,
                "files": {
                    f: hashlib.sha256((staging / f).read_bytes()).hexdigest()
                    for f in (ONNX_FILE, ONNX_INT8_FILE)
                    if (staging / f).is_file()
                },
            },
        )
    bar.close()
    files = ONNX_FILE + (f" and {ONNX_INT8_FILE} (int8 weights)" if quantize else "")
    return ExportResult(
        output_dir,
        "onnx",
        f"{len(model.heads)} head(s) ({', '.join(model.heads)}) in one graph: {files}; graph optimisation: "
        f"{fused}; run it with headkit predict {output_dir} --engine onnx",
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


def _quantize(source: Path, target: Path) -> None:
    """int8 weights, activations quantised on the fly (onnxruntime's dynamic quantisation), after
    onnxruntime's recommended pre-processing (shape inference and graph optimisation)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, plain = target.with_suffix(".prep.onnx"), target.with_suffix(".plain.onnx")

    def quantize(graph: Path) -> None:
        try:
            quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)  # dynamic axes defeat it
            quantize_dynamic(prepared, target, weight_type=QuantType.QInt8)
        except Exception:  # pre-processing only helps; quantise the graph as it is instead
            quantize_dynamic(graph, target, weight_type=QuantType.QInt8)

    try:
        try:
            quantize(source)
        except Exception:  # onnxruntime 1.23 (the newest for Python 3.10) rejects the exporter's
            graph = onnx.load(str(source))  # shape annotations as conflicting: let it infer its own
            del graph.graph.value_info[:]
            onnx.save(graph, str(plain))
            quantize(plain)
    except Exception as e:
        raise ExportError(f"onnxruntime could not quantise the graph: {type(e).__name__}: {str(e)[:300]}") from e
    finally:
        prepared.unlink(missing_ok=True)
        plain.unlink(missing_ok=True)


def _export_graph(module, inputs, input_names, output_names, dynamic, path: Path) -> None:
    import logging
    import warnings

    # The exporter logs a warning per torchvision op it cannot register; none is used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                tuple(inputs.values()),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=(tuple(dynamic[n] for n in input_names),),  # one entry: forward(*inputs)
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as e:  # the exporter raises many internal types; the user needs the reason
            raise ExportError(f"torch.onnx could not export this model: {type(e).__name__}: {str(e)[:400]}") from e
    program.save(str(path))
