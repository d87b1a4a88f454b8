"""Export an embedding head as a sentence-transformers model folder: `SentenceTransformer(dir)`
loads it without headkit and gives the head's vectors.

    <dir>/            the backbone (config, weights) and its tokenizer: the Transformer module
    1_Pooling/        the head's pooling (mean, cls, max or last token)
    2_Dense/          the head's projection (a Linear, no activation)
    3_Normalize/      when the head normalises its vectors

with modules.json and sentence_bert_config.json as sentence-transformers writes them (the module
names of its 2.x-3.x releases, which later ones still read, as all-MiniLM-L6-v2's folder has them).
When sentence-transformers is installed the folder is loaded and must give the head's own vectors
on probe texts before it is written; without it, the folder is written unchecked (and says so).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from headkit._fs import staged_dir
from headkit.errors import ExportError, HeadConfigError
from headkit.model import MultiHeadModel
from headkit.ship.export.common import ExportResult, check_output_dir, load_merged, next_step, steps_bar
from headkit.ship.inference import head_that_gives

PROBES = ["A short probe.", "A longer probe sentence, so that the first one is padded in the batch.", "Third one."]


def export_sentence_transformers(
    run: str | os.PathLike,
    output_dir: str | os.PathLike,
    head: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ExportResult:
    """The embedding head (or the named one) on its backbone as a sentence-transformers folder."""
    bar = steps_bar("export sentence-transformers", ["loading", "writing and checking"], progress)
    model, processor, source = load_merged(run)
    name = head_that_gives(
        model.heads, "gives_vectors", head, "embedding", "a sentence-transformers folder holds one embedding head",
        "--only_head", ExportError,
    )  # fmt: skip
    output_dir = Path(output_dir)
    check_output_dir(output_dir, source, overwrite)
    if processor is None:
        raise ExportError("the save has no tokenizer, which a sentence-transformers folder needs; save it with one")
    next_step(bar)
    with staged_dir(output_dir) as staging:
        write_folder(model, name, processor, staging)
        checked = check_vectors(model, name, staging)
    bar.close()
    note = "checked: SentenceTransformer(dir).encode gives the head's vectors" if checked else (
        "not checked: sentence-transformers is not installed here (pip install sentence-transformers)"
    )  # fmt: skip
    return ExportResult(
        output_dir,
        "SentenceTransformer",
        f"head '{name}' written as a sentence-transformers model ({note}); load it with "
        f"sentence_transformers.SentenceTransformer('{output_dir}')",
    )


def write_folder(model: MultiHeadModel, name: str, processor: Any, folder: Path) -> None:
    """The backbone, tokenizer and the head's modules (`sentence_modules`), as sentence-transformers
    lays them out."""
    from safetensors.torch import save_file

    head = model.heads[name]
    if head.config.layer != -1:
        raise ExportError(
            f"head '{name}' reads hidden layer {head.config.layer}; sentence-transformers' Transformer module "
            "gives the last layer: export --to onnx, or keep the headkit save"
        )
    try:
        modules = head.sentence_modules(model.backbone.config.hidden_size)  # type: ignore[operator]  # gives_vectors heads have it
    except HeadConfigError as e:
        raise ExportError(f"head '{name}': {e}") from e
    model.backbone.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    listed = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    for module in modules:
        listed.append({"idx": len(listed), "name": str(len(listed)), "path": module.path, "type": module.type})
        (folder / module.path).mkdir()
        if module.config is not None:
            _json(folder / module.path / "config.json", module.config)
        if module.weights is not None:
            tensors = {k: v.detach().float().contiguous().cpu() for k, v in module.weights.items()}
            save_file(tensors, folder / module.path / "model.safetensors")
    _json(folder / "modules.json", listed)
    max_length = model.max_length or getattr(processor, "model_max_length", None) or 512
    _json(folder / "sentence_bert_config.json", {"max_seq_length": int(max_length), "do_lower_case": False})
    _json(folder / "config_sentence_transformers.json", {"__version__": _versions(), "similarity_fn_name": "cosine"})


def check_vectors(model: MultiHeadModel, name: str, folder: Path) -> bool:
    """Load the folder with sentence-transformers (when installed) and compare its vectors with the
    head's on the probe texts; False when it could not be checked."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return False
    loaded = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    theirs = torch.as_tensor(loaded.encode(PROBES, convert_to_numpy=True))
    ours = torch.as_tensor(model.encode(PROBES))
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-4):
        gap = float((theirs - ours).abs().max()) if theirs.shape == ours.shape else f"shape {tuple(theirs.shape)}"
        raise ExportError(
            f"sentence-transformers computes other vectors than head '{name}' from the folder (max difference "
            f"{gap}); nothing was written: export --to onnx, or keep the headkit save"
        )
    return True


def _versions() -> dict[str, str]:
    import transformers

    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        import sentence_transformers

        versions["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        versions["sentence_transformers"] = "3.0.0"  # the folder's layout is that release's
    return versions


def _json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
