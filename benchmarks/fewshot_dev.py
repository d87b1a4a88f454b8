"""Choose the few-shot recipe on a development split, never on the test rows.

fewshot_defaults.py reports the defaults on benchmarks/fewshot.py's fixed 500-row test set;
choosing the defaults on those same rows would fit them to the test. This script holds out the
next 500 rows of the same fixed shuffle as a development set, draws the k-per-class training
examples from what remains (seeds 100 on, not the report's 0 on), and scores each candidate
recipe there. A candidate earns a place in the defaults only if it wins here and then holds on
the test rows in fewshot_defaults.py.

    python benchmarks/fewshot_dev.py [--k 8] [--seeds 5] [--datasets rotten_tomatoes,bbc_news]
        [--configs 'default; backbone_lr=1e-4; fewshot_steps=20']

Each config is `;`-separated, its TrainConfig options `,`-separated (`name=value`); `default` is
the strategy alone. Prints dev accuracy, the paired difference against the first config ± its
standard error over seeds, and mean seconds. Rows are appended to --out as they finish.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

N_TEST = N_DEV = 500
FIRST_SEED = 100  # the report (fewshot_defaults.py) uses seeds 0 on


def run(datasets: list[str], k: int, seeds: int, configs: dict[str, dict], out: Path) -> list[dict]:
    import fewshot as fb

    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in datasets:
        _, rest = fb.split(name, N_TEST)
        dev, pool = rest[:N_DEV], rest[N_DEV:]
        with tempfile.TemporaryDirectory() as tmp:
            dev_csv = fb.write_csv(dev, Path(tmp) / "dev.csv")
            work = Path(tmp) / "run"
            work.mkdir()
            for seed in range(FIRST_SEED, FIRST_SEED + seeds):
                train = fb.sample(pool, k, seed)
                row = {"data": name, "k": k, "seed": seed}
                for label, options in configs.items():
                    row[label] = fb.run_headkit(train, dev_csv, 64, seed, work, **options)
                rows.append(row)
                fb.append_row(out, row)
    return rows


def print_table(rows: list[dict], labels: list[str]) -> None:
    from fewshot import paired

    base = labels[0]
    print(f"{'dataset':16}{'k':>4}  {'config':44}{'dev acc':>9}{'vs ' + base[:12] + ' ± s.e.':>26}{'seconds':>9}")
    for name, k in sorted({(r["data"], r["k"]) for r in rows}):
        mine = [r for r in rows if r["data"] == name and r["k"] == k]
        for label in labels:
            difference, error = paired([r[label][0] - r[base][0] for r in mine])
            print(
                f"{name:16}{k:>4}  {label[:44]:44}{statistics.mean(r[label][0] for r in mine):9.4f}"
                f"{difference:+17.4f} ± {error:.4f}"
                f"{statistics.mean(r[label][1] for r in mine):9.1f}"
            )


def main() -> None:
    from machine import machine_line

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=8, help="examples per class")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", default="rotten_tomatoes,bbc_news")
    parser.add_argument(
        "--configs", default="default; backbone_lr=1e-4; backbone_lr=4e-4; fewshot_tuned_layers=2; fewshot_steps=20"
    )
    parser.add_argument("--out", default="runs/bench/fewshot_dev.jsonl")
    args = parser.parse_args()
    from fewshot import parse_configs

    configs = parse_configs(args.configs)
    rows = run(args.datasets.split(","), args.k, args.seeds, configs, Path(args.out))
    print(machine_line())
    print(f"\n{args.k} per class, seeds {FIRST_SEED}-{FIRST_SEED + args.seeds - 1}, {N_DEV} development rows")
    print_table(rows, list(configs))


if __name__ == "__main__":
    main()
