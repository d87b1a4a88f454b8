"""`headkit serve` under load and faults, on loopback, bounded in clients and time.

The 4-head MiniLM model of serve_load.py (heads untrained: a pass costs the same whatever the
weights), each scenario on its own server process, asyncio clients in this process:

  1. steady:   C clients (default 64) back to back for S seconds (default 60): throughput, p50/p99, codes.
  2. fault:    the same, with the worker killed once halfway (HEADKIT_SERVE_FAULTS' test hook): how
               long /health reported it, whether every request got an answer (a result, 429 or 5xx;
               none past its timeout), throughput before and after.
  3. overload: an open-loop stream at 4x the capacity measured in 1 (server timeout 5 s): the share
               of 429s, 504s and results (goal: 429s, no timeouts).
  4. heads:    the 4 heads in one server vs 4 one-head servers on the same cores, C clients each
               wanting all 4 heads for every text: texts answered by every head per second (goal:
               one server >= 0.8 x 4 = 3.2x the four).
  5. hot-load: a head loaded through /admin halfway through a load run (C clients, then 8):
               failed requests (goal 0) and the seconds from the load call to the new head's first
               answer (goal < 1), with the load call's parts.

    python benchmarks/serve_faults.py [--clients 64] [--seconds 60] [--short-seconds 20]
Prints the machine line first and one table per scenario; exits non-zero when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve_load import HOST, MAX_CLIENTS, MAX_SECONDS, free_port, save_model

PER_REQUEST = 4
ADMIN = "bench-admin"


@dataclass
class Tally:
    """Answers by status code ("transport" for a connection error), latencies, texts answered."""

    codes: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    answered: list[tuple[float, int]] = field(default_factory=list)  # (time answered, texts) of each 200
    slowest: float = 0.0

    def add(self, code: int | str, latency: float, texts: int) -> None:
        self.codes[code] += 1
        self.latencies.append(latency)
        self.slowest = max(self.slowest, latency)
        if code == 200:
            self.answered.append((time.perf_counter(), texts))

    def rate(self, start: float, end: float) -> float:
        return sum(n for t, n in self.answered if start <= t < end) / max(end - start, 1e-9)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies) or [0.0]
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Server:
    """`headkit serve` in a subprocess on a free loopback port."""

    def __init__(self, target: Path, *options: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        command = [sys.executable, "-m", "headkit", "serve", str(target), "--host", HOST, "--port", str(self.port),
                   "--engine", "torch", "--device", "cpu", *options]  # fmt: skip
        self.process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip

    def __enter__(self) -> Server:
        import httpx

        for _ in range(1200):
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"the server on {self.url} did not become ready")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def post(http, url: str, body: dict, tally: Tally, timeout: float) -> int | str:
    started = time.perf_counter()
    try:
        code: int | str = (await http.post(f"{url}/predict", json=body, timeout=timeout)).status_code
    except Exception:  # a refused connection or a hang past the timeout is what we count
        code = "transport"
    tally.add(code, time.perf_counter() - started, len(body["texts"]))
    return code


async def clients(urls: list[str], texts: list[str], n: int, seconds: float, tally: Tally, during=None) -> float:
    """n closed-loop clients for `seconds`; each sends its texts to every url (all must answer 200
    for the texts to count once). `during(elapsed_fraction_event)` runs beside them. Returns the start."""
    import httpx

    async def one(seed: int, http, until: float) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < until:
            body = {"texts": rng.sample(texts, PER_REQUEST)}
            if len(urls) == 1:
                await post(http, urls[0], body, tally, 60)
            else:  # the same texts to each one-head server; counted when all answered
                parts = Tally()
                await asyncio.gather(*(post(http, u, body, parts, 60) for u in urls))
                tally.add(200 if set(parts.codes) == {200} else max(parts.codes, key=str), max(parts.latencies), 4)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n * len(urls))) as http:
        start = time.perf_counter()
        tasks = [one(i, http, start + seconds) for i in range(n)]
        await asyncio.gather(*tasks, *([during(http, start)] if during else []))
    return start


async def watch_health(http, url: str, until: float, down: list[float]) -> None:
    """Poll /health every 20 ms; append each poll's time that was not a 200."""
    while time.perf_counter() < until:
        try:
            ok = (await http.get(f"{url}/health", timeout=2)).status_code == 200
        except Exception:
            ok = False
        if not ok:
            down.append(time.perf_counter())
        await asyncio.sleep(0.02)


def steady_and_fault(model: Path, texts: list[str], n: int, seconds: float) -> tuple[Tally, Tally, dict]:
    steady, faulty, fault = Tally(), Tally(), {}
    with Server(model) as server:
        asyncio.run(clients([server.url], texts, 2, 2, Tally()))  # warm-up
        asyncio.run(clients([server.url], texts, n, seconds, steady))
    with Server(model, env={"HEADKIT_SERVE_FAULTS": "1"}) as server:
        asyncio.run(clients([server.url], texts, 2, 2, Tally()))

        async def kill_halfway(http, start: float) -> None:
            await asyncio.sleep(seconds / 2)
            fault["at"] = time.perf_counter()
            injected = await http.post(f"{server.url}/debug/faults", json={"kill_worker": 1})
            fault["injected"], fault["down"] = injected.status_code == 200, []
            await watch_health(http, server.url, start + seconds, fault["down"])
            fault["restarts"] = (await http.get(f"{server.url}/health")).json()["restarts"]

        fault["start"] = asyncio.run(clients([server.url], texts, n, seconds, faulty, kill_halfway))
    fault["end"] = fault["start"] + seconds
    return steady, faulty, fault


def overload(model: Path, texts: list[str], capacity: float, seconds: float) -> tuple[Tally, float]:
    """Requests sent at 4x the measured capacity, whatever the answers (open loop, on a schedule
    of absolute times, so a slow loop sends a burst rather than less). Returns the texts/s sent."""
    import httpx

    tally, rate, sent = Tally(), 4 * capacity / PER_REQUEST, []  # requests per second

    async def stream(url: str) -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1024)) as http:
            rng, pending, start = random.Random(0), [], time.perf_counter()
            while (due := start + len(pending) / rate) < start + seconds:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                pending.append(
                    asyncio.create_task(post(http, url, {"texts": rng.sample(texts, PER_REQUEST)}, tally, 30))
                )
            sent.append(len(pending) * PER_REQUEST / (time.perf_counter() - start))
            await asyncio.gather(*pending)

    with Server(model, "--timeout", "5") as server:
        asyncio.run(clients([server.url], texts, 2, 2, Tally()))
        asyncio.run(stream(server.url))
    return tally, sent[0]


def heads_apart(directory: Path, texts: list[str], n: int, seconds: float) -> tuple[float, float]:
    """Texts answered by all 4 heads per second: one 4-head server, then 4 one-head servers."""
    from headkit import load, load_processor, save

    model = load(directory)
    singles = []
    for name in list(model.heads):
        one = load(directory)
        for other in [h for h in one.heads if h != name]:
            one.remove_head(other)
        singles.append(save(one, directory.parent / f"only-{name}", processor=load_processor("minilm")))
    together, apart = Tally(), Tally()
    with Server(directory) as server:
        asyncio.run(clients([server.url], texts, 2, 2, Tally()))
        asyncio.run(clients([server.url], texts, n, seconds, together))
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(singles)))}  # the cores shared out
    servers = [Server(s, env=threads) for s in singles]
    try:
        urls = [s.__enter__().url for s in servers]
        asyncio.run(clients(urls, texts, 2, 2, Tally()))
        asyncio.run(clients(urls, texts, n, seconds, apart))
    finally:
        for s in servers:
            s.__exit__()
    return sum(t for _, t in together.answered) / seconds, sum(t for _, t in apart.answered) / seconds


def hot_load(directory: Path, texts: list[str], n: int, seconds: float) -> tuple[Tally, dict[str, float]]:
    """A head save loaded through /admin halfway through the load: how long the load call took, and
    the first request naming the new head, sent as the call returns (its status and time)."""
    from headkit import MultiHeadModel, load, save_heads
    from headkit.heads import config_from_dict

    base = load(directory).backbone
    heads_dir = directory.parent / f"heads-{n}"
    extra = {"type": "classification", "labels": ["x", "y", "z"], "pooling": "mean"}
    save_heads(MultiHeadModel(base, {"colour": config_from_dict(extra)}), heads_dir / "colour")
    tally, timing = Tally(), {}
    with Server(directory, "--admin_key", ADMIN, "--heads_dir", str(heads_dir)) as server:
        asyncio.run(clients([server.url], texts, 2, 2, Tally()))

        async def load_halfway(http, start: float) -> None:
            await asyncio.sleep(seconds / 2)
            called = time.perf_counter()
            auth = {"authorization": f"Bearer {ADMIN}"}
            response = await http.post(f"{server.url}/admin/heads", json={"save": "colour"}, headers=auth)
            timing["load_s"] = time.perf_counter() - called
            assert response.status_code == 200, response.text
            timing.update(response.json()["seconds"])
            sent = time.perf_counter()
            answer = await http.post(f"{server.url}/predict", json={"texts": ["a"], "heads": ["colour"]}, timeout=60)
            timing["first_s"], timing["first_code"] = time.perf_counter() - sent, answer.status_code
            timing["first_after_call_s"] = time.perf_counter() - called

        asyncio.run(clients([server.url], texts, n, seconds, tally, load_halfway))
    return tally, timing


def row(name: str, tally: Tally, seconds: float) -> str:
    codes = " ".join(f"{k}:{v}" for k, v in sorted(tally.codes.items(), key=lambda kv: str(kv[0])))
    texts = sum(t for _, t in tally.answered)
    return (f"{name:<22}{len(tally.latencies):>9}{texts / seconds:>9.1f}{tally.quantile(0.5):>9.0f}"
            f"{tally.quantile(0.99):>9.0f}{tally.slowest:>9.1f}  {codes}")  # fmt: skip


def report(results: dict, seconds: float, short: float) -> list[str]:
    """Print each scenario's table row and findings; the goals missed."""
    steady, faulty, fault, flood = results["steady"], results["faulty"], results["fault"], results["flood"]
    loaded, capacity = results["hot"][max(results["hot"])][0], results["capacity"]
    print(f"{'scenario':<22}{'requests':>9}{'texts/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max s':>9}  answers by code")
    for name, tally, span in (("1 steady", steady, seconds), ("2 worker killed once", faulty, seconds),
                              ("3 overload 4x", flood, short), ("5 head hot-loaded", loaded, short)):  # fmt: skip
        print(row(name, tally, span))
    down = fault["down"]  # the times of the /health polls that were not 200
    reported = (down[-1] - down[0]) if down else 0.0
    before = faulty.rate(fault["start"], fault["at"])
    after = faulty.rate(fault["at"] + max(reported, 1.0), fault["end"])
    seen = f", the first {down[0] - fault['at']:.2f} s after the fault was injected" if down else ""
    print(f"2: fault injected: {fault['injected']}, worker restarts {fault['restarts']}; /health polls (20 ms apart "
          f"plus their round trip) not 200: {len(down)}{seen}, over {reported:.2f} s; texts/s before {before:.1f}, "
          f"after recovery {after:.1f} ({after / max(before, 1e-9):.2f}x); requests without an answer: "
          f"{faulty.codes['transport']}")  # fmt: skip
    share = {k: flood.codes[k] / max(sum(flood.codes.values()), 1) for k in (429, 504, 200)}
    goodput = sum(n for _, n in flood.answered) / short
    print(f"3: {results['offered']:.0f} texts/s sent ({results['offered'] / capacity:.1f}x capacity): 429 "
          f"{share[429]:.1%}, 504 {share[504]:.1%}, 200 {share[200]:.1%}, no answer {flood.codes['transport']}; "
          f"texts predicted {goodput:.1f}/s ({goodput / capacity:.2f}x capacity)")  # fmt: skip
    ratio = results["together"] / max(results["apart"], 1e-9)
    print(f"4: 4 heads in one server {results['together']:.1f} texts/s vs 4 one-head servers {results['apart']:.1f}: "
          f"{ratio:.2f}x (goal >= 3.2x)")  # fmt: skip
    missed = []
    for clients, (tally, t) in results["hot"].items():
        print(f"5 ({clients} clients): failed requests {len(tally.latencies) - tally.codes[200]}; the load call took "
              f"{t['load_s']:.2f} s (read {t['read']:.2f}, waiting for the batch in progress {t['waited']:.2f}, "
              f"built {t['built']:.2f}); the first request naming the new head, sent as it returned: "
              f"{t['first_code']} after {t['first_s']:.2f} s, {t['first_after_call_s']:.2f} s after the load call "
              f"(goal < 1 s; the median request under this load took {tally.quantile(0.5) / 1000:.2f} s)")  # fmt: skip
        late = t["first_code"] != 200 or t["first_after_call_s"] > 1
        missed += [f"5 ({clients} clients): a failed request or a late head"] * (
            tally.codes[200] != len(tally.latencies) or late
        )
    missed += ["1: errors"] * (sum(steady.codes.values()) != steady.codes[200])
    missed += ["2: a request without an answer"] * (faulty.codes["transport"] > 0 or faulty.slowest > 31)
    missed += ["2: no fault happened"] * (not fault["injected"] or fault["restarts"] != 1 or not faulty.codes[503])
    missed += ["3: timeouts under overload"] * (flood.codes[504] + flood.codes["transport"] > 0)
    missed += ["3: overload refused more than it had to"] * (goodput < 0.5 * capacity)
    missed += ["4: one server under 3.2x"] * (ratio < 3.2)
    return missed


def main() -> int:
    from machine import machine_line

    from headkit.data.builtin import rotten_tomatoes

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60, help="scenarios 1 and 2")
    parser.add_argument("--short-seconds", type=float, default=20, help="scenarios 3, 4 and 5")
    args = parser.parse_args()
    n, seconds, short = min(args.clients, MAX_CLIENTS), min(args.seconds, MAX_SECONDS), min(args.short_seconds, 60)
    texts = [r["text"] for r in rotten_tomatoes()[:2000]]
    print(machine_line())
    print(f"headkit serve, 4-head MiniLM, {PER_REQUEST} texts per request, {n} clients; loopback")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = save_model(Path(tmp))
        results["steady"], results["faulty"], results["fault"] = steady_and_fault(model, texts, n, seconds)
        results["capacity"] = sum(t for _, t in results["steady"].answered) / seconds
        results["flood"], results["offered"] = overload(model, texts, results["capacity"], short)
        results["together"], results["apart"] = heads_apart(model, texts, n, short)
        results["hot"] = {clients: hot_load(model, texts, clients, short) for clients in sorted({n, 8})}
    missed = report(results, seconds, short)
    print("goals missed: " + (", ".join(missed) if missed else "none"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
