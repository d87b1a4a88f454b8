"""The server under faults and strangers: keys, 429 with Retry-After, bodies counted on the bytes read,
a worker that dies, metrics, per-request heads, images decoded off the event loop, and a drain on SIGTERM."""

import asyncio
import base64
import concurrent.futures
import io
import os
import pickle
import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from served import start_server, stop, wait_until_ready

import headkit.ship.serve.answer
import headkit.ship.serve.batcher
import headkit.ship.serve.requests
from headkit.errors import DataError
from headkit.ship.serve import Batcher, Overloaded, ServeAccess, ServeLimits, WorkerFailure, load_app
from headkit.ship.serve.batcher import BatchFailure

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


def test_the_right_key_opens_the_api_and_is_never_echoed(keyed):
    response = keyed.post("/predict", json={"texts": ["good"]}, headers=_auth(KEY))
    meta = keyed.get("/metadata", headers=_auth(KEY))
    assert response.status_code == 200 and set(response.json()["predictions"][0]) >= set(SERVED_HEADS)
    assert KEY not in meta.text and ADMIN not in meta.text
    assert KEY not in repr(keyed.app.state.server.access)


def test_keys_hold_under_a_path_prefix(saved_multihead):
    """Mounted under /v1 (or behind --root-path, or a Ray Serve route prefix) the raw path carries
    the prefix: /v1/admin/... still needs the admin key, /v1/health still needs none."""
    from fastapi import FastAPI

    outer = FastAPI()
    outer.mount("/v1", load_app(saved_multihead, access=ServeAccess(admin_key=ADMIN)))
    with TestClient(outer) as c:
        for headers in ({}, _auth(KEY)):
            assert c.delete("/v1/admin/heads/topic", headers=headers).status_code == 401
        assert c.get("/v1/health").status_code != 401
        assert c.delete("/v1/admin/heads/topic", headers=_auth(ADMIN)).status_code == 200


def test_a_made_up_method_is_a_501_and_never_a_metric(keyed):
    response = keyed.request("X0", "/predict", headers=_auth(KEY))
    assert response.status_code == 501
    assert 'method="X0"' not in keyed.get("/metrics", headers=_auth(KEY)).text


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


def _stopped_batcher(pace: float | None = None, **options) -> Batcher:
    """A batcher whose worker has not started: what is submitted stays queued."""
    batcher = Batcher(lambda items, heads, options: [{"ok": True} for _ in items], 1, 0, **options)
    batcher.seconds_per_text = pace
    return batcher


def test_a_full_queue_is_refused_at_once_with_retry_after():
    async def main():
        batcher = _stopped_batcher(pace=0.5, max_queue=2)
        waiting = [asyncio.ensure_future(batcher.submit(["a", "b"], None)) for _ in range(2)]
        await asyncio.sleep(0)  # both queued
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(["c"], None)
        assert "2 requests are waiting" in str(refused.value)
        assert refused.value.retry_after == 2  # 4 texts queued at 0.5 s a text
        batcher.start()
        answers = await asyncio.gather(*waiting)
        await batcher.stop()
        return answers

    assert asyncio.run(main()) == [[{"ok": True}] * 2] * 2


def test_work_queued_ahead_that_cannot_finish_in_time_is_refused_by_the_measured_pace():
    async def main():
        batcher = _stopped_batcher(pace=0.1, timeout_s=2.0)  # half the timeout, 1 s, may be waited
        batcher.admit(64)  # an idle server takes any request, however slow its last batch was
        first = asyncio.ensure_future(batcher.submit(["a"] * 6, None))
        await asyncio.sleep(0)
        batcher.admit(3)  # 6 texts ahead and its own 3 at 0.1 s: 0.9 s
        with pytest.raises(Overloaded):
            batcher.admit(5)  # 1.1 s
        second = asyncio.ensure_future(batcher.submit(["b"] * 2, None))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            batcher.admit(3)
        assert "8 texts are queued ahead" in str(refused.value)
        second.cancel()  # a request that gives up is no longer work ahead
        await asyncio.sleep(0)
        assert batcher.waiting == 1 and batcher.queued_texts == 6
        batcher.admit(3)
        batcher.last_pace = 0.2  # the last batch was slower than the smoothed pace: that counts
        with pytest.raises(Overloaded):
            batcher.admit(1)
        batcher.last_pace, batcher.busy_since = 0.0, time.monotonic() - 1.5  # a batch that overruns
        with pytest.raises(Overloaded, match=r"has run 1\.5 s"):
            batcher.admit(1)
        first.cancel()
        await batcher.stop()

    asyncio.run(main())


def test_an_input_error_in_a_shared_pass_reaches_only_its_request():
    calls = []

    def run_batch(items, heads, options):
        calls.append(list(items))
        if "too long" in items:
            raise DataError("a prompt is too long for the model's context")
        return [{"echo": item} for item in items]

    async def main():
        batcher = Batcher(run_batch, max_texts=64, wait_s=0)
        jobs = [asyncio.ensure_future(batcher.submit([text], None)) for text in ("good", "too long", "fine")]
        await asyncio.sleep(0)  # all three queued: the worker gathers them into one pass
        batcher.start()
        answers = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return answers, batcher.failing

    answers, failing = asyncio.run(main())
    assert answers[0] == [{"echo": "good"}] and answers[2] == [{"echo": "fine"}]
    assert calls == [["good", "too long", "fine"], ["good"], ["too long", "fine"], ["too long"], ["fine"]]
    assert isinstance(answers[1], DataError) and failing == 0  # the request's fault, not the server's


def test_a_call_that_answers_fewer_items_than_it_was_given_is_a_failure():
    async def main():
        batcher = Batcher(lambda items, heads, options: [{"h": 1}], max_texts=64, wait_s=0)
        batcher.start()
        try:
            with pytest.raises(BatchFailure, match="1 answers for 2 items"):
                await batcher.submit(["a", "b"], ["h"])
        finally:
            await batcher.stop()

    asyncio.run(main())


def test_stopping_fails_every_request_still_queued():
    async def main():
        batcher = _stopped_batcher()
        waiting = asyncio.ensure_future(batcher.submit(["a"], None))
        await asyncio.sleep(0)
        await batcher.stop()
        with pytest.raises(WorkerFailure, match="stopped"):
            await waiting

    asyncio.run(main())


def test_a_full_server_sheds_requests_before_reading_their_bodies(small_body):
    batcher = small_body.app.state.server.batcher
    batcher.waiting = batcher.max_queue  # as if the queue were full
    try:
        response = small_body.post("/predict", content=b'{"texts": [', headers={"content-type": "application/json"})
    finally:
        batcher.waiting = 0
    assert response.status_code == 429 and "requests are waiting" in response.json()["error"]  # not the JSON's 422
    assert int(response.headers["retry-after"]) >= 1
    assert small_body.get("/health").status_code == 200


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


def test_a_failing_prediction_is_a_500_and_failing_ones_make_the_server_unhealthy(saved_multihead, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert")

    with TestClient(load_app(saved_multihead)) as c:
        monkeypatch.setattr(headkit.ship.serve.answer, "predict_texts", broken)
        response = c.post("/predict", json={"texts": ["good"]})
        assert response.status_code == 500 and "the server log has the details under" in response.json()["error"]
        assert "CUDA" not in response.text and c.get("/health").status_code == 200  # one failure: alive
        for _ in range(2):
            c.post("/predict", json={"texts": ["good"]})
        health = c.get("/health")  # three in a row: a broken device, which a restart of the pod may mend
        assert health.status_code == 503 and "the last 3 prediction calls raised" in health.json()["worker"]
        monkeypatch.undo()
        assert c.post("/predict", json={"texts": ["good"]}).status_code == 200
        assert c.get("/health").status_code == 200


def test_an_app_runs_again_after_its_shutdown_and_leaves_the_model_as_given(saved_multihead):
    app = load_app(saved_multihead)
    for _ in range(2):  # a second lifespan: the queue and lock belong to its event loop
        with TestClient(app) as c:
            assert c.post("/predict", json={"texts": ["good"]}).status_code == 200
            head = app.state.server.model.heads["sentiment"]
            assert "forward" in head.__dict__  # timed while serving
        assert "forward" not in head.__dict__ and "decode" not in head.__dict__
        pickle.dumps(head)


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
    assert "headkit_queue_requests 0.0" in text and "headkit_worker_restarts_total 0.0" in text
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


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_over_the_pixel_limit_are_refused_from_their_headers():
    decode = headkit.ship.serve.requests.decode_images
    whole = _png(100, 60)
    header_only = whole[: whole.index(b"IDAT") + 8]  # its pixel data cut off: decoding it would fail
    for data in (whole, header_only):  # refused before the pixels are read: the header is enough
        images, problem = decode([base64.b64encode(data).decode()], max_pixels=5_000)
        assert images == [] and problem.startswith("images[0] is 100x60 pixels, 6,000"), problem
    cut = decode([base64.b64encode(header_only).decode()], max_pixels=10**6)[1]
    assert "not a base64-encoded image" in cut  # had its pixels been read first, that is what it would say
    two = [base64.b64encode(whole).decode()] * 2  # the limit is on the request's pixels in all
    assert len(decode(two, max_pixels=12_000)[0]) == 2
    assert decode(two, max_pixels=11_999)[1].startswith("images[1] is 100x60 pixels, 12,000 with the images")


def test_only_plain_image_formats_are_opened():
    portable_pixmap = b"P6\n1 1\n255\n\x00\x00\x00"  # Pillow decodes it by itself; not on the list, so refused
    images, problem = headkit.ship.serve.requests.decode_images([base64.b64encode(portable_pixmap).decode()])
    assert images == [] and "is not a base64-encoded image file" in problem


def test_images_are_decoded_off_the_event_loop(monkeypatch):
    seen = []

    def decode(items):
        try:
            asyncio.get_running_loop()
            seen.append("on the loop")
        except RuntimeError:
            seen.append(threading.current_thread().name.split("_")[0])
        return [], "stop here"

    monkeypatch.setattr(headkit.ship.serve.requests, "decode_images", decode)
    request = headkit.ship.serve.requests.PredictRequest(images=["aGk="])
    answer = asyncio.run(headkit.ship.serve.requests.read_items(request, ServeLimits(), True, ["h"], chat=False))
    assert answer.status_code == 422 and seen == ["decode"]  # on the decoding threads, not the loop's default ones


# ----------------------------------------------------------------------------- drain on SIGTERM


def test_sigterm_drains_ready_turns_503_requests_accepted_are_answered_then_exit(saved_multihead):
    env = {**os.environ, "HEADKIT_SERVE_FAULTS": "1"}
    server, url = start_server(saved_multihead, "--engine", "torch", "--drain_s", "1.5", env=env)
    try:
        wait_until_ready(server, url)
        httpx.post(f"{url}/debug/faults", json={"delay_s": 2.0}, timeout=5)  # the next batch takes 2 s
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # one thread free for the late request
            pending = [pool.submit(httpx.post, f"{url}/predict", json={"texts": [f"good {i}"]}, timeout=30)
                       for i in range(3)]  # fmt: skip
            time.sleep(0.5)  # accepted, and waiting on the slow batch
            server.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            ready = httpx.get(f"{url}/ready", timeout=5)  # within the drain delay: still answering
            assert ready.status_code == 503 and ready.json() == {"status": "draining"}
            late = pool.submit(httpx.post, f"{url}/predict", json={"texts": ["during the delay"]}, timeout=30)
            answers = [p.result() for p in [*pending, late]]
        assert [a.status_code for a in answers] == [200, 200, 200, 200]
        _, stderr = server.communicate(timeout=60)
        assert "draining" in stderr
        with pytest.raises(httpx.TransportError):  # after the delay: connections are refused
            httpx.post(f"{url}/predict", json={"texts": ["late"]}, timeout=2)
    finally:
        stop(server)
