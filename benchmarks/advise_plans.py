"""`headkit advise` on the shipped data at several sizes: which plan, which rule, what it costs.

Writes each scenario's labelled file (and a 1,000-row held-out test file per dataset, never
drawn for training) under --out, asks the advisor for a plan with the same budget, and prints
one row per scenario. `--run` carries the plans of the named scenarios out (`advise --run`) and
scores them on the held-out rows; `--also lora,frozen` trains those alternatives on the same
rows with the advisor's own recipe for each (the settings its plan would use), for comparison.
The files are the README walkthrough's, so its commands can be pasted after this.

    python benchmarks/advise_plans.py [--budget 10] [--run rt-400 --also lora]

Scenarios (seeded draws from a shuffle of each dataset; `fewshot.split` and `fewshot.sample`):
  rt-24      12 Rotten Tomatoes reviews per class          bbc-40    8 BBC articles per class
  rt-400     400 reviews drawn at random                    bbc-400   400 articles at random
  rt-2000    2,000 reviews                                  words-60  60 words, pleasantness score
                                                            words-600 600 words, the same score
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fewshot import sample, split, split_rows, write_csv

TEST_ROWS = 1000


def word_split(n_test: int) -> tuple[list[dict], list[dict]]:
    """Whissell's words with their pleasantness score as the label: a regression target."""
    from headkit.data.builtin import word_scores

    return split_rows([{"text": r["text"], "label": r["pleasantness"]} for r in word_scores()], n_test)


def scenarios() -> dict[str, tuple[str, list[dict]]]:
    """Scenario name -> (dataset key, training rows)."""
    out = {}
    pools = {
        "rt": split("rotten_tomatoes", TEST_ROWS),
        "bbc": split("bbc_news", TEST_ROWS),
        "words": word_split(TEST_ROWS),
    }
    for name, (dataset, kind, n) in {
        "rt-24": ("rt", "per_class", 12),
        "rt-400": ("rt", "random", 400),
        "rt-2000": ("rt", "random", 2000),
        "bbc-40": ("bbc", "per_class", 8),
        "bbc-400": ("bbc", "random", 400),
        "words-60": ("words", "random", 60),
        "words-600": ("words", "random", 600),
    }.items():
        pool = pools[dataset][1]
        out[name] = (dataset, sample(pool, n, seed=0) if kind == "per_class" else pool[:n])
    return out | {f"{d}-test": (d, pools[d][0]) for d in pools}


def held_out_score(run_dir: Path, test_file: Path) -> str:
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset

    model, tokenizer = load_for_inference(str(run_dir))
    head = next(iter(model.heads))
    result, _ = evaluate_dataset(model, tokenizer, str(test_file), {head: "label"}, "text", 128, 64)
    scores = result.scores[head]
    key = next((k for k in ("accuracy", "f1_micro", "r2") if k in scores), next(iter(scores)))
    return f"{key} {scores[key]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/advise", help="where the data files and runs go")
    parser.add_argument("--budget", type=float, default=10.0, help="minutes, the same for every scenario")
    parser.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    parser.add_argument("--run", default="", help="comma-separated scenarios whose plan to carry out and score")
    parser.add_argument("--also", default="", help="comma-separated strategies to train on the --run rows too")
    args = parser.parse_args()

    from headkit.advise.plan import advise, head_spec, run_plan, train_options
    from headkit.training.recipe import TrainConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = scenarios()
    files = {name: write_csv(rows, out / f"{name}.csv") for name, (_, rows) in data.items()}
    print(f"data files in {out}/ (test files: {TEST_ROWS} held-out rows per dataset)")
    wanted = [s for s in (args.only.split(",") if args.only else files) if not s.endswith("-test")]
    header = f"{'scenario':10} {'rows':>5}  {'smallest class':>14}  {'plan':9} rule  {'est.':>8}  all estimates"
    print(header + "\n" + "-" * len(header))
    plans = {}
    for name in wanted:
        facts, _, plan = advise(str(files[name]), budget=args.budget, output_dir=str(out / f"{name}-advised"))
        plans[name] = (facts, plan)
        smallest = str(facts.min_per_class) if facts.class_counts else "-"
        estimates = " ".join(f"{k} {v:.0f}s" for k, v in sorted(plan.costs.items(), key=lambda kv: kv[1]))
        strategy = plan.strategy.split(":")[0]
        cost = f"{plan.costs[strategy]:.0f} s"
        row = f"{name:10} {facts.labelled:>5}  {smallest:>14}  {plan.strategy:9} {plan.rule:>4}  {cost:>8}"
        print(f"{row}  {estimates}")
        for reason in plan.reasons:
            print(f"{'':12}- {reason}")

    for name in [s for s in args.run.split(",") if s]:
        facts, plan = plans[name]
        test_file = files[f"{data[name][0]}-test"]
        started = time.perf_counter()
        result = run_plan(plan, facts, "minilm", str(out / f"{name}-advised"), [], overwrite=True, progress=False)
        took = time.perf_counter() - started
        print(
            f"{name}: advised {plan.strategy} took {took:.1f} s (training {result.metrics['seconds']} s), "
            f"estimated {plan.costs[plan.strategy.split(':')[0]]:.0f} s, "
            f"held out: {held_out_score(result.run_dir, test_file)}"
        )
        for strategy in [s for s in args.also.split(",") if s and s != plan.strategy]:
            options = train_options(replace(plan, strategy=strategy))  # the advisor's recipe for it
            config = TrainConfig(
                model="minilm",
                data=str(files[name]),
                head=[head_spec(facts)],
                output_dir=str(out / f"{name}-{strategy}"),
                overwrite=True,
                progress=False,
                **options,
            )
            result = train(config)
            print(
                f"{name}: {strategy} instead, training {result.metrics['seconds']} s, "
                f"estimated {plan.costs.get(strategy, float('nan')):.0f} s, "
                f"held out: {held_out_score(result.run_dir, test_file)}"
            )


if __name__ == "__main__":
    main()
