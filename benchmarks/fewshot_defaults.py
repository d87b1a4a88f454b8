"""Few-shot as a user meets it: the setfit package at its defaults (20 iterations, batch 16) against
`headkit train --strategy fewshot` at its defaults (the all-pairs recipe of STRATEGY_DEFAULTS and
fewshot_auto_steps in headkit.training.strategy_defaults: one step per 4 labelled examples, 10 to 40)
and at fixed step counts (the time/accuracy curve; 0 = heads solved on the pretrained features).

The same rows for every method (benchmarks/fewshot.py's fixed 500-row test set and k examples
per class per seed), MiniLM, 64 tokens. Reported per dataset: mean accuracy, the mean paired
difference against setfit ± its standard error over seeds, the seeds where headkit is at least
setfit's, and mean training seconds (load to trained classifier; headkit's includes writing the
run) and their ratio.

    python benchmarks/fewshot_defaults.py [--seeds 5] [--k 8] [--steps default,5,20,40,0]
        [--configs 'batch_size=8,fewshot_steps=128']   # other recipes (TrainConfig options), as fewshot_dev.py
    python benchmarks/fewshot_defaults.py --table runs/bench/fewshot_defaults.jsonl

`--setfit_from FILE` takes setfit's accuracy and seconds from that file's rows of the same dataset,
k and seed (same rows, same machine) instead of running setfit again: setfit at 64 per class
takes ~5 (RT) and ~15 (BBC) minutes per seed here. The time ratio then spans two runs.

Every seed's row is appended to --out (JSON lines) as it finishes, so an interrupted run keeps them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def run(
    datasets: list[str], k: int, seeds: int, configs: dict[str, dict], out: Path, setfit_from: str | None
) -> list[dict]:
    import fewshot as fb

    earlier = {(r["data"], r["k"], r["seed"]): r["setfit"] for r in fb.read_rows(setfit_from)} if setfit_from else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in datasets:
        test, pool = fb.split(name, 500)
        with tempfile.TemporaryDirectory() as tmp:
            test_csv = fb.write_csv(test, Path(tmp) / "test.csv")
            for seed in range(seeds):
                train = fb.sample(pool, k, seed)
                reused = (name, k, seed) in earlier
                setfit = earlier[name, k, seed] if reused else fb.run_setfit(train, test, 20, 64, seed)
                row = {"data": name, "k": k, "seed": seed, "setfit": setfit, "setfit_reused": reused}
                for number, (label, options) in enumerate(configs.items()):
                    work = Path(tmp) / f"h{number}"
                    work.mkdir(exist_ok=True)
                    row[f"headkit {label}"] = fb.run_headkit(train, test_csv, 64, seed, work, **options)
                rows.append(row)
                fb.append_row(out, row)
    return rows


def print_table(rows: list[dict]) -> None:
    from fewshot import paired

    width = max([26, *(len(m) + 7 for r in rows for m in r if m.startswith("headkit"))])  # + " steps"
    print(f"{'dataset':16}{'k':>4}  {'method':{width}}{'accuracy':>9}{'vs setfit ± s.e.':>19}{'>= setfit':>10}", end="")
    print(f"{'seconds':>9}{'time':>8}")
    for name, k in sorted({(r["data"], r.get("k", 8)) for r in rows}):
        mine = [r for r in rows if r["data"] == name and r.get("k", 8) == k]
        base_time = statistics.mean(r["setfit"][1] for r in mine)
        methods = [m for m in mine[0] if m == "setfit" or m.startswith("headkit")]
        for method in methods:
            accuracy = statistics.mean(r[method][0] for r in mine)
            differences = [r[method][0] - r["setfit"][0] for r in mine]
            difference, error = paired(differences)
            at_least = sum(d >= 0 for d in differences)
            seconds = statistics.mean(r[method][1] for r in mine)
            label = method if method in ("setfit", "headkit default") or "=" in method else f"{method} steps"
            print(
                f"{name:16}{k:>4}  {label:{width}}{accuracy:9.4f}{difference:+11.4f} ± {error:.4f}"
                f"{at_least:>6}/{len(mine)}{seconds:9.1f}{seconds / base_time:7.2f}x"
            )
    reused = sorted({(r["data"], r["k"]) for r in rows if r.get("setfit_reused")})
    if reused:
        print(f"setfit's rows for {reused} come from an earlier run (--setfit_from): their time ratio spans two runs")


def main() -> None:
    from machine import machine_line

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--k", type=int, default=8, help="examples per class")
    parser.add_argument(
        "--steps", default="default,5,20,40,0", help="headkit's fewshot_steps to run (default: none given)"
    )
    parser.add_argument("--configs", default="", help="more headkit recipes: ';'-separated TrainConfig options")
    parser.add_argument("--setfit_from", help="reuse setfit's results from this JSON-lines file's matching rows")
    parser.add_argument("--datasets", default="rotten_tomatoes,bbc_news")
    parser.add_argument("--out", default="runs/bench/fewshot_defaults.jsonl")
    parser.add_argument("--table", help="only print the table of the rows in this JSON-lines file")
    args = parser.parse_args()
    if args.table:
        from fewshot import read_rows

        rows = read_rows(args.table)
    else:
        from fewshot import parse_configs

        # default: nothing but the strategy; a number: that many steps
        configs = {n: {} if n == "default" else {"fewshot_steps": int(n)} for n in args.steps.split(",") if n}
        configs.update(parse_configs(args.configs))
        rows = run(args.datasets.split(","), args.k, args.seeds, configs, Path(args.out), args.setfit_from)
        print(machine_line())
        print(f"\n{args.k} per class, {args.seeds} seeds, 500 test rows; setfit at its defaults (20 iterations)")
    print_table(rows)


if __name__ == "__main__":
    main()
