"""Loading a model into an app, and running it under uvicorn with a drain on shutdown."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from headkit.ship.serve.app import create_app
from headkit.ship.serve.config import ServeAccess, ServeLimits
from headkit.ship.serve.hotload import describe

logger = logging.getLogger(__name__)


def load_app(
    run: str | os.PathLike,
    engine: str = "auto",
    limits: ServeLimits | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    access: ServeAccess | None = None,
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
        "heads": {name: describe(c) for name, c in manifest["heads"].items()},
        "backbone": manifest["backbone"],
    }
    return create_app(model, processor, metadata, limits, access)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain. On SIGTERM (or Ctrl-C) /ready turns 503 (`draining`) at once;
    the server goes on answering for `drain_s` seconds, so a load balancer that polls /ready takes
    it out of rotation before connections are refused (Kubernetes: give the pod a
    terminationGracePeriodSeconds a few seconds above drain_s + the request timeout); then uvicorn stops
    accepting connections, answers the requests it has accepted (for at most the request timeout)
    and the app's worker stops. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, drain_s: float = 0.0):
        super().__init__(config)
        self.drain_s, self.stop_at = drain_s, None  # type: float, float | None

    def handle_exit(self, sig: int, frame: Any) -> None:
        state = getattr(getattr(self.config.app, "state", None), "server", None)
        if state is None:  # not a headkit app: uvicorn's own handling
            return super().handle_exit(sig, frame)
        if state.draining:  # a second signal: stop now, whatever is in flight
            self.force_exit = True
            return super().handle_exit(sig, frame)
        state.draining = True
        if self.drain_s <= 0:
            logger.info("draining: answering the requests accepted, then stopping")
            return super().handle_exit(sig, frame)
        self._captured_signals.append(sig)  # as uvicorn's own handler: raised again once stopped
        self.stop_at = time.monotonic() + self.drain_s
        logger.info("draining: /ready says so; still answering for %g s, then stopping", self.drain_s)

    async def on_tick(self, counter: int) -> bool:
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


def run_server(app: FastAPI, host: str, port: int, drain_s: float = 0.0) -> None:
    """Serve `app` with uvicorn until SIGTERM or Ctrl-C, draining the requests in flight
    (`DrainingServer`)."""
    state = getattr(app.state, "server", None)
    # an accepted request waits at most the request timeout (then it has its 504)
    grace = math.ceil(state.limits.timeout_s if state is not None else 30.0) + 1
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=grace)
    DrainingServer(config, drain_s).run()
