"""Serve a saved model over HTTP and ask every head in one request.

Trains a small two-head model (sentiment + topic on a frozen MiniLM), saves it with
`save_pretrained`, and builds headkit's FastAPI app for the saved folder with
`headkit.ship.serve.load_app` (what `headkit serve DIR` runs under uvicorn). FastAPI's
`TestClient` calls it in-process, so nothing listens on a port: `GET /metadata` lists the heads and
their labels, one `POST /predict` returns every head's answer for each text (one backbone pass per
batch), `"heads": [...]` narrows it, and a bad request gets a 4xx with an `error` that says what to
change.

Run: python examples/serving.py   (about 20 s on a shared 2-core CPU; examples/README.md)

For CI the model is trained on 400 rows for 10 epochs at 64 tokens. A real deployment serves a
real run (`headkit serve runs/demo --port 8000`, or `uvicorn` over `load_app(...)`) and calls it
with any HTTP client: `curl -s localhost:8000/predict -H 'content-type: application/json' -d
'{"texts": ["The striker scored twice."]}'`.
"""

import json
import tempfile

from fastapi.testclient import TestClient

import headkit
from headkit.ship.serve import load_app

data = headkit.builtin_dataset("reviews_and_news")
result = headkit.train(
    "minilm",
    {"sentiment": "sentiment", "topic": "topic"},
    train_dataset=data["train"].shuffle(seed=0).select(range(400)),
    eval_dataset=data["test"].select(range(100)),
    strategy="frozen",
    epochs=10,
    max_length=64,
    progress=False,
)

with tempfile.TemporaryDirectory() as directory:
    result.model.save_pretrained(directory)
    app = load_app(directory)  # loads the saved model once, in eval mode with gradients off
    with TestClient(app) as client:  # `with`: starts the app's batching worker
        heads = client.get("/metadata").json()["heads"]
        print("heads served:", {name: head["labels"] for name, head in heads.items()})

        texts = ["The striker scored twice as United won the cup final.", "A dull, lifeless film."]
        response = client.post("/predict", json={"texts": texts})
        response.raise_for_status()
        for text, prediction in zip(texts, response.json()["predictions"], strict=True):  # head -> {"label", "probs"}
            print(text, "->", {head: f"{p['label']} ({p['probs'][p['label']]:.2f})" for head, p in prediction.items()})

        only = client.post("/predict", json={"texts": texts[:1], "heads": ["topic"]}).json()
        print("topic only:", json.dumps(only["predictions"][0]["topic"]["label"]))

        bad = client.post("/predict", json={"texts": texts, "heads": ["colour"]})
        print(f"unknown head -> {bad.status_code}: {bad.json()['error']}")
