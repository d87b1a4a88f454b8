"""The HTTP server through FastAPI's TestClient: every endpoint and every bad request."""

import asyncio
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from served import start_server, stop, wait_until_ready

import headkit.ship.serve.answer
from headkit.ship.predict import load_for_inference, predict_texts
from headkit.ship.serve import Batcher, ServeLimits, load_app

from conftest import SERVED_HEADS

LIMITS = ServeLimits(max_texts=4, max_chars=200, max_body_bytes=10_000, timeout_s=10)


@pytest.fixture(scope="module")
def client(saved_multihead):
    with TestClient(load_app(saved_multihead, limits=LIMITS)) as c:
        yield c


def test_health_metadata_and_schema(client, saved_multihead):
    assert client.get("/health").json() == {"status": "ok", "worker": "running", "restarts": 0, "last_failure": None}
    assert client.get("/ready").json() == {"status": "ready"}
    meta = client.get("/metadata").json()
    assert list(meta["heads"]) == list(SERVED_HEADS)
    assert meta["heads"]["sentiment"] == {"type": "classification", "labels": ["neg", "pos"], "pooling": "pooler"}
    assert meta["backbone"]["model_type"] == "bert" and len(meta["backbone"]["structure_sha256"]) == 64
    assert meta["limits"]["max_texts"] == 4 and meta["engine"] == "torch"
    schema = client.get("/openapi.json").json()
    assert "/predict" in schema["paths"] and "PredictRequest" in schema["components"]["schemas"]


def test_predict_answers_every_head_like_the_library(client, saved_multihead):
    texts = ["the film was good", "alice visited paris"]
    response = client.post("/predict", json={"texts": texts})
    assert response.status_code == 200
    got = response.json()["predictions"]
    model, tokenizer = load_for_inference(saved_multihead)
    expected = predict_texts(model, tokenizer, texts)
    assert [set(p) for p in got] == [set(SERVED_HEADS)] * 2
    for g, e in zip(got, expected, strict=True):
        assert g["sentiment"]["label"] == e["sentiment"]["label"]
        assert g["sentiment"]["probs"]["pos"] == pytest.approx(e["sentiment"]["probs"]["pos"], abs=1e-5)
        assert g["tags"] == e["tags"]


def test_predict_selected_heads_only(client):
    response = client.post("/predict", json={"texts": ["good"], "heads": ["sentiment", "tags"]})
    assert response.status_code == 200
    assert set(response.json()["predictions"][0]) == {"sentiment", "tags"}


def test_path_like_text_is_predicted_as_text_never_read(client, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the film was good " * 50)
    response = client.post("/predict", json={"texts": [str(secret)], "heads": ["tags"]})
    assert response.status_code == 200
    words = [w["word"] for w in response.json()["predictions"][0]["tags"]]
    assert "film" not in words  # the path's own characters were tokenised, not the file's contents


BAD_REQUESTS = [
    ("empty list", {"json": {"texts": []}}, 422, "at least 1"),
    ("non-string item", {"json": {"texts": ["ok", 3]}}, 422, "texts.1"),
    ("null item", {"json": {"texts": [None]}}, 422, "texts.0"),
    ("texts not a list", {"json": {"texts": "just one"}}, 422, "list"),
    ("missing texts", {"json": {"heads": ["sentiment"]}}, 422, "texts"),
    ("unknown field", {"json": {"texts": ["ok"], "temperature": 1}}, 422, "temperature"),
    ("unknown head", {"json": {"texts": ["ok"], "heads": ["sentiment", "nope"]}}, 422, "unknown head(s) ['nope']"),
    ("malformed JSON", {"content": b'{"texts": ["ok"', "headers": {"content-type": "application/json"}}, 422, "JSON"),
    ("text over the limit", {"json": {"texts": ["ok", "x" * 201]}}, 413, "texts[1] has 201 characters"),
    ("too many texts", {"json": {"texts": ["ok"] * 5}}, 413, "5 texts"),
    ("body too large", {"json": {"texts": ["y" * 20_000]}}, 413, "bytes"),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_a_clear_4xx_and_the_server_lives_on(client, case, request_kwargs, status, message):
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "Traceback" not in response.text
    assert client.get("/health").status_code == 200


def test_a_request_that_waits_too_long_gets_504(saved_multihead, monkeypatch):
    def slow(*args, **kwargs):
        time.sleep(1.0)
        return [{} for _ in args[2]]

    monkeypatch.setattr(headkit.ship.serve.answer, "predict_texts", slow)
    limits = ServeLimits(timeout_s=0.2)
    with TestClient(load_app(saved_multihead, limits=limits)) as c:
        response = c.post("/predict", json={"texts": ["good"]})
        assert response.status_code == 504 and "longer than 0.2 s" in response.json()["error"]
        assert c.get("/health").status_code == 200


def test_concurrent_requests_share_forward_passes():
    calls = []

    def run_batch(texts, heads, options):
        calls.append(list(texts))
        time.sleep(0.05)
        return [{"echo": t} for t in texts]

    async def main():
        batcher = Batcher(run_batch, max_texts=64, wait_s=0.01)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([f"t{i}", f"u{i}"], None) for i in range(10)))
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert results == [[{"echo": f"t{i}"}, {"echo": f"u{i}"}] for i in range(10)]  # each gets its own, in order
    assert len(calls) < 10 and sum(len(c) for c in calls) == 20


def test_requests_for_different_generation_lengths_never_share_a_pass():
    calls = []

    def run_batch(texts, heads, options):
        calls.append((options, list(texts)))
        return [{"n": options} for _ in texts]

    async def main():
        batcher = Batcher(run_batch, max_texts=64, wait_s=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([f"t{i}"], None, 8 if i % 2 else 16) for i in range(6)))
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [r[0]["n"] for r in results] == [16, 8, 16, 8, 16, 8]
    assert all(len({o for o, _ in calls if o == options}) == 1 for options, _ in calls)
    assert len(calls) == 2  # one pass for each length


def test_headkit_serve_command_answers_on_loopback(saved_multihead):
    server, url = start_server(saved_multihead)
    try:
        wait_until_ready(server, url)
        response = httpx.post(f"{url}/predict", json={"texts": ["good", "bad"]}, timeout=30)
        assert response.status_code == 200 and len(response.json()["predictions"]) == 2
    finally:
        stop(server)


def test_a_gathered_batch_runs_in_passes_of_the_servers_count_and_token_limits(saved_multihead):
    """The worker's texts go to predict_texts whole; it cuts them by length into passes of at most
    `forward_batch` texts and `max_tokens` padded tokens, and each text's answers are its own."""
    from headkit.ship.serve import answerer

    model, tokenizer = load_for_inference(saved_multihead)
    shapes = []
    hook = model.backbone.register_forward_pre_hook(
        lambda _module, _args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    texts = ["good", "the plot was dull and the acting boring", "bad", "superb film", "alice met bob", "a film"]
    try:
        got = answerer(model, tokenizer, list(SERVED_HEADS), ServeLimits(forward_batch=3, max_tokens=16))(
            texts, None, 8
        )
    finally:
        hook.remove()
    assert len(shapes) > 2 and all(n <= 3 and (n * length <= 16 or n == 1) for n, length in shapes)
    assert max(n for n, _ in shapes) > 1
    for text, g, e in zip(texts, got, predict_texts(model, tokenizer, texts, max_tokens=None), strict=True):
        assert g["sentiment"]["label"] == e["sentiment"]["label"] and g["tags"] == e["tags"], text
        assert g["sentiment"]["probs"]["pos"] == pytest.approx(e["sentiment"]["probs"]["pos"], abs=1e-5), text
