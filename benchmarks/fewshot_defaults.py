"""Few-shot as a user meets it: the setfit package at its defaults (20 iterations, batch 16) against
`headkit train --strategy fewshot` at its defaults (all-pairs: 10 steps of 64 examples, the top
half of the backbone tuned) and at other step counts (the time/accuracy curve; 0 = heads solved
on the pretrained features).

The same rows for every method (benchmarks/fewshot.py's fixed 500-row test set and k examples
per class per seed), MiniLM, 64 tokens. Reported per dataset: mean accuracy, the mean paired
difference against setfit with the seeds where headkit is at least setfit's, and mean training
seconds (load to trained classifier; headkit's includes writing the run) and their ratio.

    python benchmarks/fewshot_defaults.py [--seeds 5] [--k 8] [--steps 10,5,20,0]
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
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--k", type=int, default=8, help="examples per class")
    parser.add_argument("--steps", default="10,5,20,0", help="headkit's fewshot_steps to run (10: its default)")
    parser.add_argument("--datasets", default="rotten_tomatoes,bbc_news")
    args = parser.parse_args()
    steps = [int(i) for i in args.steps.split(",")]
    rows = []
    for name in args.datasets.split(","):
        test, pool = fb.split(name, 500)
        with tempfile.TemporaryDirectory() as tmp:
            test_csv = fb.write_csv(test, Path(tmp) / "test.csv")
            for seed in range(args.seeds):
                train = fb.sample(pool, args.k, seed)
                row = {"data": name, "seed": seed, "setfit": fb.run_setfit(train, test, 20, 64, seed)}
                for n in steps:
                    work = Path(tmp) / f"h{n}"
                    work.mkdir(exist_ok=True)
                    options = {} if n == 10 else {"fewshot_steps": n}  # 10: nothing but the strategy
                    row[f"headkit {n}"] = fb.run_headkit(train, test_csv, 64, seed, work, **options)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(machine_line())
    print(f"\n{args.k} per class, {args.seeds} seeds, 500 test rows; setfit at its defaults (20 iterations)")
    print(f"{'dataset':16}{'method':26}{'accuracy':>10}{'vs setfit':>11}{'>= setfit':>10}{'seconds':>9}{'time':>8}")
    for name in args.datasets.split(","):
        mine = [r for r in rows if r["data"] == name]
        base_time = statistics.mean(r["setfit"][1] for r in mine)
        for method in ["setfit", *(f"headkit {n}" for n in steps)]:
            accuracy = statistics.mean(r[method][0] for r in mine)
            paired = statistics.mean(r[method][0] - r["setfit"][0] for r in mine)
            at_least = sum(r[method][0] >= r["setfit"][0] for r in mine)
            seconds = statistics.mean(r[method][1] for r in mine)
            label = method if method == "setfit" else f"{method} steps"
            label += " (default)" if method == "headkit 10" else ""
            print(
                f"{name:16}{label:26}{accuracy:10.4f}{paired:+10.4f} {at_least:>5}/{len(mine)}"
                f"{seconds:9.1f}{seconds / base_time:7.2f}x"
            )


if __name__ == "__main__":
    main()
