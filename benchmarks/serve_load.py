"""Load test for `headkit serve`: concurrent clients on loopback, bounded in number and time.

Starts `headkit serve` on 127.0.0.1 for a 4-head MiniLM model (heads untrained: the cost of a
forward pass does not depend on the weights), then:
  1. one client sending requests back to back (the baseline, same run),
  2. N concurrent clients for the same time (the server batches their texts into shared passes),
  3. every kind of invalid request, checking each gets its 4xx,
  4. that the server still answers /health and its process is alive.
Prints throughput, p50/p99 latency and errors; exits non-zero if any valid request failed, any
invalid one got the wrong status, or the server died.

Each engine (default: torch, then onnx-int8 from an export made here) gets its own server, and
the engines' throughput at N clients is compared in the same run.

    python benchmarks/serve_load.py [--clients 16] [--seconds 20] [--texts-per-request 4] [--engines torch,onnx-int8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

HOST = "127.0.0.1"  # loopback only
MAX_CLIENTS, MAX_SECONDS = 64, 120


def save_model(directory: Path) -> Path:
    from headkit import MultiHeadModel, load_processor, save

    heads = {
        "sentiment": {"type": "classification", "labels": ["neg", "pos"], "pooling": "pooler"},
        "topic": {"type": "classification", "labels": [f"t{i}" for i in range(5)], "pooling": "mean"},
        "genres": {"type": "multilabel", "labels": ["drama", "comedy", "crime"], "pooling": "mean"},
        "entities": {"type": "token-classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
    }
    model = MultiHeadModel.from_pretrained("minilm", heads=heads)
    return save(model, directory / "model", processor=load_processor("minilm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def client_loop(http, url: str, texts: list[str], per_request: int, until: float, seed: int, record) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < until:
        batch = rng.sample(texts, per_request)
        started = time.perf_counter()
        try:
            response = await http.post(f"{url}/predict", json={"texts": batch})
            ok = response.status_code == 200 and len(response.json()["predictions"]) == per_request
        except Exception:  # a transport error is an error to count, not to crash on
            ok = False
        record(time.perf_counter() - started, ok, per_request)


async def load(url: str, texts: list[str], clients: int, seconds: float, per_request: int) -> dict:
    import httpx

    latencies, errors, done = [], 0, 0

    def record(latency: float, ok: bool, n: int) -> None:
        nonlocal errors, done
        latencies.append(latency)
        errors += not ok
        done += n if ok else 0

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(client_loop(http, url, texts, per_request, until, i, record) for i in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {
        "requests": len(latencies),
        "errors": errors,
        "texts_per_s": done / elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
    }


INVALID = [
    ("empty list", {"json": {"texts": []}}, 422),
    ("non-string item", {"json": {"texts": ["ok", 1]}}, 422),
    ("unknown head", {"json": {"texts": ["ok"], "heads": ["nope"]}}, 422),
    ("malformed JSON", {"content": b'{"texts": [', "headers": {"content-type": "application/json"}}, 422),
    ("text over the limit", {"json": {"texts": ["x" * 20_001]}}, 413),
    ("too many texts", {"json": {"texts": ["ok"] * 65}}, 413),
]


def check_invalid(url: str) -> list[tuple[str, int, int]]:
    import httpx

    return [
        (name, expected, httpx.post(f"{url}/predict", timeout=30, **kw).status_code) for name, kw, expected in INVALID
    ]


def measure(target: Path, engine: str, texts: list[str], clients: int, seconds: float, per_request: int) -> dict:
    """Start `headkit serve` on `target` with `engine`; time 1 client, then `clients`; check bad requests."""
    import httpx

    port = free_port()
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "headkit", "serve", str(target), "--host", HOST, "--port", str(port)]
    server = subprocess.Popen([*command, "--engine", engine], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        asyncio.run(load(url, texts, 2, 2, per_request))  # warm-up
        single = asyncio.run(load(url, texts, 1, seconds, per_request))
        many = asyncio.run(load(url, texts, clients, seconds, per_request))
        invalid = check_invalid(url)
        healthy = httpx.get(f"{url}/health", timeout=10).status_code == 200 and server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"single": single, "many": many, "invalid": invalid, "healthy": healthy}


def main() -> int:
    from headkit.data.builtin import rotten_tomatoes
    from headkit.ship.export import export_onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--texts-per-request", type=int, default=4)
    parser.add_argument("--engines", default="torch,onnx-int8", help="comma-separated: torch, onnx, onnx-int8")
    args = parser.parse_args()
    clients, seconds = min(args.clients, MAX_CLIENTS), min(args.seconds, MAX_SECONDS)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    texts = [r["text"] for r in rotten_tomatoes()[:2000]]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(Path(tmp))
        if any(e != "torch" for e in engines):
            export_onnx(model_dir, Path(tmp) / "onnx", quantize=True)
        for engine in engines:
            target = model_dir if engine == "torch" else Path(tmp) / "onnx"
            results[engine] = measure(target, engine, texts, clients, seconds, args.texts_per_request)
    from machine import machine_line

    print(machine_line())
    print(f"headkit serve, 4-head MiniLM, {args.texts_per_request} texts per request, {seconds:.0f} s per phase")
    print(
        f"{'engine':>10}{'clients':>8}{'requests':>10}{'errors':>8}{'texts/s':>10}{'req/s':>8}"
        f"{'p50 ms':>9}{'p99 ms':>9}"
    )
    failed = 0
    for engine, result in results.items():
        for n, r in ((1, result["single"]), (clients, result["many"])):
            print(
                f"{engine:>10}{n:8}{r['requests']:10}{r['errors']:8}{r['texts_per_s']:10.1f}{r['requests_per_s']:8.1f}"
                f"{r['p50_ms']:9.1f}{r['p99_ms']:9.1f}"
            )
        gain = result["many"]["texts_per_s"] / result["single"]["texts_per_s"]
        print(f"{engine}: throughput with {clients} clients vs 1: {gain:.2f}x")
        wrong = [(name, expected, got) for name, expected, got in result["invalid"] if expected != got]
        for name, expected, got in wrong:
            print(f"  {engine}: {name:22} expected {expected}, got {got}  <-- WRONG")
        print(f"{engine}: {len(result['invalid']) - len(wrong)}/{len(result['invalid'])} invalid requests got "
              f"their 4xx; server alive and healthy afterwards: {result['healthy']}")  # fmt: skip
        failed += result["single"]["errors"] + result["many"]["errors"] + len(wrong) + (not result["healthy"])
    if "torch" in results and len(results) > 1:
        base = results["torch"]["many"]["texts_per_s"]
        for engine, result in results.items():
            if engine != "torch":
                print(f"{engine} vs torch at {clients} clients: {result['many']['texts_per_s'] / base:.2f}x texts/s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
