"""HTTP server over a saved model: every head from one backbone pass, concurrent requests batched.

    POST /predict   {"texts": [...], "heads": [...]?} -> {"predictions": [{head: output, ...}, ...]}
                    (only the heads named are computed; sentence pairs: "text_pairs": [...] beside
                    "texts", one second text each; a question-answering model: the questions in
                    "texts", their contexts in "text_pairs"; an image model takes {"images":
                    ["<base64 PNG/JPEG bytes>", ...]} instead; heads that write text, and sft / clm
                    runs, take "max_new_tokens": n <= the limit)
    GET  /health    liveness: the worker runs (503 while it is restarted or stalled)
    GET  /ready     readiness: taking requests (503 while draining on shutdown)
    GET  /metadata  heads, labels, backbone fingerprint, engine and limits
    GET  /metrics   Prometheus: requests by route and code, latency, queue depth, batch sizes, head time
    POST /admin/heads, DELETE /admin/heads/NAME   load a head save from the heads folder onto the
                    running backbone, unload a head (the routes exist only with an admin key)
    GET  /docs, /openapi.json   FastAPI's schema

Requests go to a bounded queue; one worker predicts everything waiting in one call
(batcher.py). Bad requests get a 4xx with an `error` that says what to change; work the server
cannot finish in time gets a 429 with Retry-After at once; a request that waits longer than
`timeout_s` gets a 504; a worker that dies answers its requests with a 503 and is restarted. With
an API key every route but the probes needs it (guards.py; with a key, /docs cannot fetch the
schema from a browser: read /openapi.json with the key instead). The model is loaded once, in eval mode
with gradients off, and nothing in a prediction request is ever read as a path.

Layout: config.py (limits, access), requests.py (the request body and its checks), batcher.py,
answer.py (what the worker calls), guards.py (key, body size), metrics.py, hotload.py (admin
heads), app.py (routes), server.py (loading a model, uvicorn with a drain), ray_serve.py (replicas).
"""

from headkit.extras import require

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    require("serve", "headkit serve")  # names the pip command when the extra is missing
    raise

from headkit.ship.serve.answer import answerer, generates
from headkit.ship.serve.app import create_app
from headkit.ship.serve.batcher import Batcher, Overloaded, WorkerFailure
from headkit.ship.serve.config import ServeAccess, ServeLimits
from headkit.ship.serve.requests import decode_images
from headkit.ship.serve.server import load_app, run_server

__all__ = [
    "Batcher",
    "Overloaded",
    "ServeAccess",
    "ServeLimits",
    "WorkerFailure",
    "answerer",
    "create_app",
    "decode_images",
    "generates",
    "load_app",
    "run_server",
]
