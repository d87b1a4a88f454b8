"""GET /metrics in Prometheus' text format: HTTP requests by route and status code with their latency
(prometheus-fastapi-instrumentator's `http_requests_total` and `http_request_duration_seconds`),
and what only the server knows: the queue's depth, each gathered batch's size and time, each
head's time, worker restarts. Each app has its own registry, so two apps in one process (tests,
a benchmark) never share counts."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator import Instrumentator

BATCH_TEXTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TIMED_METHODS = ("forward", "forward_pooled", "decode")  # what a head does for a prediction


class ServeMetrics:
    """The server's own metrics, in one registry that /metrics exposes with the HTTP ones."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_texts = Histogram(
            "headkit_batch_texts", "Texts (or images) in one gathered batch", buckets=BATCH_TEXTS_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "headkit_batch_seconds", "Seconds one gathered batch took to predict", buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.head_seconds = Histogram(
            "headkit_head_seconds", "Seconds a head spent in one call (forward or decode; torch engines)",
            ["head"], buckets=SECONDS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.worker_restarts = Counter(
            "headkit_worker_restarts", "Times the worker died and was started again", registry=self.registry
        )
        self._timed: dict[str, Any] = {}  # head name -> the head whose methods this app wrapped

    def observe_batch(self, n_texts: int, seconds: float) -> None:
        self.batch_texts.observe(n_texts)
        self.batch_seconds.observe(seconds)

    def watch(self, app: Any, batcher: Any) -> None:
        """Gauges read from `batcher` when scraped, the HTTP metrics, and the /metrics route."""
        gauges = {
            "headkit_queue_requests": ("Requests waiting for the worker", lambda: batcher.waiting),
            "headkit_queue_texts": ("Texts waiting for the worker", lambda: batcher.queued_texts),
        }
        for name, (text, read) in gauges.items():
            Gauge(name, text, registry=self.registry).set_function(read)
        Instrumentator(
            should_group_status_codes=False, excluded_handlers=["/metrics"], registry=self.registry
        ).instrument(app).expose(app, include_in_schema=False)

    def time_heads(self, heads: Mapping[str, Any]) -> None:
        """Time each head's forward and decode calls, until `untime_heads` (the app's shutdown) or
        `forget_head`. The timing wraps the methods on the head objects themselves (forward_pooled
        and decode are not reached by module hooks); times are host wall time (on a GPU, until the
        call returns)."""
        for name, head in heads.items():
            inside = threading.local()  # one per head: its forward calling its forward_pooled is one call
            for method in TIMED_METHODS:
                if callable(getattr(head, method, None)):
                    # an instance attribute, found before the class's method by nn.Module.__call__ too
                    object.__setattr__(head, method, self._wrap(name, getattr(head, method), inside))
            self._timed[name] = head

    def forget_head(self, name: str) -> None:
        """An unloaded head: its wrappers and its series go."""
        head = self._timed.pop(name, None)
        if head is None:
            return
        for method in TIMED_METHODS:
            head.__dict__.pop(method, None)
        self.head_seconds.remove(name)

    def untime_heads(self) -> None:
        for name in list(self._timed):
            self.forget_head(name)

    def _wrap(self, head: str, call: Callable, inside: threading.local) -> Callable:
        histogram = self.head_seconds.labels(head=head)

        @functools.wraps(call)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(inside, "head", False):  # a call inside another of this head's: timed as part of it
                return call(*args, **kwargs)
            inside.head, start = True, time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                inside.head = False
                histogram.observe(time.perf_counter() - start)

        return timed
