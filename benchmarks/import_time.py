"""Start-up time: `import headkit` and `headkit --help`, with `import torch` measured in the same run
as the baseline. Goal: each of the two under 1.5 s on the development machine, which `import torch`
alone exceeds, so neither may load torch (tests/test_lean_imports.py checks that they do not).

Each command runs in a fresh interpreter (as a user's shell, a subprocess or a test would), the
commands interleaved round by round so that a busy moment on a shared machine hits each alike;
the median of the rounds is reported, with the ratio to `import torch`. `python -c pass` is the
interpreter's own start-up. The load average is printed before and after: compare runs only at a
similar load. With --importtime DIR the `python -X importtime` logs of `import headkit` and
`headkit --help` are written there and their slowest imports printed.

    python benchmarks/import_time.py [--rounds 5] [--importtime DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import headkit": ["-c", "import headkit"],
    "headkit --help": ["-m", "headkit", "--help"],
    "import headkit.model": ["-c", "import headkit.model"],  # what loading a model needs, for context
    "import torch": ["-c", "import torch"],
}
GOAL_S = 1.5
GOALS = ("import headkit", "headkit --help")


def run_once(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(rounds: int) -> dict[str, list[float]]:
    """Wall times per command, interleaved; one unrecorded warm-up round fills the OS file cache."""
    for args in COMMANDS.values():
        run_once(args)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, args in COMMANDS.items():
            times[name].append(run_once(args))
    return times


def slowest_imports(log: str, top: int) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the slowest imports in a `-X importtime` log, nested
    ones included (indented as in the log), so that the chain that pulls a module in shows."""
    rows = []
    for line in log.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            rows.append((int(cumulative), name.rstrip()))
    return sorted(rows, key=lambda row: row[0], reverse=True)[:top]


def importtime_logs(directory: Path, top: int = 8) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in GOALS:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", *COMMANDS[name]], capture_output=True, text=True, check=True
        )
        path = directory / (name.replace(" ", "_").replace("-", "") + ".importtime.txt")
        path.write_text(done.stderr)
        print(f"\n{name}: slowest top-level imports (python -X importtime, cumulative; log: {path})")
        for micros, module in slowest_imports(done.stderr, top):
            print(f"  {micros / 1e6:7.3f} s {module}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--importtime", type=Path, default=None, help="write -X importtime logs to this directory")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"python {sys.version.split()[0]}, {cpus} CPUs; load average before: {os.getloadavg()[0]:.2f}")
    times = measure(args.rounds)
    torch_s = statistics.median(times["import torch"])
    print(f"{'command':<22} {'median s':>9} {'min s':>7} {'x import torch':>15}   ({args.rounds} rounds)")
    for name, values in times.items():
        median = statistics.median(values)
        goal = f"   goal < {GOAL_S} s: {'met' if median < GOAL_S else 'MISSED'}" if name in GOALS else ""
        print(f"{name:<22} {median:9.3f} {min(values):7.3f} {median / torch_s:15.2f}{goal}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.importtime:
        importtime_logs(args.importtime)


if __name__ == "__main__":
    main()
