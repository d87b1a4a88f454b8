"""Few-shot as a user meets it: the setfit package at its defaults (20 iterations, batch 16) against
`headkit train --strategy fewshot` at its defaults (the same counts) and with fewer pairs.

The same rows for every method (benchmarks/fewshot.py's fixed 500-row test set and k examples
per class per seed), MiniLM, 64 tokens. Reported per dataset: mean accuracy, the mean paired
difference against setfit, and mean training seconds (load to trained classifier).

    python benchmarks/fewshot_defaults.py [--seeds 3] [--k 8] [--iterations 20,2,0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import fewshot as fb
    from machine import machine_line

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--k", type=int, default=8, help="examples per class")
    parser.add_argument("--iterations", default="20,2,0", help="headkit's fewshot_iterations to run")
    parser.add_argument("--datasets", default="rotten_tomatoes,bbc_news")
    args = parser.parse_args()
    iterations = [int(i) for i in args.iterations.split(",")]
    rows = []
    for name in args.datasets.split(","):
        test, pool = fb.split(name, 500)
        with tempfile.TemporaryDirectory() as tmp:
            test_csv = fb.write_csv(test, Path(tmp) / "test.csv")
            for seed in range(args.seeds):
                train = fb.sample(pool, args.k, seed)
                row = {"data": name, "seed": seed, "setfit": fb.run_setfit(train, test, 20, 64, seed)}
                for it in iterations:
                    work = Path(tmp) / f"h{it}"
                    work.mkdir(exist_ok=True)
                    row[f"headkit {it}"] = fb.run_headkit(train, test_csv, it, 64, seed, work)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(machine_line())
    print(f"\n{args.k} per class, {args.seeds} seeds, 500 test rows; setfit at its defaults (20 iterations)")
    print(f"{'dataset':16}{'method':22}{'accuracy':>10}{'vs setfit':>11}{'seconds':>9}{'time':>8}")
    for name in args.datasets.split(","):
        mine = [r for r in rows if r["data"] == name]
        base_time = statistics.mean(r["setfit"][1] for r in mine)
        for method in ["setfit", *(f"headkit {it}" for it in iterations)]:
            accuracy = statistics.mean(r[method][0] for r in mine)
            paired = statistics.mean(r[method][0] - r["setfit"][0] for r in mine)
            seconds = statistics.mean(r[method][1] for r in mine)
            label = method if method == "setfit" else f"{method} iterations"
            print(f"{name:16}{label:22}{accuracy:10.4f}{paired:+10.4f} {seconds:9.1f}{seconds / base_time:7.2f}x")


if __name__ == "__main__":
    main()
