"""LoRA against full fine-tuning on Rotten Tomatoes: accuracy, trainable share, peak memory, time.

The fixed, seeded 80/20 split of benchmarks/accuracy.py (3,000 snippets, MiniLM, 64 tokens).
Each run is its own process, so its memory is measured alone, two ways: the process's peak
resident memory (the OS's ru_maxrss: Python, torch, tokenizer, data, weights and training), and
the training loop's own — the peak above the resident memory when the first epoch starts (model
loaded, data tokenised), which is where gradients, optimizer state and activations live and the
part a strategy can change (the CPU's counterpart of torch.cuda.max_memory_allocated after
loading; Linux's peak counter is reset at that moment through /proc/self/clear_refs). Accuracy
is on the 600 held-out snippets. Full fine-tuning is the baseline; each LoRA setting is compared with it in this run.
On 600 test snippets one point is 6 snippets: differences under a point are within seed noise.

    python benchmarks/lora_vs_full.py [--rt-limit 3000] [--configs all]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

# name -> TrainConfig overrides (3 epochs, no early stopping, no validation split: all train rows used)
CONFIGS = {
    "full": {"strategy": "full", "backbone_lr": 3e-5},
    "lora r8 query,value lr 5e-4": {
        "strategy": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_lr": 5e-4,
        "lora_targets": ["query", "value"],  # peft's choice for BERT, the old default
        "lora_dropout": 0.1,
    },
    "lora r8 all-linear lr 1e-3": {  # the name earlier README tables use: dropout 0.1, the old default
        "strategy": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_lr": 1e-3,
        "lora_targets": ["all-linear"],
        "lora_dropout": 0.1,
    },
    "lora r8 all-linear lr 1e-3 dropout 0": {  # the lora strategy's adapters (its heads now train at 1e-2)
        "strategy": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_lr": 1e-3,
        "lora_targets": ["all-linear"],
        "lora_dropout": 0.0,
    },
    "lora r8 all-linear lr 2e-3": {
        "strategy": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_lr": 2e-3,
        "lora_targets": ["all-linear"],
    },
}
# the same settings with every layer's activations recomputed in the backward pass
for _name in ("full", "lora r8 all-linear lr 1e-3 dropout 0"):
    CONFIGS[f"{_name} checkpointed"] = {**CONFIGS[_name], "gradient_checkpointing": True}
COMMON = {"epochs": 3, "lr": 1e-3, "patience": 0, "val_fraction": 0.0, "batch_size": 32}


def _status_mb(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure_training_memory() -> dict[str, float]:
    """Patch the loop so the returned dict gets `start` (resident MB as the first epoch begins,
    after which the peak counter is reset) and `peak` (the highest resident MB since, read after
    every epoch)."""
    import headkit.training.loop as loop

    marks: dict[str, float] = {}
    train_epoch, end_epoch = loop.train_epoch, loop.end_epoch

    def first_marked(*args):
        if "start" not in marks:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
            marks["start"] = _status_mb("VmRSS")
        return train_epoch(*args)

    def peak_read(*args):
        end_epoch(*args)
        marks["peak"] = max(marks.get("peak", 0.0), _status_mb("VmHWM"))

    loop.train_epoch, loop.end_epoch = first_marked, peak_read
    return marks


def run_one(name: str, train_csv: str, test_csv: str, out: str) -> None:
    """In a child process: train one setting, score it, print a JSON line."""
    from accuracy import MAX_LENGTH

    from headkit.data.tasks import TaskSpec
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset
    from headkit.training.recipe import TrainConfig, train

    marks = measure_training_memory()
    started = time.perf_counter()
    config = TrainConfig(model="minilm", tasks=[TaskSpec("y", train_csv)], output_dir=out, max_length=MAX_LENGTH,
                         progress=False, overwrite=True, **COMMON, **CONFIGS[name])  # fmt: skip
    result = train(config)
    seconds = time.perf_counter() - started
    model, tokenizer = load_for_inference(out)
    scores, _ = evaluate_dataset(model, tokenizer, test_csv, {"y": "label"}, max_length=MAX_LENGTH)
    print(json.dumps({
        "name": name, "accuracy": scores.scores["y"]["accuracy"], "seconds": seconds,
        "trainable": result.metrics["trainable_params"], "total": result.metrics["total_params"],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "training_mb": marks["peak"] - marks["start"],
    }))  # fmt: skip


def main() -> None:
    from accuracy import write_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rt-limit", type=int, default=3000)
    parser.add_argument("--configs", default="all", help="comma-separated names, or all")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # internal: NAME TRAIN TEST OUT
    args = parser.parse_args()
    if args.one:
        run_one(*args.one)
        return
    names = list(CONFIGS) if args.configs == "all" else [n.strip() for n in args.configs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_csv, test_csv = write_split("rotten_tomatoes", args.rt_limit, Path(tmp))
        for i, name in enumerate(names):
            command = [sys.executable, __file__, "--one", name, str(train_csv), str(test_csv), f"{tmp}/run{i}"]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"done: {rows[-1]}", file=sys.stderr)
    base = next((r for r in rows if r["name"] == "full"), rows[0])
    from machine import machine_line

    print(machine_line())
    print(f"\nRotten Tomatoes, {args.rt_limit} snippets (80/20, seed 0), MiniLM, 3 epochs, batch 32, 64 tokens")
    print(
        f"{'setting':32}{'accuracy':>9}{'vs full':>9}{'trainable':>11}{'process MB':>11}{'vs full':>9}"
        f"{'training MB':>12}{'vs full':>9}{'seconds':>9}"
    )
    for r in rows:
        share = 100 * r["trainable"] / r["total"]
        print(
            f"{r['name']:32}{r['accuracy']:9.4f}{100 * (r['accuracy'] - base['accuracy']):+8.1f}p"
            f"{share:10.2f}%{r['peak_mb']:11.0f}{100 * r['peak_mb'] / base['peak_mb']:8.0f}%"
            f"{r['training_mb']:12.0f}{100 * r['training_mb'] / base['training_mb']:8.0f}%{r['seconds']:9.1f}"
        )


if __name__ == "__main__":
    main()
