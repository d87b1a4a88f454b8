"""SQuAD 2.0 for the extractive-QA `span` head: reading the data, the official scores, the null threshold.

Pure Python (no torch), so that data can be checked and predictions scored without loading a model.

Rows use the column layout of the Hugging Face `squad_v2` dataset, one per question:
`{"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}`, with empty
lists for an unanswerable question. The scores reproduce the official `evaluate-v2.0.py` exactly,
except that they are fractions in [0, 1] rather than percentages, and that a missing prediction is an
error rather than a printed line (the official script would then score fewer questions than asked).
"""

from __future__ import annotations

import collections
import json
import math
import numbers
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from headkit.errors import DataError

SQUAD_LAYOUT = (
    '{"version", "data": [{"title", "paragraphs": [{"context", "qas": '
    '[{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}'
)
ROW_LAYOUT = '{"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}'
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def _show(text: str, limit: int = 60) -> str:
    """A piece of data quoted on one line (repr escapes newlines), cut short so the message stays one line."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# --- reading -----------------------------------------------------------------------------------------


def read_squad(path_or_dict: str | Path | Mapping[str, Any], source: str | None = None) -> list[dict[str, Any]]:
    """The questions of a file (or loaded dict) in SQuAD's own JSON layout, as rows in `squad_v2` columns.

    Flattened so that SQuAD files train and score like any other table of rows; every answer is
    checked against its context here, because a wrong `answer_start` silently trains on the wrong span.
    `plausible_answers` (the distractors of unanswerable questions) are dropped: they are not answers.
    """
    if isinstance(path_or_dict, Mapping):  # `source`: the file it was loaded from, for errors
        source, document = source or "the given SQuAD dict", path_or_dict
    else:
        source = str(path_or_dict)
        try:
            with open(path_or_dict, encoding="utf-8") as f:
                document = json.load(f)
        except FileNotFoundError:
            raise DataError(f"SQuAD file {source} not found") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{source} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{source} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None

    def malformed(where: str, found: str) -> DataError:
        return DataError(f"{source} is not in the SQuAD layout: {where} {found}; expected {SQUAD_LAYOUT}")

    if not isinstance(document, Mapping) or not isinstance(document.get("data"), list):
        found = (
            f"has keys {sorted(document)} with no 'data' list"
            if isinstance(document, Mapping)
            else f"is a JSON {type(document).__name__}"
        )
        raise malformed("the top level", found)
    rows: list[dict[str, Any]] = []
    for a, article in enumerate(document["data"]):
        if not isinstance(article, Mapping) or not isinstance(article.get("paragraphs"), list):
            raise malformed(f"article {a}", "has no 'paragraphs' list")
        title = article.get("title", "")
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"article {a} ({title!r}) paragraph {p}"
            if not isinstance(paragraph, Mapping) or not isinstance(paragraph.get("qas"), list):
                raise malformed(where, "has no 'qas' list")
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, Mapping):
                    raise malformed(f"{where} question {q}", f"is a JSON {type(qa).__name__}, not an object")
                qid = qa.get("id")
                if not isinstance(qid, str) or not qid.strip():
                    raise DataError(f"{where} question {q} in {source} has no 'id' (got {qid!r}); each needs one")
                name = f"question {qid!r}"
                answers = qa.get("answers", [] if qa.get("is_impossible") is True else None)
                if not isinstance(answers, list) or not all(isinstance(x, Mapping) for x in answers):
                    raise malformed(name, "has no 'answers' list of {'text', 'answer_start'} objects")
                if answers and qa.get("is_impossible") is True:
                    raise DataError(
                        f"{name} in {source} is marked is_impossible but has {len(answers)} answers; "
                        "an unanswerable question's answers go in 'plausible_answers'"
                    )
                rows.append(
                    {
                        "id": qid,
                        "title": title,
                        "context": paragraph.get("context"),
                        "question": qa.get("question"),
                        "answers": {
                            "text": [x.get("text") for x in answers],
                            "answer_start": [x.get("answer_start") for x in answers],
                        },
                    }
                )
    return check_qa_rows(rows, source)


def _answers(row: Mapping[str, Any], name: str, source: str) -> dict[str, list[Any]]:
    """A row's answers (its `answers` column) as a dict of two lists: `parse_answers`."""
    return parse_answers(row.get("answers"), name, source)


def parse_answers(answers: Any, name: str, source: str) -> dict[str, list[Any]]:
    """An answers value as a dict of two lists, from any of the forms tables hold it in (`name`:
    the question or row an error names).

    `datasets` gives a dict of lists, a CSV cell holds the same dict as a JSON string, Parquet through
    pandas gives arrays, and SQuAD-like JSONL often has a list of `{"text", "answer_start"}` objects.
    """
    if isinstance(answers, str):
        try:
            answers = json.loads(answers)
        except json.JSONDecodeError as e:
            # datasets' to_csv writes numpy reprs ("{'text': array([...], dtype=object), ...}"): not readable back
            hint = "; datasets' to_csv writes numpy reprs, save JSONL or Parquet instead" if "array(" in answers else ""
            raise DataError(
                f"{name} in {source}: 'answers' {_show(answers)} is not JSON ({e.msg}); expected "
                f'{{"text": [...], "answer_start": [...]}}{hint}'
            ) from None
    if isinstance(answers, list) and all(isinstance(x, Mapping) for x in answers):
        answers = {"text": [x.get("text") for x in answers], "answer_start": [x.get("answer_start") for x in answers]}
    if not isinstance(answers, Mapping) or "text" not in answers or "answer_start" not in answers:
        raise DataError(
            f"{name} in {source}: 'answers' is {type(answers).__name__} {_show(str(answers))}; "
            'expected {"text": [...], "answer_start": [...]} (empty lists when unanswerable)'
        )
    texts, starts = (_as_list(answers[key]) for key in ("text", "answer_start"))
    if texts is None or starts is None or len(texts) != len(starts):
        raise DataError(
            f"{name} in {source}: answers' 'text' and 'answer_start' must be lists of the same length, "
            f"got {_show(str(answers['text']))} and {_show(str(answers['answer_start']))}"
        )
    return {"text": texts, "answer_start": starts}


def _as_list(value: Any) -> list[Any] | None:
    """A list from a list, tuple or array (numpy's `tolist` turns its integers into Python ints)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else None


def _question_id(row: Any, i: int, source: str) -> str:
    """A row's question id as a string (a CSV reader's number becomes one); refused when missing."""
    if not isinstance(row, Mapping):
        raise DataError(f"row {i} of {source} is a {type(row).__name__}; expected {ROW_LAYOUT}")
    qid = row.get("id")
    if isinstance(qid, numbers.Integral) and not isinstance(qid, bool):
        qid = str(qid)
    if not isinstance(qid, str) or not qid.strip():
        raise DataError(f"row {i} of {source} has no question id (got {qid!r}); every row needs a unique 'id'")
    return qid


def check_answer(text: Any, start: Any, context: str, name: str, source: str) -> None:
    """Refuse an answer that is empty or that its context does not hold at its `answer_start`:
    trained on, it would teach the wrong tokens (`name`: the question or row the error names)."""
    if not isinstance(text, str) or not text:
        raise DataError(f"{name} in {source} has an empty answer text (got {text!r})")
    if not isinstance(start, numbers.Integral) or isinstance(start, bool):
        raise DataError(f"{name} in {source}: answer_start {start!r} of {_show(text)} is not an integer")
    start = int(start)
    if start < 0 or context[start : start + len(text)] != text:
        there = context[max(start, 0) : max(start, 0) + len(text)]
        found = context.find(text)
        hint = f" (that text is at {found})" if found >= 0 else " (that text is nowhere in the context)"
        raise DataError(
            f"{name} in {source}: answer_start {start} points at {_show(there)}, not at the answer {_show(text)}{hint}"
        )


def check_qa_rows(rows: Iterable[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Rows in `squad_v2` columns checked and normalised: answers a dict of two lists, ids strings.

    For rows from CSV, JSONL or `datasets`, which `read_squad` never sees: the same checks, so that
    bad data is refused with the question's id before training rather than trained on.
    `title` may be left out (it becomes ""); a numeric id (as a CSV reader gives) becomes a string.
    """
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        qid = _question_id(row, i, source)
        name = f"question {qid!r}"
        if qid in seen:
            raise DataError(f"{name} appears twice in {source}; question ids must be unique")
        seen.add(qid)
        context, question = row.get("context"), row.get("question")
        if not isinstance(context, str) or not context.strip():
            raise DataError(f"{name} in {source} has no context (got {_show(str(context))}); it needs the passage")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{name} in {source} has an empty question (got {_show(str(question))})")
        answers = _answers(row, name, source)
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            check_answer(text, start, context, name, source)
        title = row.get("title")
        checked.append(
            {
                "id": qid,
                "title": title if isinstance(title, str) else "",
                "context": context,
                "question": question,
                "answers": {"text": list(answers["text"]), "answer_start": [int(s) for s in answers["answer_start"]]},
            }
        )
    return checked


# --- the official evaluation (evaluate-v2.0.py) ----------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles, single spaces: the official script's comparison form."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    """The normalised answer's words: what F1 counts."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 if the two answers are the same once normalised."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Word-overlap F1; when either side is empty (no answer), 1 if both are, else 0."""
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _gold(rows: Iterable[Mapping[str, Any]], source: str) -> dict[str, list[str]]:
    """Each question's reference answers as the official script scores them.

    As there: the answers that normalise to nothing are dropped, and a question left with none is
    scored against [""] (only "no answer" is right). Whether a question counts as answerable
    (HasAns) is decided separately, by whether it had any answers at all (`_has_answer`).
    """
    gold: dict[str, list[str]] = {}
    for i, row in enumerate(rows):
        qid = _question_id(row, i, source)
        if qid in gold:
            raise DataError(f"question {qid!r} appears twice in {source}; question ids must be unique")
        gold[qid] = [str(t) for t in _answers(row, f"question {qid!r}", source)["text"]]
    return gold


def _has_answer(gold: Mapping[str, list[str]]) -> dict[str, bool]:
    return {qid: bool(texts) for qid, texts in gold.items()}


def _raw_scores(
    predictions: Mapping[str, str], gold: Mapping[str, list[str]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Exact and F1 per question, each the best over its reference answers (`get_raw_scores`)."""
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid, texts in gold.items():
        if qid not in predictions:
            raise DataError(f"no prediction for question {qid!r}; give one for every question ('' for no answer)")
        pred = predictions[qid]
        if not isinstance(pred, str):
            raise DataError(f"the prediction for question {qid!r} is {type(pred).__name__} {pred!r}, not a string")
        references = [t for t in texts if normalize_answer(t)] or [""]
        exact[qid] = max(compute_exact(a, pred) for a in references)
        f1[qid] = max(compute_f1(a, pred) for a in references)
    return exact, f1


def squad_scores(
    predictions: Mapping[str, str], rows: Iterable[Mapping[str, Any]], source: str = "the rows"
) -> dict[str, float]:
    """The official SQuAD 2.0 scores of answer strings ("" for no answer), as fractions in [0, 1].

    Overall `exact_match` and `f1`, and the same over the answerable (`HasAns_*`) and unanswerable
    (`NoAns_*`) questions with their counts `HasAns_total`, `NoAns_total`; a group with no questions
    has no keys. Predictions for ids not in `rows` are ignored, as the official script does.
    """
    gold = _gold(rows, source)
    if not gold:
        raise DataError(f"{source} has no questions to score")
    exact, f1 = _raw_scores(predictions, gold)
    has_answer = _has_answer(gold)
    scores: dict[str, float] = {
        "exact_match": sum(exact.values()) / len(exact),
        "f1": sum(f1.values()) / len(f1),
    }
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [qid for qid in gold if has_answer[qid] == wanted]
        if ids:
            scores[f"{prefix}_exact_match"] = sum(exact[q] for q in ids) / len(ids)
            scores[f"{prefix}_f1"] = sum(f1[q] for q in ids) / len(ids)
            scores[f"{prefix}_total"] = len(ids)
    return scores


# --- the null threshold (find_best_thresh) ---------------------------------------------------------------


def _find_best_thresh(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    null_score_diff: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """The official `find_best_thresh`: (best score as a fraction, its threshold).

    Starts from every question answered "" (all unanswerable ones right), then lowers the bar one
    question at a time in order of increasing null_score_diff, answering it with its prediction:
    an answerable question gains its score, an unanswerable one loses 1 if the prediction is non-empty.
    The threshold is the diff of the last question answered at the best running total, and 0.0 when
    answering none is best; as in the official script, ties in the diff are taken one at a time in
    sorted order, so with ties the best score is not always reached by any threshold.
    """
    cur_score = best_score = float(sum(1 for qid in scores if not has_answer[qid]))
    best_thresh = 0.0
    for qid in sorted(null_score_diff, key=lambda k: null_score_diff[k]):
        if qid not in scores:
            continue
        # answering it: an answerable question gains its score, an unanswerable one loses 1 unless ""
        cur_score += scores[qid] if has_answer[qid] else (-1.0 if predictions[qid] else 0.0)
        if cur_score > best_score:
            best_score, best_thresh = cur_score, null_score_diff[qid]
    return best_score / len(scores), best_thresh


def _diff(null_score_diff: Mapping[str, float], qid: str) -> float:
    """A question's null_score_diff, refused when missing or not a number (NaN would not sort)."""
    if qid not in null_score_diff:
        raise DataError(f"no null_score_diff for question {qid!r}; give one for every question")
    value = null_score_diff[qid]
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
        raise DataError(f"the null_score_diff of question {qid!r} is {value!r}, not a number")
    return float(value)


def null_threshold_search(
    null_score_diff: Mapping[str, float],
    predictions: Mapping[str, str],
    rows: Iterable[Mapping[str, Any]],
    source: str = "the rows",
) -> dict[str, float]:
    """The official `find_all_best_thresh`: `best_exact`, `best_exact_thresh`, `best_f1`, `best_f1_thresh`.

    Exact match and F1 are maximised separately, so their thresholds can differ; `predictions` are the
    best non-null spans (before any threshold), scores fractions in [0, 1].
    """
    gold = _gold(rows, source)
    if not gold:
        raise DataError(f"{source} has no questions to score")
    exact, f1 = _raw_scores(predictions, gold)
    for qid in gold:
        _diff(null_score_diff, qid)
    has_answer = _has_answer(gold)
    best_exact, exact_thresh = _find_best_thresh(predictions, exact, null_score_diff, has_answer)
    best_f1, f1_thresh = _find_best_thresh(predictions, f1, null_score_diff, has_answer)
    return {
        "best_exact": best_exact,
        "best_exact_thresh": exact_thresh,
        "best_f1": best_f1,
        "best_f1_thresh": f1_thresh,
    }


def best_null_threshold(
    null_score_diff: Mapping[str, float],
    predictions: Mapping[str, str],
    rows: Iterable[Mapping[str, Any]],
    source: str = "the rows",
) -> tuple[float, float, float]:
    """(threshold, best exact, best f1): the threshold that maximises F1, with the official best scores.

    A question is answered "" when its null_score_diff (null score minus best span score) is above the
    threshold (`apply_null_threshold`). The threshold is the official `best_f1_thresh`, F1 being the
    score one tunes for; best exact is the official `best_exact`, reached at `best_exact_thresh`
    (`null_threshold_search`), which may differ.
    """
    found = null_threshold_search(null_score_diff, predictions, rows, source)
    return found["best_f1_thresh"], found["best_exact"], found["best_f1"]


def tune_null_threshold(
    null_score_diff: Mapping[str, float],
    predictions: Mapping[str, str],
    rows: Iterable[Mapping[str, Any]],
    current: float | None = None,
    source: str = "the rows",
) -> float:
    """The threshold to answer with: one at which `apply_null_threshold` gives the highest F1.

    The official `best_f1_thresh` (`best_null_threshold`) is what the official script reports beside
    its best F1, not always a threshold that reaches it: it is 0.0 when answering nothing is best,
    and ties in the diff are taken one question at a time although a threshold answers all of them.
    Here every threshold that changes an answer is tried, and the one returned lies halfway between
    the diffs around it (below them all when every question is best left empty), so that a diff
    computed again with a little numerical noise falls on the same side. `current` is kept unless
    another threshold scores higher. `predictions` are the best non-null spans; a question without
    any (diff inf) is empty at every threshold, one with diff -inf answered at every threshold.
    """
    gold = _gold(rows, source)
    if not gold:
        raise DataError(f"{source} has no questions to score")
    _, answered = _raw_scores(predictions, gold)
    _, empty = _raw_scores(dict.fromkeys(gold, ""), gold)
    diffs = {qid: _diff(null_score_diff, qid) for qid in gold}
    finite = sorted({d for d in diffs.values() if math.isfinite(d)})
    scores: list[float] = []  # scores[k]: every question with a diff up to finite[k - 1] answered
    total = [answered[q] if diffs[q] == -math.inf else empty[q] for q in gold]
    by_diff = sorted((q for q in gold if math.isfinite(diffs[q])), key=lambda q: diffs[q])
    scores.append(math.fsum(total))
    k = 0
    for threshold in finite:
        while k < len(by_diff) and diffs[by_diff[k]] <= threshold:
            total.append(answered[by_diff[k]] - empty[by_diff[k]])
            k += 1
        scores.append(math.fsum(total))
    if current is not None and math.isfinite(current):
        at_current = math.fsum([answered[q] if diffs[q] <= current else empty[q] for q in gold])
        if at_current >= max(scores) - 1e-9:
            return current
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first of equals: answer fewer
    return _between(finite, best)


def _between(finite: list[float], k: int) -> float:
    """A threshold that answers the questions with diffs up to finite[k - 1] and no more: halfway
    to finite[k] (below finite[0] for k = 0, above the last for k = len(finite))."""
    if not finite:
        return 0.0
    if k == 0:
        below = finite[0] - max(1.0, abs(finite[0]))
        return below if math.isfinite(below) and below < finite[0] else math.nextafter(finite[0], -math.inf)
    if k == len(finite):
        above = finite[-1] + max(1.0, abs(finite[-1]))
        return above if math.isfinite(above) else finite[-1]
    middle = finite[k - 1] / 2 + finite[k] / 2
    return middle if finite[k - 1] <= middle < finite[k] else finite[k - 1]


def apply_null_threshold(
    predictions: Mapping[str, str], null_score_diff: Mapping[str, float], threshold: float
) -> dict[str, str]:
    """The predictions with "" (no answer) wherever null_score_diff is above the threshold."""
    answered: dict[str, str] = {}
    for qid, pred in predictions.items():
        answered[qid] = "" if _diff(null_score_diff, qid) > threshold else pred
    return answered
