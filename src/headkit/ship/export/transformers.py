"""Export one head as a plain `transformers` checkpoint (its `AutoModelFor*` class).

The backbone's weights go in unchanged and the head's layers are matched to the class's own head
layers by type and shape; then both models run on the same probe inputs and the export is
written only if their outputs agree. A mapping that is merely plausible (BERT's classifier reads
the tanh pooler, a head with 'cls' pooling does not) is refused with the reason, never written.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from headkit._fs import staged_dir
from headkit.errors import ExportError
from headkit.heads import Head
from headkit.model import MultiHeadModel
from headkit.ship.export.common import (
    ExportResult,
    check_output_dir,
    load_merged,
    next_step,
    probe_inputs,
    steps_bar,
)
from headkit.ship.save import BACKBONE_DIR, MANIFEST, save

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MAPPED_LAYERS = (nn.Linear, nn.LayerNorm, nn.Conv1d, nn.Conv2d)


def _layers(module: nn.Module) -> list[tuple[str, Any]]:  # the MAPPED_LAYERS, each with weight and bias
    return [(n, m) for n, m in module.named_modules() if isinstance(m, MAPPED_LAYERS)]


def _copy_head(head: nn.Module, target: PreTrainedModel, prefix: str, tied: bool) -> None:
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
    head.export.configure(config)
    return config


def to_transformers_model(model: MultiHeadModel, head_name: str, processor) -> PreTrainedModel:
    """The plain transformers model equivalent to one head on this backbone, checked for parity."""
    import transformers

    head = model.heads[head_name]
    auto_name = head.export.target
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
    export = model.heads[head_name].export
    theirs = export.output(target(**export.inputs(inputs))).float()
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
    check_output_dir(output_dir, source, overwrite)
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
            f"without headkit) plus {MANIFEST} + heads/ (load both with headkit.load). For a plain "
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
    from transformers.pipelines import SUPPORTED_TASKS

    task = model.heads[name].export.pipeline_tag
    pipeline = f" or transformers.pipeline('{task}', ...)" if task in SUPPORTED_TASKS else ""
    return ExportResult(
        output_dir,
        type(target).__name__,
        f"head '{name}' written as {type(target).__name__}; load it with transformers alone, e.g. "
        f"{model.heads[name].export.target}.from_pretrained('{output_dir}'){pipeline}",
    )
