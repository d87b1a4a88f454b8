"""Span heads on decoder backbones: windows that put the question first, mark the border and close
with the end token the null answer is read on; trained and answering on tiny Llama-style (untied)
and GPT-2-style decoders, left-padded or right-padded alike."""

from __future__ import annotations

import pytest
import torch

import headkit
from headkit.errors import DataError
from headkit.heads.qa import best_answers, qa_windows, window_labels
from heads.test_qa import context_with, qa_data, train_span

from conftest import save_decoder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_decoder(tmp_path_factory.mktemp("llama"), "llama")


def test_a_decoder_window_reads_the_question_first_and_closes_with_the_end_token(llama):
    tokenizer = headkit.load_processor(llama)
    tokenizer.padding_side = "left"  # a decoder's usual side: the question still comes first
    context, start = context_with("alice met bob", before=30, after=30)
    windows = qa_windows(tokenizer, ["who met bob"], [context], max_length=24, doc_stride=8, causal=True)
    eos, question = tokenizer.eos_token_id, tokenizer("who met bob", add_special_tokens=False)["input_ids"]
    labels = window_labels(windows, [{"text": ["alice met bob"], "answer_start": [start]}]).tolist()
    assert len(windows.input_ids) > 2 and windows.token_type_ids is None
    for w, ids in enumerate(windows.input_ids):
        assert len(ids) <= 24 and ids[: len(question) + 1] == [*question, eos] and ids[-1] == eos
        assert windows.null[w] == len(ids) - 1 and windows.offsets[w][-1] is None
        s, e = labels[w]
        if s != windows.null[w]:
            assert tokenizer.decode(ids[s : e + 1]) == "alice met bob"
    assert any(s != windows.null[w] for w, (s, _) in enumerate(labels))
    assert sum(s == windows.null[w] for w, (s, _) in enumerate(labels)) >= 1  # the windows that miss it


def test_a_decoder_tokenizer_without_an_end_token_is_refused(llama):
    tokenizer = headkit.load_processor(llama)
    tokenizer.eos_token = None
    with pytest.raises(DataError, match="no end-of-text token"):
        qa_windows(tokenizer, ["who"], ["alice met bob"], max_length=24, causal=True)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_span_head_trains_on_a_decoder_and_answers_alike_whichever_side_it_pads(kind, tmp_path):
    path = save_decoder(tmp_path / kind, kind)
    result = train_span(path, qa_data(tmp_path, n=12), val_fraction=0.25)
    model = result.model
    assert model.heads["answer"].config.null_position == "last"
    pairs = []
    for i, name in enumerate(["alice", "bob", "carol"]):
        context, _ = context_with(f"{name} visited london", before=2 + 9 * i, after=3)
        pairs.append(("who visited london", context))
    right = [p["answer"] for p in model.predict(pairs)]
    tokenizer = model._processor()
    tokenizer.padding_side = "left"
    left = [p["answer"] for p in model.predict(pairs)]
    assert [(a["answer"], a["start"], a["end"]) for a in left] == [(a["answer"], a["start"], a["end"]) for a in right]
    assert [a["score"] for a in left] == pytest.approx([a["score"] for a in right], abs=1e-4)
    for (_, context), answer in zip(pairs, right, strict=True):
        assert answer["answer"] == context[answer["start"] : answer["end"]]
    # predict's answers are the head's logits on the decoder windows, decoded as run_qa decodes
    windows = qa_windows(tokenizer, [q for q, _ in pairs], [c for _, c in pairs], 24, causal=True)
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([ids])).outputs["answer"][0] for ids in windows.input_ids]
    threshold = model.heads["answer"].config.null_threshold
    expected = best_answers(logits, windows, [c for _, c in pairs], null_threshold=threshold)
    assert [(a["answer"], a["start"]) for a in right] == [(e["answer"], e["start"]) for e in expected]
    metrics = model.evaluate(str(qa_data(tmp_path, n=12)))
    assert metrics["answer"]["HasAns_total"] == 12 and 0.0 <= metrics["answer"]["f1"] <= 1.0


def test_decode_reads_a_decoders_null_answer_on_its_last_real_token():
    from headkit.heads.span import SpanConfig, SpanHead

    head = SpanHead(SpanConfig(input_size=4, null_position="last"))
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])  # right- and left-padded
    logits = torch.full((2, 5, 2), -5.0)
    logits[0, 3, :] = 5.0  # row 0's last real token
    logits[1, 4, :] = 5.0  # row 1's
    spans = head.decode(logits, mask)
    assert [(s["start"], s["end"]) for s in spans] == [(3, 3), (3, 3)]  # positions from each text's first token
