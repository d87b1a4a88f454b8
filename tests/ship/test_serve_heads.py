"""Heads as a service: head saves loaded onto the running backbone and unloaded through /admin,
checked against the backbone's fingerprint, without a restart and without failing a request."""

import asyncio
import concurrent.futures
import time

import pytest
import torch
from fastapi.testclient import TestClient

import headkit
import headkit.ship.serve.answer
from headkit.heads import config_from_dict
from headkit.ship.predict import predict_texts
from headkit.ship.serve import ServeAccess, load_app

ADMIN = "adm1n-key"
COLOUR = {"colour": {"type": "classification", "labels": ["red", "blue", "green"], "pooling": "mean"}}


def _on(backbone, heads: dict) -> headkit.MultiHeadModel:
    return headkit.MultiHeadModel(backbone, {n: config_from_dict(c) for n, c in heads.items()})


@pytest.fixture(scope="module")
def served_backbone(saved_multihead):
    return headkit.load(saved_multihead).backbone


@pytest.fixture(scope="module")
def heads_dir(served_backbone, tiny_text_model, tmp_path_factory):
    """Head saves beside the served model: one trained on its backbone, one trained on other
    weights of the same architecture, one whose name the served model already uses."""
    root = tmp_path_factory.mktemp("heads")
    torch.manual_seed(1)
    fits = _on(served_backbone, COLOUR)
    for p in fits.heads.parameters():
        torch.nn.init.normal_(p, std=0.5)
    headkit.save_heads(fits, root / "colour")
    headkit.save_heads(headkit.MultiHeadModel.from_pretrained(tiny_text_model, heads=COLOUR), root / "tuned")
    headkit.save_heads(_on(served_backbone, {"sentiment": COLOUR["colour"]}), root / "clash")
    return root


@pytest.fixture()
def admin(saved_multihead, heads_dir):
    access = ServeAccess(admin_key=ADMIN, heads_dir=heads_dir)
    with TestClient(load_app(saved_multihead, access=access), headers={"authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def test_a_loaded_head_answers_with_its_saved_weights_and_unloads(admin, heads_dir, served_backbone, tiny_text_model):
    response = admin.post("/admin/heads", json={"save": "colour"})
    assert response.status_code == 200, response.text
    assert response.json()["loaded"] == ["colour"] and "colour" in admin.get("/metadata").json()["heads"]
    assert set(response.json()["seconds"]) == {"read", "waited", "built"}
    texts = ["the film was good", "alice met bob in paris"]
    got = admin.post("/predict", json={"texts": texts, "heads": ["colour"]}).json()["predictions"]
    reference = headkit.load_heads(heads_dir / "colour", served_backbone)
    expected = predict_texts(reference, headkit.load_processor(tiny_text_model), texts)
    for g, e in zip(got, expected, strict=True):
        assert set(g) == {"colour"} and g["colour"]["label"] == e["colour"]["label"]
        assert g["colour"]["probs"] == pytest.approx(e["colour"]["probs"], abs=1e-5)
    assert set(admin.post("/predict", json={"texts": ["good"]}).json()["predictions"][0]) >= {"sentiment", "colour"}
    assert admin.delete("/admin/heads/colour").json()["unloaded"] == "colour"
    response = admin.post("/predict", json={"texts": ["good"], "heads": ["colour"]})
    assert response.status_code == 422 and "unknown head" in response.json()["error"]
    assert "colour" not in admin.get("/metadata").json()["heads"]


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"save": "tuned"}, 422, "weights"),  # the fingerprint check: other backbone weights
        ({"save": "clash"}, 409, "already has head(s) ['sentiment']"),
        ({"save": "colour", "heads": ["nope"]}, 422, "not ['nope']"),
        ({"save": "../heads"}, 422, "not a folder inside"),
        ({"save": "/etc"}, 422, "not a folder inside"),
        ({"save": "missing"}, 404, "no head save"),
        ({"path": "colour"}, 422, "save"),
    ],
    ids=["other-weights", "name-clash", "unknown-head", "parent", "absolute", "missing", "bad-body"],
)
def test_a_head_that_does_not_fit_is_refused_with_the_reason_and_nothing_changes(admin, body, status, message):
    before = admin.get("/metadata").json()["heads"]
    response = admin.post("/admin/heads", json=body)
    assert response.status_code == status and message in response.json()["error"], response.text
    assert admin.get("/metadata").json()["heads"] == before
    assert admin.post("/predict", json={"texts": ["good"]}).status_code == 200


def test_admin_routes_need_their_key_and_exist_only_with_one(saved_multihead, heads_dir, admin):
    assert admin.post("/admin/heads", json={"save": "colour"}, headers={"authorization": "Bearer x"}).status_code == 401
    with TestClient(load_app(saved_multihead, access=ServeAccess(heads_dir=heads_dir))) as c:
        assert c.post("/admin/heads", json={"save": "colour"}).status_code == 404
    with TestClient(load_app(saved_multihead, access=ServeAccess(admin_key=ADMIN))) as c:
        response = c.post("/admin/heads", json={"save": "colour"}, headers={"authorization": f"Bearer {ADMIN}"})
        assert response.status_code == 409 and "--heads_dir" in response.json()["error"]


def test_unloading_an_unknown_head_or_the_last_one_is_refused(admin):
    assert admin.delete("/admin/heads/nope").status_code == 404
    names = list(admin.get("/metadata").json()["heads"])
    for name in names[:-1]:
        assert admin.delete(f"/admin/heads/{name}").status_code == 200
    response = admin.delete(f"/admin/heads/{names[-1]}")
    assert response.status_code == 409 and "only head" in response.json()["error"]


def test_loading_and_unloading_under_load_fails_no_request(admin):
    def ask(i: int):
        return admin.post("/predict", json={"texts": [f"good film {i}", "bad"]})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(ask, i) for i in range(40)]
        assert admin.post("/admin/heads", json={"save": "colour"}).status_code == 200
        first = admin.post("/predict", json={"texts": ["good"], "heads": ["colour"]})  # at once
        assert admin.delete("/admin/heads/colour").status_code == 200
        answers = [p.result() for p in pending]
    assert first.status_code == 200 and set(first.json()["predictions"][0]) == {"colour"}
    assert [a.status_code for a in answers] == [200] * 40


def test_two_unloads_at_once_never_leave_the_server_without_heads(admin):
    import httpx

    names = list(admin.get("/metadata").json()["heads"])
    for name in names[:-2]:
        admin.delete(f"/admin/heads/{name}")
    app = admin.app

    async def both():
        transport = httpx.ASGITransport(app=app)
        auth = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://server", headers=auth) as c:
            return await asyncio.gather(*(c.delete(f"/admin/heads/{n}") for n in names[-2:]))

    codes = sorted(r.status_code for r in asyncio.run(both()))
    assert codes == [200, 409] and len(admin.get("/metadata").json()["heads"]) == 1


def test_heads_change_between_batches_and_a_request_for_an_unloaded_head_says_so(admin, monkeypatch):
    """The batch in progress finishes with its heads (the change waits for the lock); a request
    queued behind it for the head being unloaded gets a 409 naming it, never an empty answer."""
    events = []
    real_predict, real_remove = headkit.ship.serve.answer.predict_texts, admin.app.state.server.model.remove_head

    def slow_predict(*args, **kwargs):
        events.append("batch starts")
        time.sleep(0.6)
        events.append("batch ends")
        return real_predict(*args, **kwargs)

    def remove(name):
        events.append("head removed")
        real_remove(name)

    monkeypatch.setattr(headkit.ship.serve.answer, "predict_texts", slow_predict)
    monkeypatch.setattr(admin.app.state.server.model, "remove_head", remove)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(admin.post, "/predict", json={"texts": ["good"], "heads": ["sentiment", "topic"]})
        time.sleep(0.2)  # the first batch is running
        waiting = pool.submit(admin.post, "/predict", json={"texts": ["bad"], "heads": ["topic"]})
        time.sleep(0.1)
        unloaded = pool.submit(admin.delete, "/admin/heads/topic")
        answers = first.result(), waiting.result(), unloaded.result()
    assert answers[0].status_code == 200 and set(answers[0].json()["predictions"][0]) == {"sentiment", "topic"}
    assert answers[2].status_code == 200
    assert events[:3] == ["batch starts", "batch ends", "head removed"]
    assert answers[1].status_code == 409 and "['topic'] were unloaded" in answers[1].json()["error"]
