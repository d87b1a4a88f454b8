"""SQuAD 2.0 building blocks: reading and checking the data, the official scores, the null threshold.

Hand-worked cases for each piece, and a cross-check against a compact copy of the official
`evaluate-v2.0.py` on the first 5 articles of the real development set. No model is loaded.
"""

from __future__ import annotations

import collections
import json
import random
import re
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headkit.errors import DataError
from headkit.heads.squad import (
    apply_null_threshold,
    best_null_threshold,
    check_qa_rows,
    compute_exact,
    compute_f1,
    get_tokens,
    normalize_answer,
    null_threshold_search,
    read_squad,
    squad_scores,
)

REAL = Path("/work/shared/data/squad-v2-dev-5-articles.json")  # see /work/shared/data/README.md
needs_real = pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is not on this machine")

CONTEXT = "The Eiffel Tower is in Paris. It was built in 1889 by Gustave Eiffel's company."


def row(qid: str, texts: list[str], starts: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    """A row in squad_v2 columns on CONTEXT; answer_start found in the context unless given."""
    starts = [CONTEXT.find(t) for t in texts] if starts is None else starts
    return {
        "id": qid,
        "title": "Eiffel",
        "context": CONTEXT,
        "question": f"question {qid}?",
        "answers": {"text": texts, "answer_start": starts},
        **extra,
    }


def squad_file(tmp_path: Path, qas: list[dict[str, Any]], context: Any = CONTEXT) -> Path:
    """A SQuAD-layout file of one article, one paragraph."""
    paragraph: dict[str, Any] = {"qas": qas} if context is None else {"context": context, "qas": qas}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "Eiffel", "paragraphs": [paragraph]}]}))
    return path


def raised(call: Any, *args: Any) -> str:
    """The DataError message of a call, checked to be one line."""
    with pytest.raises(DataError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- the official comparisons -------------------------------------------------------------------------


def test_normalisation_ignores_case_punctuation_articles_and_spacing():
    assert normalize_answer("The Eiffel  Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # \b: "the" inside a word stays
    assert get_tokens("") == [] and get_tokens("The.") == []
    assert compute_exact("eiffel tower", "The Eiffel Tower!") == 1
    assert compute_exact("Eiffel Tower", "Eiffel") == 0


def test_f1_counts_shared_words():
    # gold [quick, brown, fox] ("the" dropped), prediction [brown, fox, jumps, over]: 2 shared words,
    # precision 2/4, recall 2/3, F1 = 2 * 1/2 * 2/3 / (1/2 + 2/3) = (2/3) / (7/6) = 4/7
    assert compute_f1("the quick brown fox", "brown fox jumps over") == pytest.approx(4 / 7)
    # repeated words count as often as both sides have them: 2 shared of 4 gold, 2 predicted: 2 * 1 * 1/2 / 1.5
    assert compute_f1("new york new york", "New York") == pytest.approx(2 / 3)
    assert compute_f1("Paris", "Rome") == 0
    assert compute_f1("Paris", "paris.") == 1


def test_f1_of_no_answer_is_1_only_against_no_answer():
    assert compute_f1("", "") == 1 and compute_exact("", "") == 1
    assert compute_f1("", "Paris") == 0 and compute_f1("Paris", "") == 0
    assert compute_f1("", "the") == 1  # "the" normalises to nothing: it is no answer


def test_a_question_scores_its_best_reference_answer():
    rows = [row("q", ["Gustave Eiffel's company", "Gustave Eiffel", "Eiffel"])]
    assert squad_scores({"q": "eiffel"}, rows)["exact_match"] == 1
    # "Gustave" against [gustave, eiffels, company]: P 1, R 1/3, F1 1/2; against [gustave, eiffel]: P 1, R 1/2,
    # F1 2/3; against [eiffel]: 0. The best is 2/3, and no reference matches exactly.
    scores = squad_scores({"q": "Gustave"}, rows)
    assert scores["exact_match"] == 0 and scores["f1"] == pytest.approx(2 / 3)


def test_scores_split_into_answerable_and_unanswerable():
    rows = [
        row("a1", ["Eiffel Tower"]),
        row("a2", ["Gustave Eiffel's company"]),
        row("u1", []),
        row("u2", []),
    ]
    predictions = {"a1": "the Eiffel Tower!", "a2": "Eiffel's company in Paris", "u1": "", "u2": "Paris", "x": "extra"}
    # a1: EM 1, F1 1. a2: [gustave, eiffels, company] vs [eiffels, company, in, paris]: 2 shared,
    # P 2/4, R 2/3, F1 4/7, EM 0. u1: "" for no answer, 1 and 1. u2: an answer to an unanswerable one, 0 and 0.
    # The prediction for "x", which is no question, is ignored.
    scores = squad_scores(predictions, rows)
    assert scores == pytest.approx(
        {
            "exact_match": 2 / 4,
            "f1": (1 + 4 / 7 + 1 + 0) / 4,
            "HasAns_exact_match": 1 / 2,
            "HasAns_f1": (1 + 4 / 7) / 2,
            "HasAns_total": 2,
            "NoAns_exact_match": 1 / 2,
            "NoAns_f1": 1 / 2,
            "NoAns_total": 2,
        }
    )
    only_answerable = squad_scores(predictions, rows[:2])
    assert "NoAns_total" not in only_answerable and "NoAns_f1" not in only_answerable
    assert only_answerable["HasAns_total"] == 2 and only_answerable["exact_match"] == 1 / 2


def test_a_reference_that_normalises_to_nothing_is_scored_as_no_answer_but_counts_as_answerable():
    # as the official script: the references that normalise to "" are dropped, leaving [""]
    rows = [{**row("q", ["The"]), "context": "The end.", "answers": {"text": ["The"], "answer_start": [0]}}]
    assert squad_scores({"q": ""}, rows) == {
        "exact_match": 1,
        "f1": 1,
        "HasAns_exact_match": 1,
        "HasAns_f1": 1,
        "HasAns_total": 1,
    }


def test_a_missing_prediction_names_the_question():
    rows = [row("a1", ["Paris"]), row("u1", [])]
    assert "'u1'" in raised(squad_scores, {"a1": "Paris"}, rows)
    assert "'a1'" in raised(squad_scores, {"a1": None, "u1": ""}, rows)
    assert "no questions" in raised(squad_scores, {}, [])


# --- the null threshold ---------------------------------------------------------------------------------


THRESHOLD_ROWS = [
    row("a1", ["Paris"]),
    row("u1", []),
    row("a2", ["Gustave Eiffel's company"]),
    row("u2", []),
    row("a3", ["1889"]),
]
# the best non-null span of each question, and null score minus that span's score
THRESHOLD_PREDICTIONS = {"a1": "Paris", "u1": "", "a2": "Eiffel's company in Paris", "u2": "Paris", "a3": "1890"}
THRESHOLD_DIFFS = {"a1": -2.0, "u1": -1.0, "a2": 0.5, "u2": 1.0, "a3": 3.0}


def test_best_null_threshold_on_a_hand_worked_case():
    # Every question answered "" first: u1 and u2 right, 2 of 5. Answering in order of increasing diff:
    #   a1 (-2.0) right:                   EM 3,  F1 3         <- best EM, threshold -2.0
    #   u1 (-1.0) "" anyway:               EM 3,  F1 3
    #   a2 (0.5)  EM 0, F1 4/7 (as above): EM 3,  F1 3 + 4/7   <- best F1, threshold 0.5
    #   u2 (1.0)  answers an unanswerable: EM 2,  F1 2 + 4/7
    #   a3 (3.0)  wrong:                   EM 2,  F1 2 + 4/7
    found = null_threshold_search(THRESHOLD_DIFFS, THRESHOLD_PREDICTIONS, THRESHOLD_ROWS)
    assert found == pytest.approx(
        {"best_exact": 3 / 5, "best_exact_thresh": -2.0, "best_f1": 5 / 7, "best_f1_thresh": 0.5}
    )
    threshold, best_exact, best_f1 = best_null_threshold(THRESHOLD_DIFFS, THRESHOLD_PREDICTIONS, THRESHOLD_ROWS)
    assert (threshold, best_exact, best_f1) == pytest.approx((0.5, 3 / 5, 5 / 7))

    # Applying that threshold reaches the best F1: a diff above 0.5 means "no answer"
    answered = apply_null_threshold(THRESHOLD_PREDICTIONS, THRESHOLD_DIFFS, threshold)
    assert answered == {"a1": "Paris", "u1": "", "a2": "Eiffel's company in Paris", "u2": "", "a3": ""}
    assert squad_scores(answered, THRESHOLD_ROWS)["f1"] == pytest.approx(best_f1)
    at_exact = apply_null_threshold(THRESHOLD_PREDICTIONS, THRESHOLD_DIFFS, found["best_exact_thresh"])
    assert squad_scores(at_exact, THRESHOLD_ROWS)["exact_match"] == pytest.approx(best_exact)


def test_when_no_answer_beats_every_answer_the_threshold_stays_0():
    rows = [row("a1", ["Paris"]), row("u1", [])]
    # a1 wrong (gains 0), u1 answered (loses 1): never above the start, all "" (1 of 2)
    assert best_null_threshold({"a1": -1.0, "u1": -0.5}, {"a1": "Rome", "u1": "Rome"}, rows) == (0.0, 0.5, 0.5)


def test_the_null_threshold_needs_a_number_for_every_question():
    assert "'u2'" in raised(
        best_null_threshold, {"a1": 0.0}, THRESHOLD_PREDICTIONS, [*THRESHOLD_ROWS[:1], row("u2", [])]
    )
    assert "'a1'" in raised(best_null_threshold, {"a1": float("nan")}, {"a1": "Paris"}, THRESHOLD_ROWS[:1])
    assert "'a1'" in raised(apply_null_threshold, {"a1": "Paris"}, {}, 0.0)


# --- reading and checking the data -------------------------------------------------------------------


def test_read_squad_flattens_to_squad_v2_columns(tmp_path):
    qas = [
        {"id": "a1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 23}], "is_impossible": False},
        {
            "id": "u1",
            "question": "Who painted it?",
            "answers": [],
            "is_impossible": True,
            "plausible_answers": [{"text": "Gustave Eiffel", "answer_start": 54}],
        },
    ]
    expected = [
        row("a1", ["Paris"], question="Where?"),
        row("u1", [], question="Who painted it?"),
    ]
    path = squad_file(tmp_path, qas)
    assert read_squad(path) == expected
    assert read_squad(str(path)) == expected
    assert read_squad(json.loads(path.read_text())) == expected


def test_a_wrong_answer_start_names_the_question_and_the_file(tmp_path):
    qas = [{"id": "q-17", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 20}]}]
    path = squad_file(tmp_path, qas)
    message = raised(read_squad, path)
    assert "'q-17'" in message and str(path) in message and "answer_start 20" in message
    assert "'Paris'" in message and "at 23" in message  # where the text really is


@pytest.mark.parametrize(
    ("qas", "context", "expected"),
    [
        ([{"id": "q1", "question": "Where?", "answers": []}], None, "'q1' in .* has no context"),
        ([{"id": "q1", "question": "Where?", "answers": []}], "  ", "'q1' in .* has no context"),
        ([{"id": "q1", "question": " ", "answers": []}], CONTEXT, "'q1' in .* has an empty question"),
        ([{"id": "q1", "answers": []}], CONTEXT, "'q1' in .* has an empty question"),
        ([{"question": "Where?", "answers": []}], CONTEXT, "question 0 in .* has no 'id'"),
        ([{"id": "q1", "question": "Where?"}], CONTEXT, "'q1' has no 'answers' list"),
        (
            [{"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 23}]}] * 2,
            CONTEXT,
            "'q1' appears twice",
        ),
        (
            [
                {
                    "id": "q1",
                    "question": "Where?",
                    "answers": [{"text": "Paris", "answer_start": 23}],
                    "is_impossible": True,
                }
            ],
            CONTEXT,
            "'q1' in .* is marked is_impossible but has 1 answers",
        ),
        (
            [{"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": "23"}]}],
            CONTEXT,
            "'q1' in .* answer_start '23' of 'Paris' is not an integer",
        ),
        (
            [{"id": "q1", "question": "Where?", "answers": [{"text": "", "answer_start": 0}]}],
            CONTEXT,
            "'q1' in .* has an empty answer text",
        ),
        (
            [{"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": -60}]}],
            CONTEXT,
            "'q1' in .* answer_start -60 points at",
        ),
    ],
)
def test_bad_questions_are_refused_by_id(tmp_path, qas, context, expected):
    assert re.search(expected, raised(read_squad, squad_file(tmp_path, qas, context)))


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([{"title": "x"}], "the top level is a JSON list"),
        ({"version": "v2.0", "articles": []}, "the top level has keys \\['articles', 'version'\\] with no 'data' list"),
        ({"data": [{"title": "x", "context": "y"}]}, "article 0 has no 'paragraphs' list"),
        ({"data": [{"title": "x", "paragraphs": [{"context": "y"}]}]}, "article 0 \\('x'\\) paragraph 0 has no 'qas'"),
        ({"data": [{"title": "x", "paragraphs": [{"context": "y", "qas": ["q"]}]}]}, "question 0 is a JSON str"),
    ],
)
def test_a_file_not_in_the_squad_layout_says_what_was_expected(tmp_path, document, expected):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(document))
    message = raised(read_squad, path)
    assert re.search(expected, message) and str(path) in message
    assert 'expected {"version", "data": [{"title", "paragraphs"' in message


def test_unreadable_files_are_data_errors(tmp_path):
    assert "not found" in raised(read_squad, tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"data": [')
    assert "is not valid JSON" in raised(read_squad, tmp_path / "broken.json")


def test_check_qa_rows_accepts_the_forms_tables_hold_answers_in():
    expected = [row("a1", ["Paris", "in Paris"]), row("u1", [])]
    as_json = [{**r, "answers": json.dumps(r["answers"])} for r in expected]  # a CSV cell
    as_arrays = [  # Parquet read by pandas
        {
            **r,
            "answers": {"text": np.array(r["answers"]["text"]), "answer_start": np.array(r["answers"]["answer_start"])},
        }
        for r in expected
    ]
    as_objects = [  # SQuAD-like JSONL
        {**r, "answers": [{"text": t, "answer_start": s} for t, s in zip(*r["answers"].values(), strict=True)]}
        for r in expected
    ]
    for rows in (expected, as_json, as_arrays, as_objects):
        assert check_qa_rows(rows, "rows.csv") == expected
    checked = check_qa_rows(as_arrays, "rows.parquet")
    assert type(checked[0]["answers"]["answer_start"][0]) is int
    # a CSV reader's numeric id, and no title column
    untitled = {k: v for k, v in row("7", ["Paris"]).items() if k != "title"}
    assert check_qa_rows([{**untitled, "id": 7}], "x.csv") == [{**row("7", ["Paris"]), "title": ""}]


def test_check_qa_rows_reads_a_datasets_dataset():
    datasets = pytest.importorskip("datasets")
    expected = [row("a1", ["Paris"]), row("u1", [])]
    assert check_qa_rows(datasets.Dataset.from_list(expected), "a Dataset") == expected


def test_check_qa_rows_refuses_bad_rows_by_id():
    def refused(bad: dict[str, Any]) -> str:
        message = raised(check_qa_rows, [row("ok", ["Paris"]), bad], "train.csv")
        assert "train.csv" in message
        return message

    assert "'q9' in train.csv: answer_start 0 points at 'The E', not at the answer 'Paris'" in refused(
        row("q9", ["Paris"], [0])
    )
    assert "'q9' in train.csv has no context" in refused({**row("q9", []), "context": float("nan")})
    assert "'q9' in train.csv has an empty question" in refused({**row("q9", []), "question": ""})
    assert "'q9' in train.csv: answers' 'text' and 'answer_start'" in refused(row("q9", ["Paris"], []))
    assert "'q9' in train.csv: 'answers' is NoneType" in refused({**row("q9", []), "answers": None})
    assert "row 1 of train.csv has no question id" in refused({**row("q9", []), "id": None})
    written_by_datasets = "{'text': array(['Paris'], dtype=object), 'answer_start': array([23])}"
    message = refused({**row("q9", []), "answers": written_by_datasets})
    assert "'q9' in train.csv: 'answers'" in message and "is not JSON" in message and "JSONL or Parquet" in message


# --- the real data, against the official script ------------------------------------------------------


def official_v2(dataset: list[dict], preds: dict[str, str], na_probs: dict[str, float]) -> dict[str, float]:
    """A compact copy of evaluate-v2.0.py's logic (percentages, as there), for the cross-check."""

    def norm(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", s).split())

    def toks(s):
        return norm(s).split() if s else []

    def f1(gold, pred):
        g, p = toks(gold), toks(pred)
        same = sum((collections.Counter(g) & collections.Counter(p)).values())
        if not g or not p:
            return int(g == p)
        return 0 if same == 0 else 2 * (same / len(p)) * (same / len(g)) / (same / len(p) + same / len(g))

    has_ans, exact, f1s = {}, {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                has_ans[qa["id"]] = bool(qa["answers"])
                golds = [a["text"] for a in qa["answers"] if norm(a["text"])] or [""]
                exact[qa["id"]] = max(int(norm(a) == norm(preds[qa["id"]])) for a in golds)
                f1s[qa["id"]] = max(f1(a, preds[qa["id"]]) for a in golds)

    def best(scores):
        cur = best_score = sum(1 for k in has_ans if not has_ans[k])
        best_thresh = 0.0
        for qid in sorted(na_probs, key=lambda k: na_probs[k]):
            cur += scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
            if cur > best_score:
                best_score, best_thresh = cur, na_probs[qid]
        return 100.0 * best_score / len(scores), best_thresh

    out = {"exact": 100.0 * sum(exact.values()) / len(exact), "f1": 100.0 * sum(f1s.values()) / len(f1s)}
    for name, ids in (
        ("HasAns", [k for k in has_ans if has_ans[k]]),
        ("NoAns", [k for k in has_ans if not has_ans[k]]),
    ):
        out[f"{name}_exact"] = 100.0 * sum(exact[k] for k in ids) / len(ids)
        out[f"{name}_f1"] = 100.0 * sum(f1s[k] for k in ids) / len(ids)
        out[f"{name}_total"] = len(ids)
    out["best_exact"], out["best_exact_thresh"] = best(exact)
    out["best_f1"], out["best_f1_thresh"] = best(f1s)
    return out


@needs_real
def test_the_real_file_reads_with_every_answer_in_place():
    rows = read_squad(REAL)
    assert len(rows) == 1407 and len({r["id"] for r in rows}) == 1407
    assert sum(bool(r["answers"]["text"]) for r in rows) == 705
    assert sum(len(r["answers"]["text"]) for r in rows) == 2106
    assert {r["title"] for r in rows} == {
        "Normans",
        "Computational_complexity_theory",
        "Southern_California",
        "Sky_(United_Kingdom)",
        "Victoria_(Australia)",
    }
    for r in rows:
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"], strict=True):
            assert r["context"][start : start + len(text)] == text
    assert check_qa_rows(rows, str(REAL)) == rows  # already normalised


@needs_real
def test_the_scores_match_the_official_script_on_the_real_file():
    rows = read_squad(REAL)
    rng = random.Random(0)
    predictions, diffs = {}, {}
    for r in rows:
        words, golds = r["context"].split(), r["answers"]["text"]
        start = rng.randrange(len(words))
        predictions[r["id"]] = rng.choice(
            [
                golds[0] if golds else "",
                (f"The {golds[-1].upper()}." if golds else ""),
                " ".join(words[start : start + rng.randint(1, 6)]),  # some part of the context
                (golds[0] + " " + words[start] if golds else words[start]),
                "",
            ]
        )
        diffs[r["id"]] = round(rng.uniform(-4, 4), 1)  # rounded: ties, taken in the same order
    document = json.loads(REAL.read_text())["data"]
    official = official_v2(document, predictions, diffs)
    ours = squad_scores(predictions, rows)
    assert 0.2 < ours["f1"] < 0.8  # a mix, not all right or all wrong
    for group in ("", "HasAns_", "NoAns_"):
        for key, theirs in (("exact_match", "exact"), ("f1", "f1")):
            assert 100 * ours[group + key] == pytest.approx(official[group + theirs], abs=1e-9), group + key
    assert (ours["HasAns_total"], ours["NoAns_total"]) == (official["HasAns_total"], official["NoAns_total"])
    assert (ours["HasAns_total"], ours["NoAns_total"]) == (705, 702)

    found = null_threshold_search(diffs, predictions, rows)
    assert 100 * found["best_exact"] == pytest.approx(official["best_exact"], abs=1e-9)
    assert 100 * found["best_f1"] == pytest.approx(official["best_f1"], abs=1e-9)
    assert (found["best_exact_thresh"], found["best_f1_thresh"]) == (
        official["best_exact_thresh"],
        official["best_f1_thresh"],
    )
    assert found["best_f1"] >= 702 / 1407  # never below answering nothing, where the search starts
    assert best_null_threshold(diffs, predictions, rows) == (
        found["best_f1_thresh"],
        found["best_exact"],
        found["best_f1"],
    )
