"""Predictions for a list of texts or images, batch by batch: every head's answer from one backbone
pass per batch, in input order.

`model` is anything that runs heads as a `MultiHeadModel` does: `heads` (each with `decode`,
`view` and `codec`), `device`, `backbone_config`, `max_length` (optional) and a call
`model(heads=..., **inputs)` returning a `MultiHeadOutput` (`outputs`, `mask`); the ONNX engine
(ship/onnx_engine.py) is the other one. Nothing here imports headkit.model, so the model's own
`predict` (ship/inference.py) runs through these functions; ship/predict.py re-exports them with
the loading and file-writing around them (`load_for_inference`, `predict_file`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from headkit.backbone import max_input_tokens
from headkit.backbone_outputs import is_causal
from headkit.data import MAX_TOKENS
from headkit.data.batching import check_pair_template, token_batches
from headkit.data.pairs import join_pair
from headkit.errors import DataError
from headkit.heads.qa import best_answers, qa_windows


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
    model: Any,
    tokenizer,
    texts: list[str] | list[tuple[str, str]],
    batch_size: int = 64,
    max_length: int | None = None,
    heads: list[str] | None = None,
    progress: bool = False,
    max_tokens: int | None = MAX_TOKENS,
) -> list[dict[str, Any]]:
    """Each text's predictions from every head (or the named ones), in input order; `progress`
    shows a bar over the batches.

    A forward pass reads texts of similar token length, at most `batch_size` of them and at most
    `max_tokens` padded tokens (texts x the longest one's length; None: no token limit), so long
    texts go in small batches and short ones in big ones (`token_batches`). A text's answer does
    not depend on the batch it is in.

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
    # a model with a QA head reads pairs as (question, context) windows, whichever heads are asked:
    # the heads beside it trained on those windows
    if seconds is not None and any(getattr(h.codec, "inputs", None) == "qa" for h in model.heads.values()):
        return predict_questions(model, tokenizer, firsts, seconds, limit, batch_size, heads, progress, max_tokens)
    # Tokenise everything once, then batch texts of similar *token* length (less padding than
    # grouping by characters) and pad each batch only to its own longest text.
    enc = encode_texts(tokenizer, firsts, seconds, limit)
    batches = token_batches([len(ids) for ids in enc["input_ids"]], max_tokens, batch_size)
    encodings = getattr(enc, "encodings", None) or []
    results: list[dict[str, Any]] = [{} for _ in firsts]
    for idx in tqdm(batches, desc="predict", unit="batch", disable=not progress or len(batches) < 2, leave=False):
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


@torch.inference_mode()
def predict_questions(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    contexts: list[str],
    max_length: int,
    batch_size: int,
    heads: list[str] | None,
    progress: bool,
    max_tokens: int | None,
    best_spans: bool = False,
) -> list[dict[str, Any]]:
    """`predict_texts` for a model with a question-answering head: each (question, context) pair's
    context is cut into overlapping windows (as training cut it), every window goes through the
    backbone once, a QA head answers from all of a pair's windows ({"answer", "score", "start",
    "end"} in the context's characters; "" when the text holds no answer) and the other heads
    answer from its first window. (Single texts take `predict_texts`' own path: a span head then
    gives token positions in the text.) `best_spans`: a QA head gives its best span whatever the
    null score, with `null_score_diff` (null score minus that span's), to tune a threshold on."""
    causal = is_causal(model.backbone_config)
    if not causal:
        check_pair_template(tokenizer, "question-answering pairs")
    names = list(heads or model.heads)
    readers = [n for n in names if model.heads[n].codec.inputs == "qa"]
    # one model's span heads share their windows' overlap (MultiHeadModel.add_head)
    stride = next(h.config.doc_stride for h in model.heads.values() if h.codec.inputs == "qa")
    windows = qa_windows(tokenizer, questions, contexts, max_length, stride, causal)
    enc = {"input_ids": windows.input_ids}
    if windows.token_type_ids is not None:
        enc["token_type_ids"] = windows.token_type_ids
    first_window: dict[int, int] = {}
    for w, e in enumerate(windows.example):
        first_window.setdefault(e, w)
    logits: dict[str, list[Any]] = {n: [None] * len(windows.example) for n in readers}
    results: list[dict[str, Any]] = [{} for _ in questions]
    batches = token_batches([len(ids) for ids in windows.input_ids], max_tokens, batch_size)
    for idx in tqdm(batches, desc="predict", unit="batch", disable=not progress or len(batches) < 2, leave=False):
        out = model(heads=heads, **_padded(enc, idx, tokenizer, model.device))
        for name, output in out.outputs.items():
            head = model.heads[name]
            if name in logits:
                for w, row in zip(idx, head.window_logits(output, out.mask), strict=True):
                    logits[name][w] = row.cpu()
                continue
            decoded = head.decode(output, out.mask)
            for row, w in enumerate(idx):
                e = windows.example[w]
                if first_window[e] == w:
                    results[e][name] = head.view.for_text(decoded[row], None, questions[e])
    for name in readers:
        config = model.heads[name].config
        answers = best_answers(
            logits[name],
            windows,
            contexts,
            max_answer_tokens=config.max_answer_tokens,
            null_threshold=math.inf if best_spans else config.null_threshold,
        )
        for result, answer in zip(results, answers, strict=True):
            if not best_spans:
                answer.pop("null_score_diff")
            result[name] = answer
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
    return any(
        getattr(head.codec, "inputs", None) == "pairs" and getattr(head.codec, "joins", False)
        for head in model.heads.values()
    )


def encode_texts(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> Any:
    """The tokenizer's encoding of `texts` (with `pairs`: each as `tokenizer(text, text_pair)`,
    which gives BERT-style models their segment ids, `token_type_ids`), cut at `max_length`
    tokens: the encoding a `text_pair` column gets in training, so predictions see what training saw."""
    if pairs is None:
        return tokenizer(texts, truncation=True, max_length=max_length)
    check_pair_template(tokenizer, "text pairs")
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
    model: Any,
    processor,
    images: Sequence,
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
