"""Extractive QA over contexts longer than the model reads: windows in, answers in characters out.

This follows transformers' `run_qa` example (its `prepare_train_features`,
`prepare_validation_features` and `utils_qa.postprocess_qa_predictions`), so a span head trains and
answers on the windows a transformers QA model would:

- A (question, context) pair is tokenised with the context cut into windows of `max_length` tokens
  that overlap by `doc_stride` tokens (`truncation="only_second"`, `return_overflowing_tokens`); the
  question is repeated in every window. A tokenizer that pads on the left puts the context first, as
  run_qa does.
- A decoder (`causal`) reads left to right, so its windows always put the question first (a context
  token can then see the question), mark the border with the end token (decoder tokenizers have no
  pair template) and close with the end token, where the null answer is read: it is the one token
  that has read the whole window. (A decoder's first token has read nothing.)
- A window is labelled with the first and last token of the answer when the whole answer lies in
  its part of the context, and with its null position (its first token: [CLS] on BERT-style
  tokenizers; the span head's decode reads the null answer there too) when
  it does not: every window of an unanswerable question, and the windows of an answerable one
  that miss the answer, learn "no answer here".
- Answering takes the `n_best` start and end positions of every window of a question, keeps the
  valid spans (inside the context, start <= end, at most `max_answer_tokens`), scores each by its
  start + end logit, and picks the best across windows. The null answer's score is the lowest null
  score over the windows; when it beats the best span by more than `null_threshold` the answer is
  empty ("no answer in this text").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from headkit.errors import DataError
from headkit.heads.labels import IGNORE_INDEX
from headkit.heads.squad import check_answer

DOC_STRIDE = 128  # run_qa's default overlap between a context's windows
N_BEST = 20  # run_qa's n_best_size
CLOSING = 2  # the tokens a decoder's window adds: an end token after the question and one after the context


@dataclass
class QAWindows:
    """The windows of a list of (question, context) pairs, one entry per window."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    example: list[int]  # the index of the pair each window comes from
    offsets: list[list[tuple[int, int] | None]]  # per token: its characters in the context, None outside it
    null: list[int]  # each window's null answer position: its first token ([CLS]), a decoder's last


@dataclass(eq=False)  # compared by identity: the windows of one row hold the same record
class Question:
    """A (question, context) row as its windows were cut from it, with each QA head's answers as
    given (None: no label): what tuning a null threshold and scoring per question read, since a
    window's token labels keep neither every reference answer nor an answer no window holds whole."""

    question: str
    context: str
    answers: dict[str, dict[str, list[Any]] | None] = field(default_factory=dict)


def distinct_questions(records: list[Question | None], head: str | None = None) -> list[Question]:
    """The questions a run of windows is cut from, once each and in order (a question's windows are
    consecutive and share its record; a question asked twice is two records); with `head`, those
    that head has a label for."""
    questions: list[Question] = []
    for record in records:
        if record is None or (head is not None and record.answers.get(head) is None):
            continue
        if not questions or questions[-1] is not record:
            questions.append(record)
    return questions


def context_first(tokenizer: Any) -> bool:
    """Whether the context goes first: run_qa puts it first for tokenizers that pad on the left."""
    return getattr(tokenizer, "padding_side", "right") == "left"


def qa_windows(
    tokenizer: Any,
    questions: list[str],
    contexts: list[str],
    max_length: int,
    doc_stride: int = DOC_STRIDE,
    causal: bool = False,
) -> QAWindows:
    """The windows of every (question, context) pair, with each token's characters in the context.

    A pair's windows depend on that pair alone: its overlap is `doc_stride` tokens, as in run_qa,
    unless that is not less than the room its question leaves in `max_length` (where run_qa's
    tokenizer call fails): then half that room. `causal`: a decoder's windows (module docstring)."""
    if causal and tokenizer.eos_token_id is None:
        raise DataError(
            f"{type(tokenizer).__name__} has no end-of-text token, which a decoder's question-answering windows "
            "close with (and read the null answer on): set tokenizer.eos_token"
        )
    specials = tokenizer.num_special_tokens_to_add(pair=True) + (CLOSING if causal else 0)
    strides: dict[int, list[int]] = {}  # overlap -> the pairs tokenised with it
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]] if questions else []
    for i, (question, length) in enumerate(zip(questions, lengths, strict=True)):
        room = max_length - specials - length
        if room < 2:
            raise DataError(
                f"question {i + 1} ({question[:60]!r}) leaves no room for its context in windows of {max_length} "
                "tokens; raise max_length or shorten the question"
            )
        strides.setdefault(doc_stride if doc_stride < room else room // 2, []).append(i)
    parts = [
        _tokenize_windows(tokenizer, questions, contexts, max_length, s, idx, causal) for s, idx in strides.items()
    ]
    windows = QAWindows([], [] if all(p.token_type_ids is not None for p in parts) else None, [], [], [])
    order = sorted(((e, k, w) for k, part in enumerate(parts) for w, e in enumerate(part.example)))
    for e, k, w in order:  # every window in pair order, each pair's in their own order
        part = parts[k]
        windows.input_ids.append(part.input_ids[w])
        if windows.token_type_ids is not None and part.token_type_ids is not None:
            windows.token_type_ids.append(part.token_type_ids[w])
        windows.example.append(e)
        windows.offsets.append(part.offsets[w])
        windows.null.append(part.null[w])
    return windows


def _tokenize_windows(
    tokenizer: Any,
    questions: list[str],
    contexts: list[str],
    max_length: int,
    stride: int,
    idx: list[int],
    causal: bool,
) -> QAWindows:
    """The windows of the pairs `idx`, all with overlap `stride` (`example`: indices into the full lists)."""
    first = context_first(tokenizer) and not causal
    qs, cs = [questions[i] for i in idx], [contexts[i] for i in idx]
    try:
        enc = tokenizer(
            *((cs, qs) if first else (qs, cs)),
            truncation="only_first" if first else "only_second",
            max_length=max_length - (CLOSING if causal else 0),
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
    except (ValueError, TypeError) as e:
        raise DataError(f"the tokenizer cannot cut these (question, context) pairs into windows ({e})") from e
    context_id = 0 if first else 1
    examples = [idx[j] for j in enc["overflow_to_sample_mapping"]]
    windows = QAWindows(enc["input_ids"], None if causal else enc.get("token_type_ids"), examples, [], [])
    for w in range(len(enc["input_ids"])):
        sequence = enc.sequence_ids(w)
        spans = enc["offset_mapping"][w]
        offsets = [tuple(o) if s == context_id else None for o, s in zip(spans, sequence, strict=True)]
        if causal:  # question, end token, context, end token: the null answer on the last
            border = sequence.index(context_id)
            eos = tokenizer.eos_token_id
            ids = enc["input_ids"][w]
            windows.input_ids[w] = [*ids[:border], eos, *ids[border:], eos]
            offsets = [*offsets[:border], None, *offsets[border:], None]
        windows.offsets.append(offsets)
        windows.null.append(len(offsets) - 1 if causal else 0)  # where decode looks for it
    return windows


def window_labels(windows: QAWindows, answers: list[dict[str, list[Any]] | None]) -> np.ndarray:
    """(windows, 2) start and end tokens of each window's answer (`answers`: one SQuAD answers
    dict per pair, empty lists for no answer, None for no label; the first answer is the one
    trained on, as in run_qa)."""
    labels = [_window_label(windows, w, answers[e]) for w, e in enumerate(windows.example)]
    return np.array(labels, dtype=np.int64).reshape(-1, 2)


def check_answers(answers: list[dict[str, list[Any]] | None], contexts: list[str], ids: list[Any], source: str) -> None:
    """Refuse an answer its context does not hold at its `answer_start` (`squad.check_answer`),
    naming the question (its id, else its row)."""
    for i, (answer, context) in enumerate(zip(answers, contexts, strict=True)):
        name = f"question {ids[i]!r}" if ids[i] is not None else f"row {i + 1}"
        for text, start in zip(*(answer or {"text": [], "answer_start": []}).values(), strict=True):
            check_answer(text, start, context, name, source)


def _window_label(windows: QAWindows, w: int, answer: dict[str, list[Any]] | None) -> tuple[int, int]:
    """[start, end] tokens of the answer in window `w`, its null position when the window does not
    hold the whole answer, IGNORE_INDEX for a pair without a label."""
    if answer is None:
        return IGNORE_INDEX, IGNORE_INDEX
    null = windows.null[w]
    if not answer["text"]:
        return null, null
    start_char = int(answer["answer_start"][0])
    end_char = start_char + len(answer["text"][0])
    inside = [i for i, o in enumerate(windows.offsets[w]) if o is not None]
    first, last = inside[0], inside[-1]
    offsets = windows.offsets[w]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:  # type: ignore[index]
        return null, null
    start = next(i for i in inside if offsets[i][1] > start_char)  # type: ignore[index]
    end = next(i for i in reversed(inside) if offsets[i][0] < end_char)  # type: ignore[index]
    return start, end


def best_answers(
    logits: list[Tensor],
    windows: QAWindows,
    contexts: list[str],
    n_best: int = N_BEST,
    max_answer_tokens: int = 30,
    null_threshold: float | None = 0.0,
) -> list[dict[str, Any]]:
    """Each pair's answer from its windows' start/end logits (`logits[w]`: (tokens, 2) for window w,
    without padding): {"answer", "score", "start", "end", "null_score_diff"}, characters of the
    context (an empty answer has start = end = 0). `score` is the answer's probability among the
    candidates kept (softmax over their summed logits, as run_qa); `null_score_diff` is the null
    score minus the best span's, which a tuned threshold compares against; `null_threshold` None
    never answers empty (SQuAD 1.1)."""
    by_example: dict[int, list[int]] = {}
    for w, e in enumerate(windows.example):
        by_example.setdefault(e, []).append(w)
    results = []
    for e, context in enumerate(contexts):
        spans: list[tuple[float, int, int]] = []
        null_score = float("inf")
        for w in by_example.get(e, []):
            start_logits, end_logits = logits[w][:, 0].float(), logits[w][:, 1].float()
            null = windows.null[w]
            null_score = min(null_score, float(start_logits[null] + end_logits[null]))
            spans += _window_spans(start_logits, end_logits, windows.offsets[w], n_best, max_answer_tokens)
        results.append(_choose(spans, null_score, context, n_best, null_threshold))
    return results


def _window_spans(
    start_logits: Tensor, end_logits: Tensor, offsets: list[tuple[int, int] | None], n_best: int, max_tokens: int
) -> list[tuple[float, int, int]]:
    """(score, first char, end char) of a window's valid spans among its n-best starts and ends."""
    k = min(n_best, len(offsets))
    starts, ends = start_logits.topk(k).indices, end_logits.topk(k).indices
    # every pair's score in one tensor op (float32 sums, as run_qa's numpy), read as Python floats
    # once: indexing tensors per pair cost 11x this when most pairs are valid spans (top starts and
    # ends close together; benchmarks/qa_answers.py)
    scores = (start_logits[starts, None] + end_logits[None, ends]).tolist()
    spans = []
    end_ids = ends.tolist()
    for i, s in enumerate(starts.tolist()):
        for j, e in enumerate(end_ids):
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_tokens:
                continue
            spans.append((scores[i][j], offsets[s][0], offsets[e][1]))
    return spans


def _choose(
    spans: list[tuple[float, int, int]], null_score: float, context: str, n_best: int, threshold: float | None
) -> dict[str, Any]:
    """The answer among a question's spans and its null score (see `best_answers`)."""
    top = sorted(spans, key=lambda span: -span[0])[:n_best]
    scores = torch.tensor([s for s, _, _ in top] + ([null_score] if threshold is not None else []))
    probs = scores.softmax(0).tolist() if len(scores) else []
    if not top:
        return {
            "answer": "",
            "score": probs[-1] if probs else 1.0,
            "start": 0,
            "end": 0,
            "null_score_diff": float("inf"),
        }
    best, start, end = top[0]
    diff = null_score - best if threshold is not None else float("-inf")
    if threshold is not None and diff > threshold:
        return {"answer": "", "score": probs[-1], "start": 0, "end": 0, "null_score_diff": diff}
    return {"answer": context[start:end], "score": probs[0], "start": start, "end": end, "null_score_diff": diff}
