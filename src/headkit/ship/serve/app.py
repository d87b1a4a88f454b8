"""The FastAPI app for a loaded model: its routes, guards and worker (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from headkit.data.images import is_image_processor
from headkit.errors import HeadkitError
from headkit.ship.serve.answer import answerer, generates
from headkit.ship.serve.batcher import FAILING_BATCHES, Batcher, BatchFailure, HeadsGone, Overloaded, WorkerFailure
from headkit.ship.serve.config import ServeAccess, ServeLimits
from headkit.ship.serve.guards import KnownMethods, LimitBody, RequireKey, Shed, route_path
from headkit.ship.serve.hotload import HeadClash, SaveNotFound, add_heads, check_free, describe, read_heads, save_in
from headkit.ship.serve.metrics import ServeMetrics
from headkit.ship.serve.requests import PredictRequest, PredictResponse, error, read_items, size_of

logger = logging.getLogger(__name__)

FAULTS_ENV = "HEADKIT_SERVE_FAULTS"  # "1": POST /debug/faults injects faults (tests and benchmarks only)


@dataclass
class ServerState:
    """What the routes share: the model, its description, the worker and whether it is draining."""

    model: Any
    processor: Any
    metadata: dict[str, Any]
    limits: ServeLimits
    access: ServeAccess
    batcher: Batcher = field(init=False)
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    draining: bool = False  # set on SIGTERM (server.py): /ready says so while accepted requests finish
    faults: dict[str, float] = field(default_factory=dict)  # injected by /debug/faults

    @property
    def head_names(self) -> list[str]:
        return list(self.metadata["heads"])

    @property
    def torch_heads(self) -> bool:
        """Whether the heads are torch modules (timed, and changed by /admin): not an ONNX graph or a chat model."""
        return isinstance(getattr(self.model, "heads", None), torch.nn.ModuleDict)


def create_app(
    model, processor, metadata: dict[str, Any], limits: ServeLimits | None = None, access: ServeAccess | None = None
) -> FastAPI:
    """The FastAPI app for a loaded model (a `MultiHeadModel`, an `OnnxModel`, or a transformers
    causal LM for sft / clm runs, whose one head answers by generating) and its processor."""
    limits, access = limits or ServeLimits(), access or ServeAccess()
    if isinstance(model, torch.nn.Module):
        model.eval().requires_grad_(False)  # read-only: nothing in serving can change a weight
    state = ServerState(model, processor, metadata, limits, access)
    run_batch = answerer(model, processor, state.head_names, limits)
    faults = os.environ.get(FAULTS_ENV) == "1"
    if faults:
        run_batch = _with_faults(run_batch, state.faults)
    state.batcher = Batcher(
        run_batch, limits.max_batch_texts, limits.batch_wait_ms / 1000, limits.max_queue, limits.timeout_s,
        on_batch=state.metrics.observe_batch, on_restart=state.metrics.worker_restarts.inc,
    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.torch_heads:
            state.metrics.time_heads(model.heads)
        state.batcher.start()
        yield
        await state.batcher.stop()
        state.metrics.untime_heads()  # the caller's model is left as it was given

    app = FastAPI(title="headkit", description="Every head of one model, from one backbone pass.", lifespan=lifespan)
    app.state.server = state
    # outermost last: metrics count every answer, CORS answers preflights before the key is asked for
    app.add_middleware(LimitBody, max_bytes=limits.max_body_bytes)
    app.add_middleware(Shed, batcher=state.batcher)  # inside the key check: strangers learn nothing of the load
    app.add_middleware(RequireKey, api_key=access.api_key, admin_key=access.admin_key)
    if access.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])  # fmt: skip
    state.metrics.watch(app, state.batcher)
    app.add_middleware(KnownMethods)  # outermost: a made-up method never becomes a metric label
    app.add_exception_handler(RequestValidationError, _invalid_request)
    _probe_routes(app, state)
    _predict_route(app, state)
    if access.admin_key is not None:
        _admin_routes(app, state)
    if faults:
        _fault_route(app, state)
    return app


async def _invalid_request(request: Request, exc: Exception) -> Any:
    problems = []
    for err in exc.errors() if isinstance(exc, RequestValidationError) else []:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
        else:
            problems.append(f"{where or 'body'}: {err.get('msg')}")
    example = '{"texts": ["a text", ...], "heads": ["name", ...] (optional)}'
    if route_path(request.scope).startswith("/admin"):
        example = '{"save": "a folder in the heads folder", "heads": ["name", ...] (optional)}'
    return error(422, "; ".join(problems) + f". Expected {example}")


def _probe_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health", responses={503: {}})
    async def health() -> Any:
        """Liveness: 200 while the worker runs; 503 while it is being restarted, when a batch has
        run for more than twice the request timeout (a stalled device), or when the last few
        prediction calls all failed (a broken device)."""
        worker = state.batcher.health()
        report = {"worker": "running" if worker.alive else "restarting", "restarts": worker.restarts,
                  "last_failure": worker.last_failure}  # fmt: skip
        if worker.stalled_s is not None:
            report["worker"] = f"stalled for {worker.stalled_s:.0f} s"
        elif worker.failing >= FAILING_BATCHES:
            report["worker"] = f"failing: the last {worker.failing} prediction calls raised"
        ok = worker.alive and worker.stalled_s is None and worker.failing < FAILING_BATCHES
        return _json(200 if ok else 503, {"status": "ok" if ok else "unhealthy", **report})

    @app.get("/ready", responses={503: {}})
    async def ready() -> Any:
        """Readiness: 200 while requests are being taken (the worker runs, no shutdown has begun)."""
        status = "draining" if state.draining else "ready" if state.batcher.health().alive else "not ready"
        return _json(200 if status == "ready" else 503, {"status": status})

    @app.get("/metadata")
    async def describe_model() -> dict[str, Any]:
        return {**state.metadata, "limits": asdict(state.limits)}


def _predict_route(app: FastAPI, state: ServerState) -> None:
    limits, batcher, model = state.limits, state.batcher, state.model
    reads_images, chat = is_image_processor(state.processor), getattr(model, "heads", None) is None

    @app.post("/predict", response_model=PredictResponse, responses={k: {} for k in (409, 413, 422, 429, 503, 504)})
    async def predict(request: PredictRequest) -> Any:
        try:  # refused before any work (decoding images included) when the queue cannot take it
            batcher.admit(size_of(request))
            items = await read_items(request, limits, reads_images, state.head_names, chat)
            if not isinstance(items, list):
                return items
            options = (request.max_new_tokens or limits.max_new_tokens) if generates(model) else 0
            # only generation lengths keep requests apart
            predictions = await asyncio.wait_for(batcher.submit(items, request.heads, options), limits.timeout_s)
        except Overloaded as e:
            return error(*e.answer())
        except WorkerFailure as e:
            return error(503, str(e), {"retry-after": "1"})
        except HeadsGone as e:
            return error(409, str(e))
        except asyncio.TimeoutError:  # the wait, never the call: its errors are BatchFailure
            return error(504, f"the prediction took longer than {limits.timeout_s} s; retry with fewer texts")
        except HeadkitError as e:  # e.g. a prompt plus max_new_tokens beyond a causal LM's context
            return error(422, str(e))
        except BatchFailure as e:  # the details go to the log, under an id the client is given
            incident = uuid.uuid4().hex[:12]
            logger.error("prediction failed [%s]: %s", incident, e, exc_info=e.__cause__)
            return error(500, f"the prediction failed; the server log has the details under {incident}")
        return {"predictions": predictions}


class LoadHeadsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    save: StrictStr = Field(description="a folder inside the server's heads folder holding a head save")
    heads: list[StrictStr] | None = Field(default=None, min_length=1, description="which of its heads (default all)")


def _admin_routes(app: FastAPI, state: ServerState) -> None:
    """Loading and unloading heads on the running backbone (torch engines; the admin key). Every
    check that depends on the current heads is made again under the batcher's lock, where the
    change happens, so two admin calls (or one and a batch) never see each other half done."""
    model, batcher = state.model, state.batcher

    def refusal(loading: bool) -> Any:
        if not state.torch_heads:
            engine = state.metadata["engine"]
            return error(409, f"heads can be changed on a torch engine only; this server runs {engine}")
        if loading and state.access.heads_folder is None:
            return error(409, "the server has no heads folder to load from: start it with --heads_dir DIR")
        return None

    @app.post("/admin/heads", responses={404: {}, 409: {}, 422: {}})
    async def load_heads(request: LoadHeadsRequest) -> Any:
        refused, heads_dir = refusal(loading=True), state.access.heads_folder
        if refused is not None or heads_dir is None:
            return refused
        clock = [time.perf_counter()]  # read, waited for the batch in progress, built: what the call's time was
        try:
            directory = save_in(heads_dir, request.save)
            manifest, states = await asyncio.to_thread(read_heads, model, directory, request.heads)
            clock.append(time.perf_counter())
            async with batcher.lock:  # between two batches: requests in flight keep their heads
                clock.append(time.perf_counter())
                check_free(model, states)
                # on the loop, not a thread: the routes read model.heads (a few ms for a head;
                # the weights were read above)
                loaded = add_heads(model, directory, manifest, states)
                state.metadata["heads"].update({n: describe(manifest["heads"][n]) for n in loaded})
                clock.append(time.perf_counter())
        except HeadkitError as e:  # nothing changed: the server answers as before
            status = 404 if isinstance(e, SaveNotFound) else 409 if isinstance(e, HeadClash) else 422
            return error(status, f"not loaded: {e}")
        except Exception as e:  # a save that does not read (bad JSON, tensors of the wrong size)
            logger.warning("loading heads from %s failed", request.save, exc_info=e)
            return error(422, f"not loaded: the save does not read ({type(e).__name__}: {e})")
        state.metrics.time_heads({n: model.heads[n] for n in loaded})
        steps = (round(b - a, 4) for a, b in itertools.pairwise(clock))
        seconds = dict(zip(("read", "waited", "built"), steps, strict=True))
        logger.info("loaded head(s) %s from %s (%s)", loaded, directory, seconds)
        return {"loaded": loaded, "heads": state.metadata["heads"], "seconds": seconds}

    @app.delete("/admin/heads/{name}", responses={404: {}, 409: {}})
    async def unload_head(name: str) -> Any:
        refused = refusal(loading=False)
        if refused is not None:
            return refused
        async with batcher.lock:
            if name not in model.heads:
                return error(404, f"no head named '{name}'; this server answers {state.head_names}")
            if len(model.heads) == 1:
                return error(409, f"'{name}' is the server's only head; load another before unloading it")
            model.remove_head(name)
            del state.metadata["heads"][name]
        state.metrics.forget_head(name)
        logger.info("unloaded head %s", name)
        return {"unloaded": name, "heads": state.metadata["heads"]}


def _fault_route(app: FastAPI, state: ServerState) -> None:
    """POST /debug/faults {"kill_worker": true, "delay_s": 2}: the worker dies holding its next
    batch, or the next batch takes that long. Mounted only where HEADKIT_SERVE_FAULTS=1."""

    @app.post("/debug/faults", include_in_schema=False)
    async def inject(faults: dict[str, float]) -> dict[str, Any]:
        state.batcher.fail_next = bool(faults.get("kill_worker"))
        state.faults["delay_s"] = float(faults.get("delay_s", 0))
        return {"injected": faults}


def _with_faults(run_batch: Any, faults: dict[str, float]) -> Any:
    def run(items: list, wanted: list[str] | None, options: int) -> list[dict[str, Any]]:
        time.sleep(faults.pop("delay_s", 0.0))
        return run_batch(items, wanted, options)

    return run


def _json(status: int, content: dict[str, Any]) -> JSONResponse:
    return JSONResponse(status_code=status, content=content)
