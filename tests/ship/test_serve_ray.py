"""`headkit serve --replicas N`: the same app in N Ray Serve replicas, on a local Ray cluster (loopback only)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from served import start_server, stop, wait_until_ready

from conftest import SERVED_HEADS

pytestmark = pytest.mark.xdist_group("ray")  # one local Ray cluster at a time

# Prints the replica states once both replicas run, or the last states seen after 200 s (a replica
# starts a fresh Python, torch and the model: on a busy 2-core machine that takes a while).
WAIT_FOR_REPLICAS = """
import time
import ray
from ray import serve
ray.init(address="auto")
deadline = time.monotonic() + 200
while True:
    states = serve.status().applications["headkit"].deployments["headkit"].replica_states
    if states.get("RUNNING") == 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(dict(states))
"""


def test_two_replicas_answer_every_head_behind_the_key(saved_multihead):
    ray_dir = tempfile.mkdtemp(prefix="ray")  # Ray's socket paths must stay under 108 bytes
    env = {"HEADKIT_API_KEY": "k", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_dir}
    options = ("--replicas", "2", "--engine", "torch", "--device", "cpu")
    server, url = start_server(saved_multihead, *options, env={**os.environ, **env})
    try:
        wait_until_ready(server, url, seconds=180)  # the proxy answers once one replica runs
        states = subprocess.run([sys.executable, "-c", WAIT_FOR_REPLICAS], env={**os.environ, **env},
                                capture_output=True, text=True, timeout=240)  # fmt: skip
        assert "'RUNNING': 2" in states.stdout, (states.stdout, states.stderr[-2000:])
        assert httpx.post(f"{url}/predict", json={"texts": ["good"]}, timeout=30).status_code == 401
        auth = {"authorization": "Bearer k"}
        answers = [httpx.post(f"{url}/predict", json={"texts": ["good", f"bad {i}"]}, headers=auth, timeout=30)
                   for i in range(8)]  # fmt: skip
        assert [a.status_code for a in answers] == [200] * 8
        assert all(set(p) >= set(SERVED_HEADS) for a in answers for p in a.json()["predictions"])
    finally:
        stop(server)
        end_ray_processes(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)


def end_ray_processes(ray_dir: str, seconds: float = 10) -> None:
    """Kills what is left of the Ray cluster the server started (processes with a file open under
    its folder) after `seconds`. Ray's agents end when they see their raylet gone, but where PID 1
    does not reap orphans (containers) the raylet stays a zombie and they wait for it forever."""
    deadline = time.monotonic() + seconds
    while (left := processes_using(ray_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def processes_using(folder: str) -> list[int]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours
            if any(os.readlink(fd).startswith(folder + os.sep) for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
    return pids
