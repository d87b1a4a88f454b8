"""`headkit serve --replicas N`: the same app in N Ray Serve replicas, on a local Ray cluster (loopback only)."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from conftest import SERVED_HEADS

pytestmark = pytest.mark.xdist_group("ray")  # one local Ray cluster at a time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_replicas_answer_every_head_behind_the_key(saved_multihead):
    port, ray_dir = _free_port(), tempfile.mkdtemp(prefix="ray")  # Ray's socket paths must stay under 108 bytes
    url = f"http://127.0.0.1:{port}"
    env = {"HEADKIT_API_KEY": "k", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_dir}
    command = [sys.executable, "-m", "headkit", "serve", str(saved_multihead), "--port", str(port),
               "--replicas", "2", "--engine", "torch", "--device", "cpu"]  # fmt: skip
    server = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stderr.read()[-3000:]
            time.sleep(0.1)
        assert httpx.post(f"{url}/predict", json={"texts": ["good"]}, timeout=30).status_code == 401
        auth = {"authorization": "Bearer k"}
        answers = [httpx.post(f"{url}/predict", json={"texts": ["good", f"bad {i}"]}, headers=auth, timeout=30)
                   for i in range(8)]  # fmt: skip
        assert [a.status_code for a in answers] == [200] * 8
        assert all(set(p) >= set(SERVED_HEADS) for a in answers for p in a.json()["predictions"])
        status = subprocess.run(
            [sys.executable, "-c", "from ray import serve; import ray; ray.init(address='auto');"
             "print(serve.status().applications['headkit'].deployments['headkit'].replica_states)"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "'RUNNING': 2" in status.stdout, status.stderr[-2000:]
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(ray_dir, ignore_errors=True)
