"""Runs that write text through `headkit generate` and `headkit serve`: a seq2seq head answers with
generated text beside a classifier; an sft run answers with replies; max_new_tokens is bounded."""

import pytest
import torch
from fastapi.testclient import TestClient

import headkit
from headkit.cli.main import main
from headkit.ship.generate import generate_heads, is_causal_lm_save, writing_heads
from headkit.ship.serve import ServeLimits, load_app
from headkit.training.sft import SFTConfig, sft

from conftest import reply_rows, save_chat_model, write_csv

LIMITS = ServeLimits(max_texts=4, max_chars=200, timeout_s=30, max_new_tokens=6)


@pytest.fixture(scope="module")
def headline_save(tiny_text_model, tmp_path_factory):
    """A seq2seq head and a classifier on the tiny BERT (random weights: only shapes and limits matter)."""
    torch.manual_seed(0)
    heads = {
        "title": headkit.head_config("seq2seq", max_new_tokens=20),
        "sentiment": headkit.head_config("classification", labels=["neg", "pos"]),
    }
    model = headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads)
    return headkit.save(model, tmp_path_factory.mktemp("headline") / "model")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    data = write_csv(root / "replies.csv", reply_rows(16))
    config = SFTConfig(model=str(save_chat_model(root / "chat")), data=str(data), output_dir=str(root / "run"),
                       strategy="full", epochs=1, batch_size=8, max_length=32, progress=False)  # fmt: skip
    sft(config)
    return root / "run"


def test_generate_answers_with_each_text_writing_head(headline_save, capsys):
    assert writing_heads(str(headline_save)) == ["title"] and not is_causal_lm_save(str(headline_save))
    answers = generate_heads(str(headline_save), ["the film was good", "a dull plot"], max_new_tokens=3, num_beams=2)
    assert all(isinstance(a["title"], str) and len(a["title"].split()) <= 3 for a in answers)
    assert main(["generate", str(headline_save), "the film was good", "--max_new_tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("title: ")


def test_serve_answers_generated_text_within_the_server_limit(headline_save):
    with TestClient(load_app(headline_save, limits=LIMITS)) as client:
        response = client.post("/predict", json={"texts": ["the film was good"], "max_new_tokens": 2})
        assert response.status_code == 200
        prediction = response.json()["predictions"][0]
        assert set(prediction) == {"title", "sentiment"} and len(prediction["title"].split()) <= 2
        default = client.post("/predict", json={"texts": ["the film was good"]}).json()["predictions"][0]
        assert len(default["title"].split()) <= LIMITS.max_new_tokens  # the head's 20 capped at the limit
        too_many = client.post("/predict", json={"texts": ["good"], "max_new_tokens": 7})
        assert too_many.status_code == 413 and "limit of 6" in too_many.json()["error"]
        assert client.post("/predict", json={"texts": ["good"], "max_new_tokens": 0}).status_code == 422


def test_an_sft_run_is_served_and_generates_replies(sft_run):
    assert is_causal_lm_save(str(sft_run)) and writing_heads(str(sft_run)) == []
    with TestClient(load_app(sft_run, limits=LIMITS)) as client:
        assert list(client.get("/metadata").json()["heads"]) == ["lm"]
        response = client.post(
            "/predict", json={"texts": ["the film was good", "a very dull plot"], "max_new_tokens": 3}
        )
        assert response.status_code == 200
        replies = [p["lm"] for p in response.json()["predictions"]]
        assert len(replies) == 2 and all(isinstance(r, str) and len(r.split()) <= 3 for r in replies)
        long = client.post("/predict", json={"texts": [" ".join(["a"] * 99)], "max_new_tokens": 6})  # 199 chars
        assert long.status_code == 422 and "exceeds this model's context of 64 tokens" in long.json()["error"]


def test_export_of_a_text_writing_head_is_refused_with_the_reason(headline_save, tmp_path):
    from headkit.errors import ExportError
    from headkit.ship.export import export_onnx, export_transformers

    with pytest.raises(ExportError, match=r"write text with a decoding loop"):
        export_onnx(headline_save, tmp_path / "onnx")
    with pytest.raises(ExportError):
        export_transformers(headline_save, tmp_path / "hf", head="title")
