"""Batch prediction: texts in, every head's prediction out, from one backbone pass per batch.

Loading a saved model for it (`load_for_inference`: torch or ONNX) and predicting a file
(`predict_file`) live here; the batching itself (`predict_texts`, `predict_images`) lives in
ship/predict_batches.py, which imports nothing of headkit.model (the model's own `predict`
runs through it), and is re-exported here.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from headkit._fs import atomic_write_bytes
from headkit.data import MAX_TOKENS
from headkit.data.batching import text_values
from headkit.data.files import column_values
from headkit.data.images import is_image_processor
from headkit.data.readers import read_rows
from headkit.errors import DataError, HeadkitError
from headkit.model import MultiHeadModel
from headkit.ship.engines import ENGINES, load_torch_model, onnx_dir, resolve_engine
from headkit.ship.predict_batches import describe, predict_images, predict_texts
from headkit.ship.save import MANIFEST, find_save

logger = logging.getLogger(__name__)

__all__ = [  # predict_texts, predict_images and describe are re-exported from ship/predict_batches.py
    "ENGINES",
    "describe",
    "load_for_inference",
    "predict_file",
    "predict_images",
    "predict_texts",
    "resolve_model_dir",
]


def resolve_model_dir(run: str | os.PathLike) -> Path:
    """A run directory (holding model/) or a saved model directory (holding heads.json)."""
    found = find_save(run)
    if found is None:
        raise HeadkitError(f"{run} is neither a training run (with model/) nor a saved model (with {MANIFEST})")
    return found


def load_for_inference(
    run: str | os.PathLike,
    trust_remote_code: bool = False,
    engine: str = "auto",
    device: str = "cpu",
    dtype: str = "auto",
    spin: bool = True,
):
    """The saved model (eval mode, on `device` in `dtype`: see headkit.devices) and its tokenizer;
    `run` is a run or save directory, or a hub id (`org/name[@revision]`) holding one (read from
    the hub cache, downloaded when online, as `from_pretrained` reads it); `engine` auto picks the
    fastest engine validated for this model on this machine (ship/engines.py), torch-bf16 is torch in
    bf16, onnx/onnx-int8 read an ONNX export (on CUDA through onnxruntime's CUDA provider);
    `spin=False` keeps onnxruntime's idle threads off the cores (for a server: see OnnxModel)."""
    from headkit.backbone import load_processor
    from headkit.devices import pick_device
    from headkit.hub import local_path

    if engine not in ENGINES:
        raise HeadkitError(f"unknown engine '{engine}'; choose one of {list(ENGINES)}")
    run = local_path(run)
    where = pick_device(device)
    engine, dtype = resolve_engine(run, engine, device, dtype, trust_remote_code)  # auto, torch-bf16: what loads
    if engine != "torch":
        from headkit.ship.onnx_engine import OnnxModel

        export = onnx_dir(run)
        return OnnxModel(export, int8=engine == "onnx-int8", device=where.type, spin=spin), load_processor(export)
    return load_torch_model(resolve_model_dir(run), dtype, device, trust_remote_code)


def predict_file(
    model: MultiHeadModel,
    tokenizer,
    input_path: str,
    text_column: str,
    output_path: str,
    batch_size: int = 64,
    progress: bool = False,
    max_length: int | None = None,
    max_tokens: int | None = MAX_TOKENS,
    text_pair: str | None = None,
) -> tuple[int, int]:
    """Read texts from a file, write one JSON object (or CSV row) per input with each head's output.
    `batch_size` and `max_tokens` bound each forward pass (`predict_texts`). `text_pair`: the
    column of each row's second text (default: the one the model's heads trained on, where the
    file has it; a question-answering model reads `question` and `context` as training does).

    Returns (texts predicted, texts truncated to the model's limit)."""
    rows = read_rows(input_path)
    if is_image_processor(tokenizer):  # the column names image files, relative to the input file
        from headkit.data.images import load_images

        images, _ = load_images(rows, text_column, input_path)
        predictions = predict_images(model, tokenizer, images, batch_size=batch_size, progress=progress)
        names = column_values(rows, text_column, input_path)
        records = [{"image": n, **p} for n, p in zip(names, predictions, strict=True)]
        atomic_write_bytes(Path(output_path), _jsonl_bytes(records, ensure_ascii=True))
        return len(images), 0
    if any(getattr(h.codec, "inputs", None) == "choices" for h in model.heads.values()):
        return _predict_choices(model, tokenizer, rows, input_path, text_column, text_pair, output_path,
                                (batch_size, progress, max_length, max_tokens))  # fmt: skip
    text_column, text_pair = _text_columns(model, rows, text_column, text_pair)
    texts = column_values(rows, text_column, input_path)
    missing = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if missing is not None:
        raise DataError(f"row {missing + 1} of {input_path}: '{text_column}' is empty or not text")
    if text_pair is not None:
        seconds = column_values(rows, text_pair, input_path)
        bad = next((i for i, t in enumerate(seconds) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"row {bad + 1} of {input_path}: '{text_pair}' is empty or not text")
        texts = list(zip(texts, seconds, strict=True))
    predictions = predict_texts(
        model, tokenizer, texts, batch_size=batch_size, max_length=max_length, progress=progress, max_tokens=max_tokens
    )
    truncated = sum(1 for p in predictions if p.get("truncated"))
    out = Path(output_path)
    if out.suffix.lower() == ".csv":
        atomic_write_bytes(out, _csv_bytes(texts, predictions, model))
    else:
        atomic_write_bytes(out, _jsonl_bytes([{**_shown(t), **p} for t, p in zip(texts, predictions, strict=True)]))
    return len(texts), truncated


def _predict_choices(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], input_path: str, text_column: str, choices: str | None,
    output_path: str, settings: tuple[int, bool, int | None, int | None],
) -> tuple[int, int]:  # fmt: skip
    """A multiple-choice model's file: each row's context and its choices (the columns given, else
    those its heads trained on, else `choices`), one line per row with the head's choice and every
    choice's probability and score."""
    from headkit.heads.codecs.choice import choice_lists
    from headkit.ship.inference import head_that_gives, score_choices

    head = head_that_gives(model.heads, "gives_scores", None, "scoring", "ranking needs the head that scores pairs")
    trained = [c.get("text_pair") for c in (getattr(model, "columns", None) or {}).values()]
    texts = text_values(rows, text_column, input_path)
    lists = choice_lists(rows, choices or next((p for p in trained if p), None), input_path, same_count=False)
    batch_size, progress, max_length, max_tokens = settings
    scored = score_choices(model, tokenizer, list(zip(texts, lists, strict=True)), head, batch_size, progress,
                           max_length, max_tokens)  # fmt: skip
    lines: list[dict[str, Any]] = [
        {
            "text": text,
            "choices": options,
            head: result.choice(),
            **({"truncated": True} if any(result.truncated) else {}),
        }
        for text, options, result in zip(texts, lists, scored, strict=True)
    ]
    out = Path(output_path)
    if out.suffix.lower() == ".csv":  # the head's answer in columns of its own: HEAD (the choice), HEAD.text ...
        flat = [
            {key: _cell(value) for key, value in line.items() if key != head}
            | {f"{head}{'' if key == 'choice' else '.' + key}": _cell(value) for key, value in line[head].items()}
            for line in lines
        ]
        atomic_write_bytes(out, _csv_table(flat))
    else:
        atomic_write_bytes(out, _jsonl_bytes(lines))
    return len(lines), sum(1 for line in lines if line.get("truncated"))


def _text_columns(model: Any, rows: list[dict[str, Any]], text: str, pair: str | None) -> tuple[str, str | None]:
    """The text and second-text columns a file is read with: as given, else the ones the model's
    heads trained on where the file has them (a text column the file lacks, such as the default
    `text`, is the one every head trained on, when they agree; a question-answering head: the
    question and context columns training reads)."""
    trained = list((getattr(model, "columns", None) or {}).values())
    texts = {c["text"] for c in trained if c.get("text")}
    if rows and text not in rows[0] and len(texts) == 1 and next(iter(texts)) in rows[0]:
        logger.info(f"the file has no column '{text}': reading '{next(iter(texts))}', the one the model trained on")
        text = next(iter(texts))
    if pair is None:
        pair = next(
            (c["text_pair"] for c in trained if c.get("text_pair") and rows and c["text_pair"] in rows[0]), None
        )
    if any(getattr(h.codec, "inputs", None) == "qa" for h in model.heads.values()):
        from headkit.data.encode import qa_columns

        text, context = qa_columns(rows, text, pair)
        return text, context if rows and context in rows[0] else pair
    return text, pair


def _shown(text: str | tuple[str, str]) -> dict[str, str]:
    """An input as its output line shows it: {"text"}, or {"text", "text_pair"} for a pair."""
    return {"text": text[0], "text_pair": text[1]} if isinstance(text, tuple) else {"text": text}


def _csv_bytes(texts: list[Any], predictions: list[dict[str, Any]], model) -> bytes:
    """Flat CSV: each head's own columns (classification: its label and a column per class
    probability), JSON for anything nested."""
    flat_rows = []
    for text, pred in zip(texts, predictions, strict=True):
        row: dict[str, Any] = _shown(text)
        for head, value in pred.items():
            if head in model.heads:
                cells = model.heads[head].view.table_cells(value)
                row.update({f"{head}{suffix}": cell for suffix, cell in cells.items()})
            else:  # e.g. "truncated"
                row[head] = json.dumps(value, ensure_ascii=False)
        flat_rows.append(row)
    return _csv_table(flat_rows)


def _jsonl_bytes(records: list[dict[str, Any]], ensure_ascii: bool = False) -> bytes:
    """One JSON object per line, a newline after the last."""
    return ("\n".join(json.dumps(r, ensure_ascii=ensure_ascii) for r in records) + "\n").encode("utf-8")


def _cell(value: Any) -> Any:
    """A CSV cell: text and whole numbers as they are, anything else as JSON."""
    return value if isinstance(value, str | int) else json.dumps(value, ensure_ascii=False)


def _csv_table(rows: list[dict[str, Any]]) -> bytes:
    """Rows as CSV, every key any row has a column."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
