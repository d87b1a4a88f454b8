"""The server's one worker: it turns queued requests into shared forward passes, refuses work it
cannot finish in time, and is restarted when it dies.

Requests wait in a queue; the worker takes everything waiting (up to `max_texts`, waiting at most
`wait_s` for more) and predicts it in one call on a thread, so concurrent clients share forward
passes instead of contending for the CPU/GPU. Admission is decided when a request arrives: more
than `max_queue` requests waiting, or more queued texts than the worker gets through in
`timeout_s` at the pace it has been measured at, is `Overloaded` (HTTP 429 with Retry-After) at
once, instead of a 504 after a wait that was bound to fail.

A supervisor runs the worker. If the worker dies (anything outside `run_batch`, whose own errors
go to the requests of that batch), the requests it held are failed with `WorkerFailure` at once
(HTTP 503), the fault is kept for /health, and a new worker starts after a short back-off.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.05, 5.0)  # first and longest pause before a dead worker is started again
PACE_SMOOTHING = 0.3  # weight of the newest batch in the seconds-per-text estimate
ADMIT_FRACTION = 0.8  # queued work may fill this share of timeout_s; the rest is the request's own pass


class Overloaded(Exception):
    """More work is queued than the worker can finish in time: retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class WorkerFailure(RuntimeError):
    """The worker died holding this request; it was not predicted."""


@dataclass
class Job:
    items: list[Any]  # texts, (text, text_pair) tuples or images
    heads: list[str] | None
    key: tuple  # requests share a pass only when their keys are equal
    future: asyncio.Future = field(repr=False)


@dataclass
class WorkerHealth:
    """What /health reports about the worker."""

    alive: bool
    restarts: int
    last_failure: str | None
    stalled_s: float | None  # how long the batch in progress has run, when that is longer than it should


class Batcher:
    """Queue + worker + supervisor; `start()` inside the running event loop (the app's lifespan)."""

    def __init__(
        self,
        run_batch: Callable[[list[Any], list[str] | None, int], list[dict[str, Any]]],
        max_texts: int,
        wait_s: float,
        max_queue: int = 256,
        timeout_s: float = 30.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.run_batch, self.max_texts, self.wait_s = run_batch, max_texts, wait_s
        self.max_queue, self.timeout_s, self.on_batch = max_queue, timeout_s, on_batch
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.queued_texts = 0  # texts in the queue (taken ones are in `held`)
        self.held: list[Job] = []  # jobs the worker has taken and not yet answered
        self.seconds_per_text: float | None = None  # measured pace, smoothed over batches
        self.busy_since: float | None = None  # when the batch in progress started
        self.restarts, self.last_failure = 0, None  # type: tuple[int, str | None]
        self.lock = asyncio.Lock()  # held around each prediction call; changing the heads takes it too
        self.fail_next = False  # a fault injected for tests and benchmarks (app.py's fault route)
        self._supervisor: asyncio.Task | None = None
        self._worker: asyncio.Task | None = None

    # ------------------------------------------------------------------------- life cycle

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        for task in (self._supervisor, self._worker):
            if task is not None:
                task.cancel()
        for task in (self._supervisor, self._worker):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._fail_held(WorkerFailure("the server stopped before this request was predicted"))

    def health(self) -> WorkerHealth:
        alive = self._worker is not None and not self._worker.done()
        running = None if self.busy_since is None else time.monotonic() - self.busy_since
        stalled = running if running is not None and running > 2 * self.timeout_s else None
        return WorkerHealth(alive, self.restarts, self.last_failure, stalled)

    async def _supervise(self) -> None:
        pause = RESTART_BACKOFF_S[0]
        while True:
            started = time.monotonic()
            self._worker = asyncio.create_task(self._work())
            try:
                await asyncio.shield(self._worker)
            except asyncio.CancelledError:
                if not self._worker.cancelled():  # the supervisor itself is being stopped
                    raise
                failure: BaseException = WorkerFailure("the worker was cancelled")
            except Exception as e:  # the worker died outside run_batch
                failure = e
            else:
                return
            self.restarts += 1
            self.last_failure = f"{type(failure).__name__}: {failure}"
            logger.error("the batching worker died (%s); its requests get 503, restarting it", self.last_failure)
            self._fail_held(WorkerFailure(f"the server's worker failed ({self.last_failure}); retry"))
            self.busy_since = None
            # a worker that dies at once again waits longer each time, up to the longest pause
            pause = RESTART_BACKOFF_S[0] if time.monotonic() - started > 10 else min(pause * 2, RESTART_BACKOFF_S[1])
            await asyncio.sleep(pause)

    def _fail_held(self, error: Exception) -> None:
        for job in self.held:
            if not job.future.done():
                job.future.set_exception(error)
        self.held = []

    # ------------------------------------------------------------------------- requests

    def admit(self, n_texts: int) -> None:
        """Raise `Overloaded` unless a request of `n_texts` can be queued and answered in time."""
        if self.queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self.queue.qsize()} requests are waiting (the limit)", self._drain_seconds())
        if self.seconds_per_text is None:  # nothing measured yet: only the count limit applies
            return
        waiting = self.queued_texts + sum(len(j.items) for j in self.held) + n_texts
        if waiting * self.seconds_per_text > ADMIT_FRACTION * self.timeout_s:
            raise Overloaded(
                f"{waiting} texts are queued, about {waiting * self.seconds_per_text:.1f} s of work; requests "
                f"are answered within {self.timeout_s:g} s",
                self._drain_seconds(),
            )

    def _drain_seconds(self) -> int:
        """Whole seconds until the work queued now is done, at the measured pace (at least 1)."""
        texts = self.queued_texts + sum(len(j.items) for j in self.held)
        return max(1, math.ceil(texts * (self.seconds_per_text or 0.0)))

    async def submit(self, items: list[Any], heads: list[str] | None, options: int = 0) -> list[dict[str, Any]]:
        """Queue items (texts or (text, text_pair) tuples, or images) and wait for their answers;
        requests share a pass when their `options` (the generation length) are equal and both hold
        pairs or both single items. Raises `Overloaded` when the request is not admitted."""
        self.admit(len(items))
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Job(items, heads, (options, isinstance(items[0], tuple)), future))
        self.queued_texts += len(items)
        return await future

    # ------------------------------------------------------------------------- the worker

    async def _take(self, timeout: float | None) -> Job:
        """The next job (waiting at most `timeout` seconds; 0: only one already queued), now held."""
        if timeout is None:
            job = await self.queue.get()
        elif timeout <= 0:
            job = self.queue.get_nowait()  # wait_for(..., 0) would give up before looking
        else:
            job = await asyncio.wait_for(self.queue.get(), timeout)
        self.queued_texts -= len(job.items)
        self.held.append(job)
        return job

    async def _work(self) -> None:
        while True:
            jobs = [await self._take(None)]
            size = len(jobs[0].items)
            deadline = asyncio.get_running_loop().time() + self.wait_s
            while size < self.max_texts:
                try:
                    jobs.append(await self._take(max(deadline - asyncio.get_running_loop().time(), 0.0)))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):  # not the builtin TimeoutError on 3.10
                    break
                size += len(jobs[-1].items)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("fault injected through the test hook")
            live = [j for j in jobs if not j.future.done()]  # timed-out requests are not computed
            for key in sorted({j.key for j in live}):  # one pass per generation length, pairs apart
                await self._run([j for j in live if j.key == key], key[0])
            self.held = []

    async def _run(self, jobs: list[Job], options: int) -> None:
        items = [item for job in jobs for item in job.items]
        everything = any(job.heads is None for job in jobs)
        wanted = None if everything else sorted({h for job in jobs for h in job.heads or []})
        async with self.lock:
            self.busy_since = started = time.monotonic()
            try:
                results = await asyncio.to_thread(self.run_batch, items, wanted, options)
            except Exception as e:  # reported to every waiting request; the worker lives on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                return
            finally:
                self.busy_since = None
        self._measured(len(items), time.monotonic() - started)
        start = 0
        for job in jobs:
            part = results[start : start + len(job.items)]
            start += len(job.items)
            if job.heads is not None:
                part = [{k: v for k, v in r.items() if k in job.heads or k == "truncated"} for r in part]
            if not job.future.done():
                job.future.set_result(part)

    def _measured(self, n_texts: int, seconds: float) -> None:
        pace = seconds / max(n_texts, 1)
        old = self.seconds_per_text
        self.seconds_per_text = pace if old is None else (1 - PACE_SMOOTHING) * old + PACE_SMOOTHING * pace
        if self.on_batch is not None:
            self.on_batch(n_texts, seconds)
