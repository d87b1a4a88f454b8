"""Batch prediction: texts in, every head's prediction out, from one backbone pass per batch."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from headkit._fs import atomic_write_bytes
from headkit.backbone import max_input_tokens
from headkit.data.files import column_values
from headkit.data.images import is_image_processor
from headkit.data.pairs import join_pair
from headkit.data.readers import read_rows
from headkit.errors import DataError, HeadkitError
from headkit.model import MultiHeadModel, load
from headkit.ship.onnx_engine import OnnxModel
from headkit.ship.save import BACKBONE_DIR, MANIFEST, find_save


def resolve_model_dir(run: str | os.PathLike) -> Path:
    """A run directory (holding model/) or a saved model directory (holding heads.json)."""
    found = find_save(run)
    if found is None:
        raise HeadkitError(f"{run} is neither a training run (with model/) nor a saved model (with {MANIFEST})")
    return found


ENGINES = ("torch", "onnx", "onnx-int8")


def load_for_inference(
    run: str | os.PathLike,
    trust_remote_code: bool = False,
    engine: str = "torch",
    device: str = "cpu",
    dtype: str = "auto",
    spin: bool = True,
):
    """The saved model (eval mode, on `device` in `dtype`: see headkit.devices) and its tokenizer;
    `engine` onnx/onnx-int8 reads an ONNX export (on CUDA through onnxruntime's CUDA provider);
    `spin=False` keeps onnxruntime's idle threads off the cores (for a server: see OnnxModel)."""
    from headkit.backbone import load_processor
    from headkit.devices import pick_device, place

    if engine not in ENGINES:
        raise HeadkitError(f"unknown engine '{engine}'; choose one of {list(ENGINES)}")
    where = pick_device(device)
    if engine != "torch":
        from headkit.ship.onnx_engine import OnnxModel

        return OnnxModel(run, int8=engine == "onnx-int8", device=where.type, spin=spin), load_processor(run)
    directory = resolve_model_dir(run)
    model = place(load(directory, trust_remote_code=trust_remote_code), device, dtype)
    return model, load_processor(directory / BACKBONE_DIR, trust_remote_code=trust_remote_code)


def _padded(enc, idx: list[int], tokenizer, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors for examples `idx` of a whole-list encoding, padded on the tokenizer's side."""
    lengths = [len(enc["input_ids"][i]) for i in idx]
    length = max(lengths)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    spans = [slice(length - n, length) if left else slice(0, n) for n in lengths]
    mask = torch.zeros(len(idx), length, dtype=torch.long)
    for row, span in enumerate(spans):
        mask[row, span] = 1
    batch = {}
    for key in ("input_ids", "token_type_ids"):
        if key not in enc:
            continue
        pad = (tokenizer.pad_token_id or 0) if key == "input_ids" else 0
        tensor = torch.full((len(idx), length), pad, dtype=torch.long)
        for row, (i, span) in enumerate(zip(idx, spans, strict=True)):
            tensor[row, span] = torch.tensor(enc[key][i])
        batch[key] = tensor.to(device)
    batch["attention_mask"] = mask.to(device)
    return batch


@torch.inference_mode()
def predict_texts(
    model: MultiHeadModel | OnnxModel,
    tokenizer,
    texts: list[str] | list[tuple[str, str]],
    batch_size: int = 64,
    max_length: int | None = None,
    heads: list[str] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Each text's predictions from every head (or the named ones), in input order; `progress`
    shows a bar over the batches.

    Texts longer than the model reads are predicted on their first tokens (the last ones where
    the tokenizer truncates on the left, as a reward model's does) and marked `"truncated": true`,
    so a caller can see which predictions saw only part of the text. A (prompt, response) pair
    is read as the one text a reward head scores (`join_pair`).
    """
    texts = [join_pair(*t) if _is_pair(t) else t for t in texts]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"item {bad} is {type(texts[bad]).__name__}, not text")
    if not texts:
        return []
    max_length = max_length or getattr(model, "max_length", None) or 512  # default: what it was trained with
    limit = max_input_tokens(model.backbone_config, tokenizer, max_length)
    # Tokenise everything once, then batch texts of similar *token* length (less padding than
    # grouping by characters) and pad each batch only to its own longest text.
    enc = tokenizer(texts, truncation=True, max_length=limit)
    ids = enc["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    encodings = getattr(enc, "encodings", None) or []
    results: list[dict[str, Any]] = [{} for _ in texts]
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=not progress or len(starts) < 2, leave=False):
        idx = order[start : start + batch_size]
        inputs = _padded(enc, idx, tokenizer, model.device)
        out = model(heads=heads, **inputs)
        for name, output in out.outputs.items():
            head = model.heads[name]
            decoded, view = head.decode(output, out.mask), head.view
            for row, i in enumerate(idx):
                encoding = encodings[i] if i < len(encodings) else None
                results[i][name] = view.for_text(decoded[row], encoding, texts[i])
        for i in idx:
            if i < len(encodings) and encodings[i].overflowing:
                results[i]["truncated"] = True  # longer than the model reads: predicted on the start
    return results


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple | list) and len(item) == 2 and all(isinstance(t, str) for t in item)


@torch.inference_mode()
def predict_images(
    model: MultiHeadModel, processor, images: list, batch_size: int = 64, progress: bool = False
) -> list[dict[str, Any]]:
    """Each image's predictions from every head; `images` are PIL images (the caller opens files).

    Box heads return [x1, y1, x2, y2] in pixels of the image as given, not of the resized input.
    """
    from headkit.data.images import preprocess

    crop = all(h.codec.crop_ok for h in model.heads.values())  # a crop would move predicted positions
    results: list[dict[str, Any]] = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=not progress or len(starts) < 2, leave=False):
        chunk = images[start : start + batch_size]
        out = model(pixel_values=preprocess(processor, chunk, crop=crop).to(model.device))
        decoded = {name: model.heads[name].decode(o, out.mask) for name, o in out.outputs.items()}
        for row, image in enumerate(chunk):
            results.append({name: model.heads[name].view.for_image(v[row], *image.size) for name, v in decoded.items()})
    return results


def predict_file(
    model: MultiHeadModel,
    tokenizer,
    input_path: str,
    text_column: str,
    output_path: str,
    batch_size: int = 64,
    progress: bool = False,
    max_length: int | None = None,
) -> tuple[int, int]:
    """Read texts from a file, write one JSON object (or CSV row) per input with each head's output.

    Returns (texts predicted, texts truncated to the model's limit)."""
    rows = read_rows(input_path)
    if is_image_processor(tokenizer):  # the column names image files, relative to the input file
        from headkit.data.images import load_images

        images, _ = load_images(rows, text_column, input_path)
        predictions = predict_images(model, tokenizer, images, batch_size=batch_size, progress=progress)
        names = column_values(rows, text_column, input_path)
        lines = [json.dumps({"image": n, **p}) for n, p in zip(names, predictions, strict=True)]
        atomic_write_bytes(Path(output_path), ("\n".join(lines) + "\n").encode("utf-8"))
        return len(images), 0
    texts = column_values(rows, text_column, input_path)
    missing = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if missing is not None:
        raise DataError(f"row {missing + 1} of {input_path}: '{text_column}' is empty or not text")
    predictions = predict_texts(
        model, tokenizer, texts, batch_size=batch_size, max_length=max_length, progress=progress
    )
    truncated = sum(1 for p in predictions if p.get("truncated"))
    out = Path(output_path)
    if out.suffix.lower() == ".csv":
        atomic_write_bytes(out, _csv_bytes(texts, predictions, model))
    else:
        lines = [json.dumps({"text": t, **p}, ensure_ascii=False) for t, p in zip(texts, predictions, strict=True)]
        atomic_write_bytes(out, ("\n".join(lines) + "\n").encode("utf-8"))
    return len(texts), truncated


def _csv_bytes(texts: list[str], predictions: list[dict[str, Any]], model) -> bytes:
    """Flat CSV: each head's own columns (classification: its label and a column per class
    probability), JSON for anything nested."""
    import io as stdio

    flat_rows = []
    for text, pred in zip(texts, predictions, strict=True):
        row: dict[str, Any] = {"text": text}
        for head, value in pred.items():
            if head in model.heads:
                cells = model.heads[head].view.table_cells(value)
                row.update({f"{head}{suffix}": cell for suffix, cell in cells.items()})
            else:  # e.g. "truncated"
                row[head] = json.dumps(value, ensure_ascii=False)
        flat_rows.append(row)
    buffer = stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in flat_rows for k in r)))
    writer.writeheader()
    writer.writerows(flat_rows)
    return buffer.getvalue().encode("utf-8")
