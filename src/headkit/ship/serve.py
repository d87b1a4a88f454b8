"""HTTP server over a saved model: every head from one backbone pass, concurrent requests batched.

    POST /predict   {"texts": [...], "heads": [...]?} -> {"predictions": [{head: output, ...}, ...]}
                    (sentence pairs: "text_pairs": [...] beside "texts", one second text each; a
                    question-answering model: the questions in "texts", their contexts in "text_pairs")
                    (an image model takes {"images": ["<base64 PNG/JPEG bytes>", ...]} instead;
                    heads that write text, and sft / clm runs, take "max_new_tokens": n <= the limit)
    GET  /health    liveness
    GET  /metadata  heads, labels, backbone fingerprint, engine and limits
    GET  /docs, /openapi.json   FastAPI's schema

Requests go to a queue; one worker takes everything waiting (up to `max_batch_texts`, waiting at
most `batch_wait_ms` for more) and predicts it in one pass, so concurrent clients share forward
passes instead of contending for the CPU/GPU. Bad requests get a 4xx with an `error` that says
what to change; a request that waits longer than `timeout_s` gets a 504. The model is loaded once,
in eval mode with gradients off, and nothing in a request is ever read as a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from headkit.extras import require

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator
except ImportError:
    require("serve", "headkit serve")  # names the pip command when the extra is missing
    raise

from headkit.data import MAX_TOKENS
from headkit.data.images import is_image_processor
from headkit.errors import DataError
from headkit.ship.predict import predict_images, predict_texts


@dataclass
class ServeLimits:
    """What one request may ask for, and how the server batches."""

    max_texts: int = 64  # texts per request (more: 413)
    max_chars: int = 20_000  # characters per text (more: 413); longer token sequences are truncated
    max_body_bytes: int = 2_000_000  # request body size (more: 413)
    timeout_s: float = 30.0  # a request waiting longer gets a 504
    max_batch_texts: int = 128  # texts gathered from queued requests into one prediction call
    batch_wait_ms: float = 2.0  # how long the worker waits for more requests to fill a batch
    forward_batch: int = 16  # at most this many texts per forward pass within a gathered batch, grouped by length
    max_tokens: int | None = MAX_TOKENS  # at most this many padded tokens (texts x longest length) per pass
    max_new_tokens: int = 64  # the most tokens a generated text may have (a request may ask for fewer)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = Field(default=None, min_length=1, description="texts, for a text model")
    text_pairs: list[StrictStr] | None = Field(
        default=None,
        min_length=1,
        description="the second text of each pair, one per text (sentence pairs; a question-answering model: the "
        "contexts of the questions in texts)",
    )
    images: list[StrictStr] | None = Field(
        default=None, min_length=1, description="base64-encoded image files, for an image model (never paths)"
    )
    heads: list[StrictStr] | None = Field(default=None, description="heads to answer (default: all)")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="generated texts: at most this many tokens (default: the server's limit)"
    )

    @model_validator(mode="after")
    def one_kind_of_input(self) -> PredictRequest:
        if (self.texts is None) == (self.images is None):
            raise ValueError('give exactly one of "texts" or "images"')
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts or []):
            raise ValueError('"text_pairs" holds one second text for each of "texts"')
        return self


def decode_images(items: list[str]) -> tuple[list, str | None]:
    """PIL images from base64 strings, or an error naming the first bad item. Nothing is read
    from disk: a path (or any text that is not base64 image bytes) is refused."""
    import base64
    import binascii
    import io

    from PIL import Image, UnidentifiedImageError

    images = []
    for i, item in enumerate(items):
        try:
            data = base64.b64decode(item, validate=True)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                images.append(image.convert("RGB"))
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
            return [], f"images[{i}] is not a base64-encoded image file (paths and URLs are never read)"
    return images, None


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]]


def _text_refusal(request: PredictRequest, limits: ServeLimits, chat: bool) -> JSONResponse | None:
    """The answer to a text request over the character limit, or with pairs a chat model cannot read."""
    for field, values in (("texts", request.texts or []), ("text_pairs", request.text_pairs or [])):
        too_long = next((i for i, t in enumerate(values) if len(t) > limits.max_chars), None)
        if too_long is not None:
            chars = len(values[too_long])
            return _error(413, f"{field}[{too_long}] has {chars:,} characters; the limit is {limits.max_chars:,}")
    if request.text_pairs is not None and chat:
        return _error(422, '"text_pairs" are read by a model of heads on text, not by a chat model')
    return None


def _texts_of(request: PredictRequest) -> list[Any]:
    """A text request's items: its texts, or (text, text_pair) tuples."""
    texts = request.texts or []
    return texts if request.text_pairs is None else list(zip(texts, request.text_pairs, strict=True))


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **extra})


class Batcher:
    """One worker that turns queued requests into shared forward passes."""

    def __init__(self, run_batch, max_texts: int, wait_s: float):
        self.run_batch, self.max_texts, self.wait_s = run_batch, max_texts, wait_s
        self.queue: asyncio.Queue = asyncio.Queue()

    async def submit(self, texts: list[Any], heads: list[str] | None, options: int = 0) -> list[dict[str, Any]]:
        """Queue texts (or (text, text_pair) tuples); requests share a pass when their `options` (the
        generation length) are equal and both hold pairs or both single texts."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, heads, (options, isinstance(texts[0], tuple)), future))
        return await future

    async def work(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0][0])
            deadline = asyncio.get_running_loop().time() + self.wait_s
            while size < self.max_texts:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout) if timeout > 0 else self.queue.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):  # not the builtin on 3.10
                    break
                jobs.append(job)
                size += len(job[0])
            jobs = [j for j in jobs if not j[3].done()]  # timed-out requests are not computed
            for key in sorted({j[2] for j in jobs}):  # one pass per generation length, pairs apart
                await self._run([j for j in jobs if j[2] == key], key[0])

    async def _run(self, jobs: list, options: int) -> None:
        texts = [t for job in jobs for t in job[0]]
        wanted = None if any(job[1] is None for job in jobs) else sorted({h for job in jobs for h in job[1]})
        try:
            results = await asyncio.to_thread(self.run_batch, texts, wanted, options)
        except Exception as e:  # reported to every waiting request; the worker lives on
            for *_, future in jobs:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for job_texts, heads, _, future in jobs:
            part = results[start : start + len(job_texts)]
            start += len(job_texts)
            if heads is not None:
                part = [{k: v for k, v in r.items() if k in heads or k == "truncated"} for r in part]
            if not future.done():
                future.set_result(part)


def answerer(model, processor, head_names: list[str], limits: ServeLimits):
    """The function the batcher calls: (items, wanted heads, max_new_tokens) -> one dict per item."""
    heads = getattr(model, "heads", None)

    def run_batch(items: list, wanted: list[str] | None, max_new_tokens: int) -> list[dict[str, Any]]:
        if is_image_processor(processor):
            return predict_images(model, processor, items, batch_size=limits.forward_batch)
        if heads is None:  # a causal LM: its one head's answer is a generated reply
            from headkit.ship.generate import generate_replies

            replies = []
            for start in range(0, len(items), limits.forward_batch):
                chunk = items[start : start + limits.forward_batch]
                replies += generate_replies(model, processor, chunk, max_new_tokens)
            return [{head_names[0]: reply} for reply in replies]
        for head in heads.values():
            head.set_generation(max_new_tokens=max_new_tokens)  # text-writing heads; the rest ignore it
        return predict_texts(
            model, processor, items, batch_size=limits.forward_batch, heads=wanted, max_tokens=limits.max_tokens
        )

    return run_batch


def generates(model) -> bool:
    """Whether the model's answers include generated text (requests then keep apart by length)."""
    heads = getattr(model, "heads", None)
    return heads is None or any(h.view.writes_text for h in heads.values())


def create_app(model, processor, metadata: dict[str, Any], limits: ServeLimits | None = None) -> FastAPI:
    """The FastAPI app for a loaded model (a `MultiHeadModel`, an `OnnxModel`, or a transformers
    causal LM for sft / clm runs, whose one head answers by generating) and its processor."""
    limits = limits or ServeLimits()
    if isinstance(model, torch.nn.Module):
        model.eval().requires_grad_(False)  # read-only: nothing in serving can change a weight
    head_names = list(metadata["heads"])
    reads_images = is_image_processor(processor)
    writes = generates(model)
    batcher = Batcher(
        answerer(model, processor, head_names, limits), limits.max_batch_texts, limits.batch_wait_ms / 1000
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.work())
        yield
        worker.cancel()

    app = FastAPI(title="headkit", description="Every head of one model, from one backbone pass.", lifespan=lifespan)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            return _error(413, f"request body is {int(size):,} bytes; the limit is {limits.max_body_bytes:,}")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            if err.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            else:
                problems.append(f"{where or 'body'}: {err.get('msg')}")
        message = "; ".join(problems) + '. Expected {"texts": ["a text", ...], "heads": ["name", ...] (optional)}'
        return _error(422, message)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    async def describe() -> dict[str, Any]:
        return {**metadata, "limits": asdict(limits)}

    @app.post("/predict", response_model=PredictResponse, responses={413: {}, 422: {}, 504: {}})
    async def predict(request: PredictRequest):
        wanted, given = ("images", request.images) if reads_images else ("texts", request.texts)
        if given is None:
            return _error(422, f'this model reads {wanted}: send {{"{wanted}": [...]}}')
        if len(given) > limits.max_texts:
            return _error(413, f"{len(given)} {wanted} in one request; the limit is {limits.max_texts}")
        if reads_images:
            images, problem = decode_images(given)
            if problem:
                return _error(422, problem)
        refused = None if reads_images else _text_refusal(request, limits, chat=getattr(model, "heads", None) is None)
        if refused is not None:
            return refused
        unknown = sorted(set(request.heads or []) - set(head_names))
        if unknown:
            return _error(422, f"unknown head(s) {unknown}; this model answers {head_names}")
        new_tokens = request.max_new_tokens or limits.max_new_tokens
        if new_tokens > limits.max_new_tokens:
            return _error(413, f"max_new_tokens {new_tokens} is above this server's limit of {limits.max_new_tokens}")
        try:
            items = images if reads_images else _texts_of(request)
            options = new_tokens if writes else 0  # only generation lengths keep requests apart
            predictions = await asyncio.wait_for(batcher.submit(items, request.heads, options), limits.timeout_s)
        except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
            return _error(504, f"the prediction took longer than {limits.timeout_s} s; retry with fewer texts")
        except DataError as e:  # e.g. a prompt plus max_new_tokens beyond a causal LM's context
            return _error(422, str(e))
        return {"predictions": predictions}

    return app


def load_app(
    run: str | os.PathLike,
    engine: str = "auto",
    limits: ServeLimits | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> FastAPI:
    """Load a run, a saved model or an ONNX export and build its app (`engine` auto: the fastest
    engine validated for the model on this machine, see ship/engines.py)."""

    from headkit.ship.engines import onnx_dir, resolve_engine
    from headkit.ship.generate import is_causal_lm_save, load_causal_lm
    from headkit.ship.onnx_engine import read_onnx_manifest
    from headkit.ship.predict import load_for_inference, resolve_model_dir
    from headkit.ship.save import read_manifest

    if engine in ("auto", "torch") and is_causal_lm_save(run):  # sft / clm runs answer by generating replies
        engine = "torch"
        model, processor = load_causal_lm(str(run), device=device, dtype=dtype)
    else:
        engine, dtype = resolve_engine(run, engine, device, dtype)  # the metadata names what runs
        # spin=False: onnxruntime's idle threads would hold the cores the request handling needs
        model, processor = load_for_inference(run, engine=engine, device=device, dtype=dtype, spin=False)
    onnx = engine.startswith("onnx")
    manifest = read_onnx_manifest(onnx_dir(run)) if onnx else read_manifest(resolve_model_dir(run))
    metadata = {
        "engine": engine,
        "heads": {
            name: {"type": c["type"], "labels": c.get("labels", []), "pooling": c.get("pooling")}
            for name, c in manifest["heads"].items()
        },
        "backbone": manifest["backbone"],
    }
    return create_app(model, processor, metadata, limits)


def run_server(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` with uvicorn until interrupted."""
    uvicorn.run(app, host=host, port=port, log_level="info")
