"""`headkit serve` in a subprocess for the tests that need a real server: a free loopback port and
waiting until it answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run, *options: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`headkit serve RUN --port P OPTIONS...`, stderr kept; returns the process and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "headkit", "serve", str(run), "--port", str(port), *options]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process, f"http://127.0.0.1:{port}"


def wait_until_ready(process: subprocess.Popen, url: str, seconds: float = 120) -> None:
    """Until GET /ready answers 200; fails with the server's stderr if it exits or never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"the server on {url} was not ready within {seconds:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
