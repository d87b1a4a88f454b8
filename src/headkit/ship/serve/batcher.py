"""The server's one worker: it turns queued requests into shared forward passes, refuses work it
cannot finish in time, and is restarted when it dies.

Requests wait in a queue; the worker takes everything waiting (up to `max_texts`, waiting at most
`wait_s` for more) and predicts it in one call on a thread, so concurrent clients share forward
passes instead of contending for the CPU/GPU. Admission is decided when a request arrives: more
than `max_queue` requests waiting, or more work ahead of it than the worker gets through in half
of `timeout_s` at the pace it has been measured at (`admit`), is `Overloaded` (HTTP 429 with
Retry-After) at once, instead of a 504 after a wait that was bound to fail. A request that gives up (its 504)
leaves the count at once, though its job stays in the queue until the worker skips it.

A supervisor runs the worker. If the worker dies (anything outside `run_batch`, whose own errors
go to the requests of that batch as `BatchFailure`), the requests it held are failed with
`WorkerFailure` at once (HTTP 503), the fault is kept for /health, and a new worker starts after a
short back-off. Prediction calls that keep failing (a broken device) make /health unhealthy too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headkit.errors import HeadkitError

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.05, 5.0)  # first and longest pause before a dead worker is started again
PACE_SMOOTHING = 0.3  # weight of the newest batch in the seconds-per-text estimate
ADMIT_FRACTION = 0.5  # a request's expected wait may fill this share of timeout_s (the rest: noise in the pace)


class Overloaded(Exception):
    """More work is queued than the worker can finish in time: retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after

    def answer(self) -> tuple[int, str, dict[str, str]]:
        """The HTTP status, message and headers a refused request gets (at the door or in the route)."""
        return 429, f"the server is busy: {self}; retry later", {"retry-after": str(self.retry_after)}


class WorkerFailure(RuntimeError):
    """The worker died holding this request, or the server stopped first; it was not predicted."""


class HeadsGone(RuntimeError):
    """A head the request named was unloaded while the request waited."""


class BatchFailure(RuntimeError):
    """The prediction call raised (the cause is chained); its requests get a 500."""


FAILING_BATCHES = 3  # this many failed prediction calls in a row: /health reports the worker unhealthy


@dataclass(eq=False)
class Job:
    items: list[Any]  # texts, (text, text_pair) tuples or images
    heads: list[str] | None
    key: tuple  # requests share a pass only when their keys are equal
    future: asyncio.Future = field(repr=False)
    queued: bool = True  # counted among the waiting until taken or given up


@dataclass
class WorkerHealth:
    """What /health reports about the worker."""

    alive: bool
    restarts: int
    last_failure: str | None
    stalled_s: float | None  # how long the batch in progress has run, when that is longer than it should
    failing: int  # prediction calls that raised in a row


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
        on_restart: Callable[[], None] | None = None,
    ):
        self.run_batch, self.max_texts, self.wait_s = run_batch, max_texts, wait_s
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.on_batch, self.on_restart = on_batch, on_restart
        self.waiting = 0  # requests queued and still wanted (one that timed out leaves at once)
        self.queued_texts = 0  # their texts (taken ones are in `held`)
        self.held: list[Job] = []  # jobs the worker has taken and not yet answered
        self.seconds_per_text: float | None = None  # measured pace, smoothed over batches
        self.last_pace = 0.0  # the last batch's seconds per text
        self.pass_texts: float | None = None  # texts per prediction call, smoothed
        self.busy_since: float | None = None  # when the batch in progress started
        self.restarts, self.last_failure, self.failing = 0, None, 0  # type: tuple[int, str | None, int]
        self.fail_next = False  # a fault injected for tests and benchmarks (app.py's fault route)
        self._supervisor: asyncio.Task | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the worker last ran on
        self._bind()

    def _bind(self) -> None:
        """A queue and a lock for the running event loop (asyncio binds them to the first loop that uses them)."""
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.lock = asyncio.Lock()  # held around each prediction call; changing the heads takes it too

    # ------------------------------------------------------------------------- life cycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:  # a second lifespan, on its own event loop
            self._bind()
        self._loop = loop
        self._supervisor = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        """Stop the worker; every request still queued or held gets a `WorkerFailure`."""
        for task in (self._supervisor, self._worker):
            # a cancellation can be swallowed by wait_for when its get had already finished: ask again
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1)
        stopped = WorkerFailure("the server stopped before this request was predicted")
        self._fail_held(stopped)
        while not self.queue.empty():
            job = self.queue.get_nowait()
            self._leave_queue(job)
            if not job.future.done():
                job.future.set_exception(stopped)

    def health(self) -> WorkerHealth:
        alive = self._worker is not None and not self._worker.done()
        running = None if self.busy_since is None else time.monotonic() - self.busy_since
        stalled = running if running is not None and running > 2 * self.timeout_s else None
        return WorkerHealth(alive, self.restarts, self.last_failure, stalled, self.failing)

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
            if self.on_restart is not None:
                self.on_restart()
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
        """Raise `Overloaded` unless a request of `n_texts` may be queued: fewer than `max_queue`
        requests wait, the batch in progress has not run past that share of the timeout, and the
        texts ahead of it (queued and in progress, still wanted) and its own pass, at the slower
        of the smoothed and the last batch's pace (a pace that is getting worse counts at once),
        take at most a share of the timeout; the rest of the timeout absorbs a pace that varies.
        Its own pass is as large as passes have lately been (requests behind it join it), or its
        own texts if more. An idle server takes any request (its size is the request limit's
        business)."""
        if self.waiting >= self.max_queue:
            raise Overloaded(f"{self.waiting} requests are waiting (the limit)", self._drain_seconds())
        budget = ADMIT_FRACTION * self.timeout_s
        running = 0.0 if self.busy_since is None else time.monotonic() - self.busy_since
        if running > budget:  # a batch that overruns: whatever waits behind it would time out
            raise Overloaded(f"the batch in progress has run {running:.1f} s", self._drain_seconds())
        ahead = self._ahead()
        if not ahead or self.seconds_per_text is None:
            return
        wait = (ahead + max(n_texts, self.pass_texts or 0)) * max(self.seconds_per_text, self.last_pace)
        if wait > budget:
            raise Overloaded(
                f"{ahead} texts are queued ahead, about {wait:.1f} s of work with this request's; requests are "
                f"answered within {self.timeout_s:g} s",
                self._drain_seconds(),
            )

    def _ahead(self) -> int:
        """Texts queued or in progress whose requests still wait for them."""
        return self.queued_texts + sum(len(j.items) for j in self.held if not j.future.done())

    def _drain_seconds(self) -> int:
        """Whole seconds until the work queued now is done, at the measured pace (at least 1)."""
        return max(1, math.ceil(self._ahead() * max(self.seconds_per_text or 0.0, self.last_pace)))

    async def submit(self, items: list[Any], heads: list[str] | None, options: int = 0) -> list[dict[str, Any]]:
        """Queue items (texts or (text, text_pair) tuples, or images) and wait for their answers;
        requests share a pass when their `options` (the generation length) are equal and both hold
        pairs or both single items. Raises `Overloaded` when the request is not admitted."""
        self.admit(len(items))
        future = asyncio.get_running_loop().create_future()
        job = Job(items, heads, (options, isinstance(items[0], tuple)), future)
        future.add_done_callback(lambda _: self._leave_queue(job))  # given up (504): no longer waiting
        self.queue.put_nowait(job)
        self.waiting += 1
        self.queued_texts += len(items)
        return await future

    def _leave_queue(self, job: Job) -> None:
        if job.queued:
            job.queued = False
            self.waiting -= 1
            self.queued_texts -= len(job.items)

    # ------------------------------------------------------------------------- the worker

    async def _take(self, timeout: float | None) -> Job:
        """The next job (waiting at most `timeout` seconds; 0: only one already queued), now held."""
        if timeout is None:
            job = await self.queue.get()
        elif timeout <= 0:
            job = self.queue.get_nowait()  # wait_for(..., 0) would give up before looking
        else:
            job = await asyncio.wait_for(self.queue.get(), timeout)
        self._leave_queue(job)
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
        """One prediction call for these jobs. An input error (a HeadkitError: a prompt too long
        for the context, say) is one request's fault: the jobs of a failed shared call are run
        again in halves until the request it came from is alone, so only that request gets it.
        Any other error is the server's and counts towards an unhealthy /health."""
        items = [item for job in jobs for item in job.items]
        everything = any(job.heads is None for job in jobs)
        wanted = None if everything else sorted({h for job in jobs for h in job.heads or []})
        failure: Exception | None = None
        async with self.lock:
            self.busy_since = started = time.monotonic()
            try:
                results = await asyncio.to_thread(self.run_batch, items, wanted, options)
                if len(results) != len(items):
                    raise RuntimeError(f"{len(results)} answers for {len(items)} items")
            except HeadkitError as e:
                failure = e
            except Exception as e:  # the worker lives on
                self.failing += 1
                failure = BatchFailure(f"{type(e).__name__}: {e}")
                failure.__cause__ = e
            finally:
                self.busy_since = None
        if failure is not None:
            live = [job for job in jobs if not job.future.done()]  # those that gave up are not run again
            if isinstance(failure, HeadkitError) and len(live) > 1:  # halves: one bad request costs log2(N) calls
                await self._run(live[: len(live) // 2], options)
                await self._run(live[len(live) // 2 :], options)
                return
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(failure)
            return
        self.failing = 0
        self._measured(len(items), time.monotonic() - started)
        start = 0
        for job in jobs:
            part = results[start : start + len(job.items)]
            start += len(job.items)
            if not job.future.done():
                self._answer(job, part)

    @staticmethod
    def _answer(job: Job, part: list[dict[str, Any]]) -> None:
        """The job's own heads from its items' answers; a named head the answers lack was unloaded."""
        if job.heads is None:
            job.future.set_result(part)
            return
        gone = sorted({h for r in part for h in job.heads if h not in r})
        if gone:
            job.future.set_exception(HeadsGone(f"head(s) {gone} were unloaded while this request waited"))
        else:
            job.future.set_result([{k: v for k, v in r.items() if k in job.heads or k == "truncated"} for r in part])

    def _measured(self, n_texts: int, seconds: float) -> None:
        self.last_pace = seconds / max(n_texts, 1)
        self.pass_texts = _smoothed(self.pass_texts, n_texts)
        self.seconds_per_text = _smoothed(self.seconds_per_text, self.last_pace)
        if self.on_batch is not None:
            self.on_batch(n_texts, seconds)


def _smoothed(old: float | None, new: float) -> float:
    """An exponential moving average; the first value is taken as it is, not blended with nothing."""
    return new if old is None else (1 - PACE_SMOOTHING) * old + PACE_SMOOTHING * new
