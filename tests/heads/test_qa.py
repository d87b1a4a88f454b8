"""Extractive QA over long contexts: windows and their labels, answers across windows in the
context's characters, the null answer, and a span head trained from SQuAD data end to end."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import headkit
from headkit.errors import DataError
from headkit.heads.qa import best_answers, qa_windows, window_labels

from conftest import FILLER

QUESTION = "who visited paris"


def context_with(answer: str, before: int, after: int) -> tuple[str, int]:
    """A context of filler words around `answer`, and the answer's first character."""
    head = " ".join(FILLER[i % len(FILLER)] for i in range(before))
    tail = " ".join(FILLER[i % len(FILLER)] for i in range(after))
    return f"{head} {answer} {tail}", len(head) + 1


@pytest.fixture
def tokenizer(tiny_text_model):
    return headkit.load_processor(tiny_text_model)


def labelled(windows, answers, tokenizer):
    """Each window's label and the text its tokens spell (the window's null: "")."""
    labels = window_labels(windows, answers).tolist()
    return [
        (s, e, "" if s == windows.null[w] else tokenizer.decode(windows.input_ids[w][s : e + 1]))
        for w, (s, e) in enumerate(labels)
    ]


def test_a_long_context_is_cut_into_overlapping_windows_and_each_learns_whether_it_holds_the_answer(tokenizer):
    cut_through = 0
    for before in range(36, 48):  # the answer at every place relative to the windows' borders
        context, start = context_with("alice met bob", before=before, after=40)
        end = start + len("alice met bob")
        windows = qa_windows(tokenizer, [QUESTION], [context], max_length=24, doc_stride=8)
        assert len(windows.input_ids) > 3 and set(windows.example) == {0}
        assert all(len(ids) <= 24 for ids in windows.input_ids)
        labels = labelled(windows, [{"text": ["alice met bob"], "answer_start": [start]}], tokenizer)
        for w, (s, e, text) in enumerate(labels):
            chars = [o for o in windows.offsets[w] if o]
            if chars[0][0] <= start and end <= chars[-1][1]:  # the window holds the whole answer
                assert text == "alice met bob"
            else:  # none or part of it: the window's null position, [CLS]
                assert s == e == windows.null[w] == 0 and not text
                cut_through += chars[0][0] < end and start < chars[-1][1]
        # every context character is in some window
        covered = {c for offs in windows.offsets for o in offs if o for c in range(*o)}
        assert all(c in covered for c, ch in enumerate(context) if not ch.isspace())
    assert cut_through, "some window border should have cut the answer"


def test_short_contexts_and_unanswerable_questions(tokenizer):
    context, start = context_with("london", before=3, after=2)
    windows = qa_windows(tokenizer, [QUESTION, QUESTION], [context, context], max_length=64)
    assert windows.example == [0, 1]
    answers = [{"text": ["london"], "answer_start": [start]}, {"text": [], "answer_start": []}]
    labels = labelled(windows, answers, tokenizer)
    assert labels[0][2] == "london" and labels[1] == (0, 0, "")
    assert window_labels(windows, [None, None]).tolist() == [[-100, -100], [-100, -100]]


def test_a_tokenizer_that_pads_on_the_left_reads_the_context_first(tokenizer):
    tokenizer.padding_side = "left"
    context, start = context_with("alice", before=5, after=5)
    windows = qa_windows(tokenizer, [QUESTION], [context], max_length=64)
    ((s, _e, text),) = labelled(windows, [{"text": ["alice"], "answer_start": [start]}], tokenizer)
    assert text == "alice" and s < windows.input_ids[0].index(tokenizer.sep_token_id)  # in the first segment


def test_the_best_span_across_windows_wins_and_the_null_answer_needs_to_beat_it(tokenizer):
    context, start = context_with("alice met bob", before=40, after=40)
    windows = qa_windows(tokenizer, [QUESTION], [context], max_length=24, doc_stride=8)
    labels = window_labels(windows, [{"text": ["alice met bob"], "answer_start": [start]}]).tolist()
    w = next(i for i, (s, _) in enumerate(labels) if s != 0)
    logits = [torch.zeros(len(ids), 2) for ids in windows.input_ids]
    logits[w][labels[w][0], 0] = logits[w][labels[w][1], 1] = 5.0  # start + end = 10
    for row in logits:
        row[0] = 4.0  # every window's null: 8
    (answer,) = best_answers(logits, windows, [context])
    assert answer["answer"] == "alice met bob" and (answer["start"], answer["end"]) == (start, start + 13)
    assert answer["null_score_diff"] == pytest.approx(-2.0)
    (empty,) = best_answers(logits, windows, [context], null_threshold=-3.0)  # a threshold tuned lower
    assert empty["answer"] == "" and empty["start"] == empty["end"] == 0
    logits[0][0] = 6.0  # one window sure there is no answer: the null score is the windows' lowest
    assert best_answers(logits, windows, [context])[0]["answer"] == "alice met bob"
    (never,) = best_answers(logits, windows, [context], null_threshold=None)  # SQuAD 1.1: always a span
    assert never["answer"] == "alice met bob"


def test_decode_gives_the_null_answer_on_the_first_token_when_it_scores_highest():
    from headkit.heads.span import SpanConfig, SpanHead

    head = SpanHead(SpanConfig(input_size=4))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # the second row left-padded
    logits = torch.full((2, 5, 2), -5.0)
    logits[0, 2, 0] = logits[0, 3, 1] = 5.0  # row 0: the span 2..3
    logits[1, 2, :] = 5.0  # row 1: both ends on its first real token, [CLS]
    spans = head.decode(logits, mask)
    assert (spans[0]["start"], spans[0]["end"]) == (2, 3) and (spans[1]["start"], spans[1]["end"]) == (0, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_windows_candidate_spans_are_every_valid_pair_of_its_top_starts_and_ends_in_order(dtype):
    """The n-best starts against the n-best ends (topk order), kept where both have offsets, the end is
    not before the start and the span fits: scored with the float32 sum of the two logits, as
    run_qa's numpy does; ties, context-less tokens and windows shorter than n-best included."""
    from headkit.heads.qa import _window_spans

    generator = torch.Generator().manual_seed(0)
    for tokens, n_best, max_tokens, ties in [
        (40, 20, 30, False),
        (40, 20, 30, True),
        (40, 5, 3, True),
        (6, 20, 30, False),
        (1, 20, 30, False),
    ]:
        logits = torch.randn(tokens, 2, generator=generator) * 4
        logits = (logits.round() if ties else logits).to(dtype).float()
        offsets = [None if t % 7 == 0 else (3 * t, 3 * t + 2) for t in range(tokens)]
        k = min(n_best, tokens)
        starts, ends = logits[:, 0].topk(k).indices.tolist(), logits[:, 1].topk(k).indices.tolist()
        expected = [
            ((logits[s, 0] + logits[e, 1]).item(), offsets[s][0], offsets[e][1])
            for s in starts
            for e in ends
            if offsets[s] is not None and offsets[e] is not None and s <= e < s + max_tokens
        ]
        spans = _window_spans(logits[:, 0], logits[:, 1], offsets, n_best, max_tokens)
        assert spans == expected and all(type(score) is float for score, _, _ in spans)
        assert tokens < 7 or expected  # the longer windows have candidates to compare


def squad_file(path, contexts):
    """A SQuAD-layout file: one article, a paragraph per context, its questions."""
    paragraphs = [{"context": c, "qas": qas} for c, qas in contexts]
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def qa_data(tmp_path, n=24):
    contexts = []
    for i in range(n):
        name = ["alice", "bob"][i % 2]
        context, start = context_with(f"{name} visited paris", before=3 + i % 5, after=3)
        qas = [
            {"id": f"a{i}", "question": "who visited paris", "answers": [{"text": name, "answer_start": start}]},
            {"id": f"n{i}", "question": "who met london", "answers": [], "is_impossible": True},
        ]
        contexts.append((context, qas))
    return squad_file(tmp_path / "squad.json", contexts)


def train_span(model, data, **options):
    """A span head trained for two epochs on `data` (`task`: more task fields; the rest: run settings)."""
    return headkit.train(
        str(model) if not isinstance(model, headkit.MultiHeadModel) else model,
        {"answer": {"type": "span", "label": "answers", "data": str(data), **options.pop("task", {})}},
        strategy="full",
        epochs=2,
        max_length=24,
        lr=1e-3,
        progress=False,
        **{"val_fraction": 0.5, **options},
    )


def test_a_span_head_trains_from_a_squad_file_and_answers_pairs_in_the_contexts_characters(tiny_text_model, tmp_path):
    data = qa_data(tmp_path)
    result = headkit.train(
        str(tiny_text_model),
        {"answer": {"type": "span", "label": "answers", "data": str(data), "text_pair": "context"}},
        strategy="full",
        epochs=1,
        max_length=32,
        progress=False,
    )
    context, _start = context_with("alice visited paris", before=30, after=10)  # longer than one window
    (answered,) = result.model.predict([("who visited paris", context)])
    answer = answered["answer"]
    assert set(answer) == {"answer", "score", "start", "end"}
    assert answer["answer"] == context[answer["start"] : answer["end"]]
    assert 0.0 <= answer["score"] <= 1.0


def test_an_answer_that_is_not_where_its_start_says_names_the_question(tiny_text_model, tmp_path):
    context, start = context_with("alice", before=3, after=3)
    bad = squad_file(
        tmp_path / "bad.json",
        [(context, [{"id": "q-7", "question": "who", "answers": [{"text": "alice", "answer_start": start + 1}]}])],
    )
    with pytest.raises(DataError, match=r"q-7") as refused:
        headkit.train(
            str(tiny_text_model),
            {"answer": {"type": "span", "label": "answers", "data": str(bad), "text_pair": "context"}},
            progress=False,
        )
    assert "\n" not in str(refused.value)


def test_a_pairs_windows_do_not_depend_on_the_other_pairs_in_the_call(tokenizer):
    context, _ = context_with("alice met bob", before=60, after=30)
    long_question = " ".join(FILLER[:12])
    alone = qa_windows(tokenizer, [QUESTION], [context], max_length=32, doc_stride=8)
    together = qa_windows(tokenizer, [long_question, QUESTION], [context, context], max_length=32, doc_stride=8)
    mine = [w for w, e in enumerate(together.example) if e == 1]
    assert [together.input_ids[w] for w in mine] == alone.input_ids
    assert together.example == sorted(together.example)  # pair order, whatever the overlap each got


def test_the_validation_split_keeps_every_window_of_a_context_on_one_side(tiny_text_model, tmp_path):
    from headkit.data.tasks import TaskSpec, prepare

    prepared = prepare(
        [TaskSpec("answer", str(qa_data(tmp_path)), label="answers", type="span")],
        headkit.load_processor(tiny_text_model),
        max_length=24,
        val_fraction=0.25,
    )
    train, val = {t[1] for t in prepared.train.texts}, {t[1] for t in prepared.val.texts}
    assert train and val and not train & val  # contexts: (question, context) texts


def test_bad_answers_and_decoder_tokenizers_are_refused_in_one_line(tiny_text_model, tmp_path):
    from headkit.data.encode import encode_questions

    from conftest import chat_tokenizer

    context, start = context_with("alice", before=3, after=3)
    for answers, message in (
        (
            {"text": ["alice"], "answer_start": ["x"]},
            r"row 1 in .*bad.jsonl: answer_start 'x' of 'alice' is not an integer",
        ),
        (
            {"text": ["alice", "bob"], "answer_start": [start]},
            r"row 1 in .*'text' and 'answer_start' must be lists of the same",
        ),
        ({"text": ["alice"], "answer_start": [start + 2]}, r"answer_start \d+ points at .*not at the answer 'alice'"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"question": "who", "context": context, "answers": answers}) + "\n")
        with pytest.raises(DataError, match=message) as refused:
            headkit.train(str(tiny_text_model), {"answer": {"type": "span", "data": str(bad)}}, progress=False)
        assert "\n" not in str(refused.value)
    with pytest.raises(DataError, match=r"no sentence-pair template"):
        encode_questions(chat_tokenizer(), [{"question": "who", "context": context}], "text", None, 32, "d.jsonl")


def test_the_exported_question_answering_model_gives_headkit_s_answers(tiny_text_model, tmp_path):
    """transformers 5 has no question-answering pipeline: the exported AutoModelForQuestionAnswering,
    run on the same windows and decoded as run_qa decodes (heads.qa.best_answers), answers as
    headkit's predict does, character for character, over contexts longer than one window."""
    from headkit.ship.export import export_transformers

    result = headkit.train(
        str(tiny_text_model),
        {"answer": {"type": "span", "label": "answers", "data": str(qa_data(tmp_path))}},
        strategy="full",
        epochs=2,
        max_length=32,
        lr=1e-3,
        progress=False,
    )
    tokenizer = headkit.load_processor(tiny_text_model)
    saved = headkit.save(result.model, tmp_path / "saved", processor=tokenizer)
    export_transformers(saved, tmp_path / "plain", head="answer")
    exported = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "plain").eval()
    pairs = []
    for i, name in enumerate(["alice", "bob", "alice", "bob", "paris"]):
        context, _ = context_with(f"{name} visited london", before=1 + 6 * i, after=2)
        pairs.append(("who visited london" if i % 2 else "who met paris", context))
    ours = [p["answer"] for p in result.model.predict(pairs)]
    windows = qa_windows(tokenizer, [q for q, _ in pairs], [c for _, c in pairs], max_length=32)
    assert len(windows.example) > len(pairs)  # some contexts span several windows
    logits = []
    with torch.no_grad():
        for w, ids in enumerate(windows.input_ids):
            out = exported(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([windows.token_type_ids[w]]))
            logits.append(torch.stack([out.start_logits[0], out.end_logits[0]], -1))
    threshold = exported.config.null_score_diff_threshold  # the head's, tuned on the validation split
    assert threshold == result.model.heads["answer"].config.null_threshold
    theirs = best_answers(logits, windows, [c for _, c in pairs], null_threshold=threshold)
    assert [(a["answer"], a["start"], a["end"]) for a in ours] == [(t["answer"], t["start"], t["end"]) for t in theirs]
    assert [a["score"] for a in ours] == pytest.approx([t["score"] for t in theirs], abs=1e-5)


def test_evaluate_scores_a_question_answering_head_per_question_as_squad_does(tiny_text_model, tmp_path):
    from headkit.heads.squad import read_squad, squad_scores

    data = qa_data(tmp_path, n=8)
    result = headkit.train(
        str(tiny_text_model),
        {"answer": {"type": "span", "label": "answers", "data": str(data)}},
        epochs=1,
        max_length=24,
        progress=False,
    )
    rows = read_squad(data)
    metrics = result.model.evaluate(str(data))
    answers = result.model.predict([(r["question"], r["context"]) for r in rows])
    expected = squad_scores({r["id"]: a["answer"]["answer"] for r, a in zip(rows, answers, strict=True)}, rows)
    assert metrics["answer"]["f1"] == pytest.approx(expected["f1"])
    assert metrics["answer"]["HasAns_total"] == 8 and metrics["answer"]["NoAns_total"] == 8
    assert {"window_exact_match", "window_f1"} <= metrics["answer"].keys() and metrics.num_examples == 16


def test_evaluate_reads_the_question_and_context_columns_the_head_trained_on(tiny_text_model, tmp_path):
    from headkit.heads.squad import read_squad

    rows = [
        {"id": r["id"], "ask": r["question"], "passage": r["context"], "answers": r["answers"]}
        for r in read_squad(qa_data(tmp_path, n=6))
    ]
    data = tmp_path / "renamed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = headkit.train(
        str(tiny_text_model),
        {"answer": {"type": "span", "label": "answers", "text": "ask", "text_pair": "passage", "data": str(data)}},
        epochs=1,
        max_length=24,
        progress=False,
    )
    metrics = result.model.evaluate(str(data))
    assert metrics["answer"]["HasAns_total"] == 6 and metrics.num_examples == 12


def test_a_json_file_with_a_data_list_that_is_not_squad_reads_as_json_lines(tmp_path):
    from headkit.data.readers import read_rows

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"data": [{"x": 1}], "label": "a"}) + "\n")  # datasets' json(field="data") layout
    assert read_rows(str(other)) == [{"data": [{"x": 1}], "label": "a"}]
    context, start = context_with("alice", before=2, after=2)
    qas = [{"id": "q1", "question": "who", "answers": [{"text": "alice", "answer_start": start}]}]
    (row,) = read_rows(str(squad_file(tmp_path / "squad.json", [(context, qas)])))
    assert row["id"] == "q1" and row["answers"] == {"text": ["alice"], "answer_start": [start]}


def long_questions(tmp_path, n=6):
    """A JSON Lines file of questions on contexts several windows long."""
    rows = []
    for i in range(n):
        name = ["alice", "bob"][i % 2]
        context, start = context_with(f"{name} visited paris", before=10 + 7 * i, after=20)
        answers = {"text": [name], "answer_start": [start]} if i % 3 else {"text": [], "answer_start": []}
        rows.append({"id": f"q{i}", "question": "who visited paris", "context": context, "answers": answers})
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_a_span_heads_options_set_its_windows_overlap_and_answer_length_for_training_and_scoring(
    tiny_text_model, tmp_path
):
    from headkit.training.evaluate import encode_dataset

    data, rows = long_questions(tmp_path)
    tokenizer = headkit.load_processor(tiny_text_model)
    questions, contexts = [r["question"] for r in rows], [r["context"] for r in rows]
    narrow = len(qa_windows(tokenizer, questions, contexts, 24, doc_stride=4).example)  # windows overlapping by 4
    default = len(qa_windows(tokenizer, questions, contexts, 24).example)  # by half the room the question leaves
    assert narrow != default
    result = headkit.train(
        str(tiny_text_model),
        {"answer": {"type": "span", "data": str(data), "options": {"doc_stride": 4, "max_answer_tokens": 5}}},
        epochs=1,
        max_length=24,
        val_fraction=0.0,
        progress=False,
    )
    config = result.model.heads["answer"].config
    assert (config.doc_stride, config.max_answer_tokens) == (4, 5)
    assert result.metrics["train_examples"] == narrow
    assert len(encode_dataset(result.model, tokenizer, str(data))) == narrow  # scored on the windows it trained on


def test_unknown_or_conflicting_span_options_are_refused_in_one_line(tiny_text_model, tmp_path):
    from headkit.errors import HeadConfigError

    data, _ = long_questions(tmp_path)
    with pytest.raises(HeadConfigError, match=r"unknown field\(s\) \['stride'\] for a 'span' head"):
        bad = {"answer": {"type": "span", "data": str(data), "options": {"stride": 4}}}
        headkit.train(str(tiny_text_model), bad, progress=False)
    with pytest.raises(DataError, match=r"overlap by \[4, 8\] tokens") as refused:
        headkit.train(
            str(tiny_text_model),
            {
                "a": {"type": "span", "label": "answers", "data": str(data), "options": {"doc_stride": 4}},
                "b": {"type": "span", "label": "answers", "data": str(data), "options": {"doc_stride": 8}},
            },
            progress=False,
        )
    assert "\n" not in str(refused.value)


def test_predict_reads_questions_and_contexts_from_a_file_and_the_pipeline_takes_qa_dicts(tiny_text_model, tmp_path):
    from headkit.ship.predict import predict_file

    data, rows = long_questions(tmp_path)
    result = headkit.train(str(tiny_text_model), {"answer": {"type": "span", "data": str(data)}}, epochs=1,
                           max_length=24, progress=False)  # fmt: skip
    model, tokenizer = result.model, headkit.load_processor(tiny_text_model)
    expected = model.predict([(r["question"], r["context"]) for r in rows])
    for suffix in (".jsonl", ".csv"):
        out = tmp_path / f"answers{suffix}"
        count, _ = predict_file(model, tokenizer, str(data), "text", str(out))
        assert count == len(rows)
        if suffix == ".jsonl":
            lines = [json.loads(line) for line in out.read_text().splitlines()]
            assert [(x["text"], x["text_pair"]) for x in lines] == [(r["question"], r["context"]) for r in rows]
            assert [x["answer"] for x in lines] == [e["answer"] for e in expected]
        else:
            assert out.read_text().splitlines()[0].startswith("text,text_pair,answer")
    answer = headkit.pipeline(model)({"question": rows[0]["question"], "context": rows[0]["context"]})
    assert answer == expected[0]
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"question": "who", "context": None}) + "\n")
    with pytest.raises(DataError, match=r"row 1 of .*blank\.jsonl: 'context' is empty or not text"):
        predict_file(model, tokenizer, str(blank), "text", str(tmp_path / "out.jsonl"))
    with pytest.raises(DataError, match=r"a text pair is \{'text': \.\.\., 'text_pair': \.\.\.\} \(a question"):
        model.predict([{"query": "who", "passage": "alice"}])


def test_options_that_are_the_tasks_own_fields_are_refused(tiny_text_model, tmp_path):
    data, _ = long_questions(tmp_path)
    with pytest.raises(DataError, match=r"\['layer'\] in options are the task's own settings"):
        headkit.train(str(tiny_text_model), {"answer": {"type": "span", "data": str(data), "options": {"layer": 1}}},
                      progress=False)  # fmt: skip


def test_a_kept_head_trains_further_on_windows_cut_as_it_reads_them_or_as_its_options_now_say(
    tiny_text_model, tmp_path
):
    data, rows = long_questions(tmp_path)
    tokenizer = headkit.load_processor(tiny_text_model)
    questions, contexts = [r["question"] for r in rows], [r["context"] for r in rows]
    windows = {s: len(qa_windows(tokenizer, questions, contexts, 24, doc_stride=s).example) for s in (4, 7)}
    assert windows[4] != windows[7]
    settings = {"epochs": 1, "max_length": 24, "val_fraction": 0.0, "progress": False}
    first = headkit.train(
        str(tiny_text_model), {"answer": {"type": "span", "data": str(data), "options": {"doc_stride": 4}}}, **settings
    )
    again = headkit.train(first.model, {"answer": {"type": "span", "data": str(data)}}, **settings)
    assert again.model.heads["answer"].config.doc_stride == 4 and again.metrics["train_examples"] == windows[4]
    changed = headkit.train(
        first.model, {"answer": {"type": "span", "data": str(data), "options": {"doc_stride": 7}}}, **settings
    )
    assert changed.model.heads["answer"].config.doc_stride == 7 and changed.metrics["train_examples"] == windows[7]


def test_span_heads_of_one_model_share_their_windows(tiny_text_model):
    from headkit.errors import HeadConfigError

    model = headkit.MultiHeadModel.from_pretrained(
        tiny_text_model, heads={"a": headkit.head_config("span", doc_stride=4)}
    )
    with pytest.raises(HeadConfigError, match="share one encoding"):
        model.add_head("b", headkit.head_config("span", doc_stride=8))
    model.add_head("b", headkit.head_config("span", doc_stride=4))


def test_the_server_answers_questions_on_their_contexts_as_predict_does(tiny_text_model, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from headkit.ship.serve import load_app

    data, rows = long_questions(tmp_path)
    result = headkit.train(str(tiny_text_model), {"answer": {"type": "span", "data": str(data)}}, epochs=1,
                           max_length=24, progress=False, output_dir=str(tmp_path / "run"))  # fmt: skip
    expected = result.model.predict([(r["question"], r["context"]) for r in rows])
    with TestClient(load_app(tmp_path / "run", engine="torch")) as client:
        body = {"texts": [r["question"] for r in rows], "text_pairs": [r["context"] for r in rows]}
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        got = [p["answer"] for p in response.json()["predictions"]]
        assert [(g["answer"], g["start"]) for g in got] == [
            (e["answer"]["answer"], e["answer"]["start"]) for e in expected
        ]
        uneven = client.post("/predict", json={"texts": ["who"], "text_pairs": ["a", "b"]})
        assert uneven.status_code == 422 and "one second text for each" in uneven.json()["error"]
        long = client.post("/predict", json={"texts": ["who"], "text_pairs": ["word " * 5000]})
        assert long.status_code == 413 and long.json()["error"].startswith("text_pairs[0] has 25,000 characters")


def test_a_head_beside_a_span_head_answers_from_the_windows_it_trained_on_whichever_heads_are_asked(
    tiny_text_model, tmp_path
):
    data, rows = long_questions(tmp_path)
    rows = [{**r, "kind": "alice" if "alice" in r["context"] else "bob"} for r in rows]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    heads = {"answer": {"type": "span", "label": "answers", "data": str(data)},
             "kind": {"type": "classification", "label": "kind", "data": str(data)}}  # fmt: skip
    model = headkit.train(str(tiny_text_model), heads, epochs=1, max_length=24, val_fraction=0.0, progress=False).model
    pairs = [(r["question"], r["context"]) for r in rows]
    together = model.predict(pairs)
    alone = model.predict(pairs, heads=["kind"])
    assert [a["kind"] for a in alone] == [t["kind"] for t in together] and "answer" not in alone[0]


def test_two_span_heads_change_their_windows_overlap_together(tiny_text_model, tmp_path):
    data, _ = long_questions(tmp_path)
    heads = {name: {"type": "span", "label": "answers", "data": str(data)} for name in ("a", "b")}
    settings = {"epochs": 1, "max_length": 24, "val_fraction": 0.0, "progress": False}
    first = headkit.train(str(tiny_text_model), heads, **settings)
    wider = {name: {**spec, "options": {"doc_stride": 5}} for name, spec in heads.items()}
    again = headkit.train(first.model, wider, **settings)
    assert [again.model.heads[n].config.doc_stride for n in ("a", "b")] == [5, 5]
    narrower = {**heads["a"], "options": {"doc_stride": 128}}  # one of them alone: b keeps its own, 5
    with pytest.raises(DataError, match=r"overlap by \[5, 128\] tokens"):
        headkit.train(again.model, {"a": narrower, "b": heads["b"]}, **settings)
