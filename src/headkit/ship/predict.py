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
    `run` is a run or save directory, or a hub id (`org/name[@revision]`) holding one (read from
    the hub cache, downloaded when online, as `from_pretrained` reads it); `engine` onnx/onnx-int8
    reads an ONNX export (on CUDA through onnxruntime's CUDA provider); `spin=False` keeps
    onnxruntime's idle threads off the cores (for a server: see OnnxModel)."""
    from headkit.backbone import load_processor
    from headkit.devices import pick_device, place
    from headkit.hub import local_path

    if engine not in ENGINES:
        raise HeadkitError(f"unknown engine '{engine}'; choose one of {list(ENGINES)}")
    run = local_path(run)
    where = pick_device(device)
    if engine != "torch":
        from headkit.ship.onnx_engine import OnnxModel

        return OnnxModel(run, int8=engine == "onnx-int8", device=where.type, spin=spin), load_processor(run)
    directory = resolve_model_dir(run)
    model = place(load(directory, trust_remote_code=trust_remote_code), device, dtype)
    processor = load_processor(directory / BACKBONE_DIR, trust_remote_code=trust_remote_code)
    model.set_processor(processor)  # model.predict reads with the processor the pipeline and the CLI use
    return model, processor


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
    so a caller can see which predictions saw only part of the text. `(text, text_pair)` tuples
    are encoded as training encodes a `text_pair` column (`encode_texts`).
    """
    firsts, seconds = split_pairs(texts, reads_preference_pairs(model))
    if not firsts:
        return []
    max_length = max_length or getattr(model, "max_length", None) or 512  # default: what it was trained with
    limit = max_input_tokens(model.backbone_config, tokenizer, max_length)
    # Tokenise everything once, then batch texts of similar *token* length (less padding than
    # grouping by characters) and pad each batch only to its own longest text.
    enc = encode_texts(tokenizer, firsts, seconds, limit)
    ids = enc["input_ids"]
    order = sorted(range(len(firsts)), key=lambda i: len(ids[i]))
    encodings = getattr(enc, "encodings", None) or []
    results: list[dict[str, Any]] = [{} for _ in firsts]
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
                if encoding is not None and seconds is not None:
                    encoding = FirstText(encoding)
                results[i][name] = view.for_text(decoded[row], encoding, firsts[i])
        for i in idx:
            if i < len(encodings) and encodings[i].overflowing:
                results[i]["truncated"] = True  # longer than the model reads: predicted on the start
    return results


class FirstText:
    """A pair's encoding as a view sees it: the view is handed the first text, so the second
    text's tokens have no word in it (`word_ids` None there; their offsets index the other text).
    Everything else is the encoding's own."""

    def __init__(self, encoding: Any):
        self._encoding = encoding
        self.word_ids = [w if s == 0 else None for w, s in zip(encoding.word_ids, encoding.sequence_ids, strict=True)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoding, name)


def reads_preference_pairs(model: Any) -> bool:
    """Whether the model's heads score a (prompt, response) pair as one joined text (reward heads),
    rather than reading two texts as a sentence pair."""
    return any(getattr(head.codec, "inputs", None) == "pairs" for head in model.heads.values())


def encode_texts(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> Any:
    """The tokenizer's encoding of `texts` (with `pairs`: each as `tokenizer(text, text_pair)`,
    which gives BERT-style models their segment ids, `token_type_ids`), cut at `max_length`
    tokens: the encoding a `text_pair` column gets in training, so predictions see what training saw."""
    if pairs is None:
        return tokenizer(texts, truncation=True, max_length=max_length)
    return tokenizer(texts, pairs, truncation=True, max_length=max_length)


def split_pairs(items: list[Any], join: bool) -> tuple[list[str], list[str] | None]:
    """(first texts, second texts or None) from texts or `(text, text_pair)` tuples; a DataError
    names the first item that is neither.

    `join` (a model that scores preference pairs): each pair becomes the one text its reward
    head scores (`join_pair`, as training joined prompt and response), and texts may mix with
    pairs. Otherwise a batch is all texts or all pairs: the two are encoded differently, and a
    mix is more likely a mistake than a wish."""
    firsts: list[str] = []
    seconds: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if seconds and not join:
                raise DataError(f"item {i} is one text, but the items before it are (text, text_pair) pairs: {_MIX}")
            firsts.append(item)
            continue
        if not isinstance(item, tuple | list):
            raise DataError(f"item {i} is {describe(item)}, not a text or a (text, text_pair) pair")
        if len(item) != 2 or not all(isinstance(t, str) for t in item):
            raise DataError(f"item {i} is {describe(item)}; a text pair is a tuple of two strings (text, text_pair)")
        if join:
            firsts.append(join_pair(*item))
            continue
        if len(firsts) > len(seconds):
            raise DataError(f"item {i} is a (text, text_pair) pair, but the items before it are single texts: {_MIX}")
        firsts.append(item[0])
        seconds.append(item[1])
    return firsts, seconds if seconds else None


_MIX = "predict texts and pairs in separate calls"


def describe(item: Any) -> str:
    """An input as an error message names it: its type (and length, or a short repr)."""
    if item is None:
        return "None"
    kind = type(item)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__name__}"
    if isinstance(item, tuple | list):
        return f"a {name} of {len(item)} items"
    text = repr(item)
    return f"{name} {text[:40]}{'...' if len(text) > 40 else ''}" if isinstance(item, int | float) else name


@torch.inference_mode()
def predict_images(
    model: MultiHeadModel,
    processor,
    images: list,
    batch_size: int = 64,
    progress: bool = False,
    heads: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Each image's predictions from every head (or the named ones); `images` are PIL images (the
    caller opens files).

    Box heads return [x1, y1, x2, y2] in pixels of the image as given, not of the resized input.
    """
    from headkit.data.images import preprocess

    crop = all(h.codec.crop_ok for h in model.heads.values())  # a crop would move predicted positions
    results: list[dict[str, Any]] = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=not progress or len(starts) < 2, leave=False):
        chunk = images[start : start + batch_size]
        out = model(heads=heads, pixel_values=preprocess(processor, chunk, crop=crop).to(model.device))
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
