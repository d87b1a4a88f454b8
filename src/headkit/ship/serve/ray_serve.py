"""The same server in N replicas on Ray Serve (`headkit serve RUN --replicas N`, `pip install 'headkit[ray]'`).

Each replica is a Ray actor that loads the model and builds the very app `headkit serve` runs
(`load_app`), with its own worker, so request batching, the limits, the keys, /metrics and the
admin routes hold per replica; Ray's proxy spreads requests over the replicas (so /metrics,
through the proxy, is one replica's: scrape the replicas themselves for all of them). The app is
built inside each replica (Serve's ingress takes a builder), so nothing large is pickled. A head loaded
through /admin reaches the one replica that took the request: with replicas, add heads by
redeploying instead. On a Ray cluster, `serve run headkit.ship.serve.ray_serve:app_builder
run=RUN replicas=N` deploys it from the command line (the run must be readable on every node).
"""

from __future__ import annotations

import os
from typing import Any

from headkit.devices import pick_device
from headkit.extras import require
from headkit.ship.serve.config import ServeAccess, ServeLimits


def application(
    run: str | os.PathLike,
    replicas: int = 2,
    engine: str = "auto",
    limits: ServeLimits | None = None,
    access: ServeAccess | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    cpus_per_replica: float | None = None,
) -> Any:
    """A Ray Serve application of `replicas` copies of the headkit app for `run`. Each replica
    takes `cpus_per_replica` of Ray's CPUs (default: this machine's cores shared out) and torch
    uses as many threads, so replicas on one machine do not fight over the cores."""
    require("ray", "headkit serve --replicas")
    from ray import serve

    run = os.path.abspath(run)
    limits = limits or ServeLimits()
    cpus = cpus_per_replica or (os.cpu_count() or 1) / replicas  # a share, so N replicas fit N-fold on the cores
    on_gpu = pick_device(device).type == "cuda"  # "auto" too: a GPU the driver sees is shared out, not taken by each
    actor = {"num_cpus": cpus, "num_gpus": 1 / replicas if on_gpu else 0}

    def build() -> Any:  # runs in each replica
        import torch

        from headkit.ship.serve.server import load_app

        torch.set_num_threads(max(1, int(cpus)))
        return load_app(run, engine=engine, limits=limits, device=device, dtype=dtype, access=access)

    # Ray would hold all but 5 requests per replica in its own unbounded queue: let the replica's
    # batcher see up to its queue limit (it batches them and answers 429 beyond), and bound Ray's
    @serve.deployment(name="headkit", num_replicas=replicas, ray_actor_options=actor,
                      max_ongoing_requests=limits.max_queue, max_queued_requests=limits.max_queue)  # fmt: skip
    @serve.ingress(build)
    class HeadkitReplica:
        """One copy of the app; its routes are the app's."""

    return HeadkitReplica.bind()  # type: ignore[attr-defined]  # serve.deployment made it a Deployment


def app_builder(args: dict[str, str]) -> Any:
    """`serve run headkit.ship.serve.ray_serve:app_builder run=RUN replicas=N [engine=...]`."""
    known = {"run", "replicas", "engine", "device", "dtype"}
    unknown = sorted(set(args) - known)
    if unknown or "run" not in args:
        raise ValueError(f"give run=RUN and optionally {sorted(known - {'run'})}; not {unknown}")
    return application(
        args["run"], int(args.get("replicas", 2)), engine=args.get("engine", "auto"), device=args.get("device", "cpu"),
        dtype=args.get("dtype", "auto"), access=ServeAccess.from_options(),  # keys from HEADKIT_API_KEY / _ADMIN_KEY
    )  # fmt: skip


def run_replicas(app: Any, host: str, port: int, timeout_s: float = 30.0) -> None:
    """Start Ray on this machine (or join the cluster RAY_ADDRESS names), serve `app` on
    host:port until interrupted, then shut the replicas down. Ray's proxy gives up on a request
    after `timeout_s` plus a little (the replica answers 504 first)."""
    import ray
    from ray import serve

    options: dict[str, Any] = {}
    if not os.environ.get("RAY_ADDRESS") and host in ("127.0.0.1", "localhost", "::1"):
        options["_node_ip_address"] = "127.0.0.1"  # a local cluster for a loopback server: Ray's own ports too
    ray.init(include_dashboard=False, ignore_reinit_error=True, **options)
    try:
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": timeout_s + 5})
        serve.run(app, name="headkit", route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()
