"""The server under faults and strangers: keys, 429 with Retry-After, bodies counted on the bytes read,
a worker that dies, metrics, per-request heads, images decoded off the event loop, and a drain on SIGTERM."""

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

import headkit.ship.serve.answer
import headkit.ship.serve.batcher
import headkit.ship.serve.requests
from headkit.ship.serve import Batcher, Overloaded, ServeAccess, ServeLimits, load_app

from conftest import SERVED_HEADS

KEY, ADMIN = "s3cret-api-key", "adm1n-key"


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# ----------------------------------------------------------------------------- access


@pytest.fixture(scope="module")
def keyed(saved_multihead):
    access = ServeAccess(api_key=KEY, admin_key=ADMIN)
    with TestClient(load_app(saved_multihead, access=access)) as c:
        yield c


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_need_no_key(keyed, path):
    assert keyed.get(path).status_code == 200


@pytest.mark.parametrize("headers", [{}, _auth("wrong"), {"authorization": KEY}, _auth(ADMIN)], ids=str)
@pytest.mark.parametrize("method,path", [("POST", "/predict"), ("GET", "/metadata"), ("GET", "/metrics")])
def test_every_other_route_needs_the_api_key(keyed, method, path, headers):
    response = keyed.request(method, path, json={"texts": ["good"]}, headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in response.json()["error"] and KEY not in response.text


def test_the_right_key_opens_the_api_and_is_never_echoed_or_logged(keyed, caplog):
    with caplog.at_level(logging.DEBUG):
        response = keyed.post("/predict", json={"texts": ["good"]}, headers=_auth(KEY))
        meta = keyed.get("/metadata", headers=_auth(KEY))
    assert response.status_code == 200 and set(response.json()["predictions"][0]) >= set(SERVED_HEADS)
    assert KEY not in meta.text and ADMIN not in meta.text
    assert KEY not in caplog.text
    assert KEY not in repr(keyed.app.state.server.access)


def test_the_api_key_does_not_open_the_admin_routes(keyed):
    response = keyed.delete("/admin/heads/topic", headers=_auth(KEY))
    assert response.status_code == 401 and "admin key" in response.json()["error"]


def test_keys_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("HEADKIT_API_KEY", "from-env")
    monkeypatch.setenv("HEADKIT_ADMIN_KEY", "")
    access = ServeAccess.from_options()
    assert access.api_key == "from-env" and access.admin_key is None
    assert ServeAccess.from_options(api_key="given").api_key == "given"


def test_cors_is_off_unless_an_origin_is_given(saved_multihead):
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    with TestClient(load_app(saved_multihead)) as c:
        assert "access-control-allow-origin" not in c.options("/predict", headers=preflight).headers
    access = ServeAccess(api_key=KEY, cors_origins=("https://app.example",))
    with TestClient(load_app(saved_multihead, access=access)) as c:
        response = c.options("/predict", headers=preflight)  # a preflight carries no key
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"


# ----------------------------------------------------------------------------- body limit


@pytest.fixture(scope="module")
def small_body(saved_multihead):
    with TestClient(load_app(saved_multihead, limits=ServeLimits(max_body_bytes=2_000))) as c:
        yield c


def _chunks(body: bytes, size: int = 500):
    yield from (body[i : i + size] for i in range(0, len(body), size))


def test_a_chunked_body_over_the_limit_is_refused_on_the_bytes_read(small_body):
    body = b'{"texts": ["' + b"good " * 1_000 + b'"]}'
    response = small_body.post("/predict", content=_chunks(body), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over 2,000 bytes" in response.json()["error"]
    small = b'{"texts": ["good film"]}'
    response = small_body.post("/predict", content=_chunks(small, 5), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text  # a chunked body under the limit reaches the route whole


# ----------------------------------------------------------------------------- overload


def test_a_full_queue_is_refused_at_once_with_retry_after():
    async def main():
        batcher = Batcher(lambda items, heads, options: [{"ok": True} for _ in items], 1, 0, max_queue=2)
        waiting = [asyncio.ensure_future(batcher.submit(["a"], None)) for _ in range(2)]
        await asyncio.sleep(0)  # both queued; the worker has not started
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(["b"], None)
        assert "2 requests are waiting" in str(refused.value) and refused.value.retry_after >= 1
        batcher.start()
        answers = await asyncio.gather(*waiting)
        await batcher.stop()
        return answers

    assert asyncio.run(main()) == [[{"ok": True}], [{"ok": True}]]


def test_work_that_cannot_finish_in_time_is_refused_by_the_measured_pace():
    async def main():
        def run_batch(items, heads, options):
            time.sleep(0.05 * len(items))  # 50 ms per text
            return [{} for _ in items]

        batcher = Batcher(run_batch, max_texts=4, wait_s=0, max_queue=100, timeout_s=1.0)
        batcher.start()
        await batcher.submit(["a", "b"], None)  # measures the pace: about 0.05 s a text
        assert batcher.seconds_per_text == pytest.approx(0.05, rel=0.5)
        batcher.admit(10)  # 0.5 s of work fits in 0.8 of the 1 s timeout
        with pytest.raises(Overloaded) as refused:
            batcher.admit(20)  # 1 s does not
        assert "texts are queued" in str(refused.value)
        await batcher.stop()

    asyncio.run(main())


def test_overload_through_the_app_is_a_429_with_retry_after(saved_multihead, monkeypatch):
    real = headkit.ship.serve.answer.predict_texts

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(headkit.ship.serve.answer, "predict_texts", slow)
    limits = ServeLimits(max_queue=1, max_batch_texts=1, timeout_s=20)
    with TestClient(load_app(saved_multihead, limits=limits)) as c:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: c.post("/predict", json={"texts": [f"good {i}"]}), range(8)))
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
        refused = next(a for a in answers if a.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1 and "busy" in refused.json()["error"]


# ----------------------------------------------------------------------------- worker faults


def test_a_worker_that_dies_answers_its_batch_with_503_at_once_and_is_restarted(saved_multihead, monkeypatch):
    monkeypatch.setattr(headkit.ship.serve.batcher, "RESTART_BACKOFF_S", (0.5, 0.5))
    with TestClient(load_app(saved_multihead)) as c:
        c.app.state.server.batcher.fail_next = True
        started = time.monotonic()
        response = c.post("/predict", json={"texts": ["good"]})
        assert response.status_code == 503 and "worker failed" in response.json()["error"]
        assert time.monotonic() - started < 5  # at once, not after the 30 s timeout
        health = c.get("/health")  # within the 0.5 s back-off: down, and it says why
        assert health.status_code == 503 and health.json()["worker"] == "restarting"
        assert "fault injected" in health.json()["last_failure"] and c.get("/ready").status_code == 503
        for _ in range(50):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert c.get("/health").json()["restarts"] == 1
        assert c.post("/predict", json={"texts": ["good"]}).status_code == 200


def test_a_failing_prediction_is_a_500_without_a_traceback_and_the_worker_lives(saved_multihead, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert")

    with TestClient(load_app(saved_multihead)) as c:
        monkeypatch.setattr(headkit.ship.serve.answer, "predict_texts", broken)
        response = c.post("/predict", json={"texts": ["good"]})
        assert response.status_code == 500 and "RuntimeError" in response.json()["error"]
        assert "Traceback" not in response.text and c.get("/health").json()["restarts"] == 0


# ----------------------------------------------------------------------------- metrics and heads


def test_metrics_count_requests_queue_batches_and_head_time(saved_multihead):
    with TestClient(load_app(saved_multihead)) as c:
        for _ in range(3):
            c.post("/predict", json={"texts": ["good", "bad film"], "heads": ["sentiment"]})
        c.post("/predict", json={"texts": []})
        text = c.get("/metrics").text
    assert 'http_requests_total{handler="/predict",method="POST",status="200"} 3.0' in text
    assert 'http_requests_total{handler="/predict",method="POST",status="422"} 1.0' in text
    assert 'http_request_duration_seconds_bucket{handler="/predict"' in text
    assert "headkit_batch_texts_count 3.0" in text and "headkit_batch_texts_sum 6.0" in text
    assert "headkit_queue_requests 0.0" in text and "headkit_worker_restarts 0.0" in text
    assert 'headkit_head_seconds_count{head="sentiment"} 6.0' in text  # forward and decode in 3 passes
    assert 'headkit_head_seconds_count{head="tags"} 0.0' in text  # not asked for: never run


def test_a_request_computes_only_the_heads_it_names(saved_multihead):
    with TestClient(load_app(saved_multihead)) as c:
        heads = c.app.state.server.model.heads
        calls = []
        hooks = [h.register_forward_pre_hook(lambda m, a, n=n: calls.append(n)) for n, h in heads.items()]
        try:
            response = c.post("/predict", json={"texts": ["good"], "heads": ["tags"]})
        finally:
            for hook in hooks:
                hook.remove()
    assert response.status_code == 200 and set(response.json()["predictions"][0]) == {"tags"}
    assert calls == ["tags"]


def test_images_are_decoded_off_the_event_loop(monkeypatch):
    seen = []

    def decode(items):
        try:
            asyncio.get_running_loop()
            seen.append("on the loop")
        except RuntimeError:
            seen.append("on a thread")
        return [], "stop here"

    monkeypatch.setattr(headkit.ship.serve.requests, "decode_images", decode)
    request = headkit.ship.serve.requests.PredictRequest(images=["aGk="])
    answer = asyncio.run(headkit.ship.serve.requests.read_items(request, ServeLimits(), True, ["h"], chat=False))
    assert answer.status_code == 422 and seen == ["on a thread"]


# ----------------------------------------------------------------------------- drain on SIGTERM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_answers_accepted_requests_refuses_new_ones_then_exits(saved_multihead):
    port, url = _free_port(), None
    env = {**os.environ, "HEADKIT_SERVE_FAULTS": "1"}
    command = [sys.executable, "-m", "headkit", "serve", str(saved_multihead), "--port", str(port), "--engine", "torch"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        httpx.post(f"{url}/debug/faults", json={"delay_s": 2.0}, timeout=5)  # the next batch takes 2 s
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(httpx.post, f"{url}/predict", json={"texts": [f"good {i}"]}, timeout=30)
                       for i in range(3)]  # fmt: skip
            time.sleep(0.7)  # accepted, and waiting on the slow batch
            server.send_signal(signal.SIGTERM)
            answers = [p.result() for p in pending]
        assert [a.status_code for a in answers] == [200, 200, 200]
        _, stderr = server.communicate(timeout=60)
        assert "draining" in stderr
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{url}/predict", json={"texts": ["late"]}, timeout=2)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
