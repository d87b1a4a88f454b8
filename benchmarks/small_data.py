"""Small data for every strategy: tweet NER and Rotten Tomatoes at a few sizes, each strategy at
its defaults, against transformers' own recipe.

Tweet NER (the shipped `tweet_ner`, 10 entity types in BIO tags): training sizes in sentences;
Rotten Tomatoes: training sizes per class. Both read a fixed seeded shuffle: the first 500 rows
are the test set, the next are the development set (300 NER sentences, 500 reviews), the rest
the pool the training rows are drawn from (seed per run). Recipes are chosen on `--split dev`;
the report is `--split test`. Every cell trains all-MiniLM-L6-v2 (shipped in a PyPI package)
with a token limit of 64:

  frozen, fewshot, full, lora   `headkit train --strategy S` at its defaults
  reference                     transformers' own recipe: AutoModelForTokenClassification (NER,
                                the run_ner example: first sub-word labelled) or
                                AutoModelForSequenceClassification (run_glue), Trainer at its
                                defaults (lr 5e-5, batch 8, 3 epochs, linear decay)

The score is entity-level F1 (seqeval) for NER, accuracy for reviews; labels the training rows
never had count as misses for both. headkit's epoch-based strategies hold out 10% of the training
rows to pick their best epoch (their default --val_fraction), so they train on 90% of what the
reference trains on; fewshot trains on all of it. Seconds: wall clock from loading the model to a trained
model, on this machine (its line is printed first). `advise` is `headkit advise`'s pick for the
training file (--advise; it times a step of each strategy, a few seconds per row).

    python benchmarks/small_data.py [--tasks ner,sentiment] [--sizes ner=50,100,400,all;sentiment=8,64,500]
        [--cells frozen,fewshot,full,lora,reference] [--split test|dev] [--seeds 1]
        [--configs 'full@backbone_lr=1e-4,epochs=10; full@lr=1e-2'] [--advise] [--skip ner/all/fewshot]
    python benchmarks/small_data.py --table runs/bench/small_data.jsonl

A config `STRATEGY@name=value,...` sets TrainConfig options on top of the strategy's defaults
(what --split dev compares); `--configs` adds such cells to --cells. Rows are appended to --out
(JSON lines) as they finish.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np

MAX_LENGTH = 64
N_TEST = 500
N_DEV = {"ner": 300, "sentiment": 500}
SIZES = {"ner": ["50", "100", "400", "all"], "sentiment": ["8", "64", "500"]}
HEAD = {"ner": ("entities", "tags", "token-classification"), "sentiment": ("label", "label", "classification")}
METRIC = {"ner": "f1", "sentiment": "accuracy"}


def task_rows(task: str) -> list[dict]:
    from headkit.data.builtin import BUILTIN_DATASETS

    return BUILTIN_DATASETS["tweet_ner" if task == "ner" else "rotten_tomatoes"]()


def splits(task: str) -> dict[str, list[dict]]:
    """test, dev and the training pool, from a fixed shuffle."""
    from fewshot import split_rows

    test, rest = split_rows(task_rows(task), N_TEST)
    return {"test": test, "dev": rest[: N_DEV[task]], "pool": rest[N_DEV[task] :]}


def draw(task: str, pool: list[dict], size: str, seed: int) -> list[dict]:
    """`size` sentences (NER; "all": the pool) or `size` reviews per class."""
    from fewshot import sample

    if task == "sentiment":
        return sample(pool, int(size), seed)
    if size == "all":
        return pool
    rng = np.random.default_rng(seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=int(size), replace=False))]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_headkit(task: str, train: Path, scored: Path, strategy: str, seed: int, work: Path, **options) -> tuple:
    """(score, seconds) of `headkit train --strategy` on `train`, scored on `scored`."""
    from headkit import load_processor
    from headkit.data.tasks import TaskSpec
    from headkit.training.evaluate import evaluate_dataset
    from headkit.training.recipe import TrainConfig
    from headkit.training.recipe import train as headkit_train

    name, label, kind = HEAD[task]
    config = TrainConfig(
        model="minilm", tasks=[TaskSpec(name, str(train), label=label, type=kind)], output_dir=str(work / "run"),
        strategy=strategy, max_length=MAX_LENGTH, seed=seed, overwrite=True, progress=False, **options,
    )  # fmt: skip
    started = time.perf_counter()
    result = headkit_train(config)
    seconds = time.perf_counter() - started
    evaluation, _ = evaluate_dataset(result.model, load_processor("minilm"), str(scored), {name: label})
    return evaluation.scores[name][METRIC[task]], seconds


def run_reference(task: str, train: list[dict], scored: list[dict], seed: int, work: Path) -> tuple:
    """(score, seconds) of transformers' example recipe (run_ner / run_glue defaults)."""
    import transformers
    from fewshot import minilm_path

    started = time.perf_counter()
    transformers.set_seed(seed)
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    words = task == "ner"
    labels = sorted({t for r in train for t in r["tags"]} if words else {r["label"] for r in train})
    index = {name: i for i, name in enumerate(labels)}
    auto = transformers.AutoModelForTokenClassification if words else transformers.AutoModelForSequenceClassification
    model = auto.from_pretrained(path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index)

    def encode(row: dict) -> dict:
        if not words:
            return {**tokenizer(row["text"], truncation=True, max_length=MAX_LENGTH), "labels": index[row["label"]]}
        enc = tokenizer(row["tokens"], is_split_into_words=True, truncation=True, max_length=MAX_LENGTH)
        ids, previous = [], None
        for word in enc.word_ids():  # run_ner: the first sub-word carries the tag, the rest -100
            ids.append(-100 if word is None or word == previous else index[row["tags"][word]])
            previous = word
        return {**enc, "labels": ids}

    collator = (transformers.DataCollatorForTokenClassification if words else transformers.DataCollatorWithPadding)(
        tokenizer
    )
    args = transformers.TrainingArguments(
        output_dir=str(work / "reference"),
        seed=seed,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )  # fmt: skip: every other setting at its default, as the examples leave them
    trainer = transformers.Trainer(model, args, train_dataset=[encode(r) for r in train], data_collator=collator)
    trainer.train()
    seconds = time.perf_counter() - started
    return score_reference(task, model, tokenizer, scored, labels), seconds


def score_reference(task: str, model, tokenizer, rows: list[dict], labels: list[str]) -> float:
    """Entity F1 (a word's tag from its first sub-word; words past the limit: O) or accuracy."""
    import torch
    from seqeval.metrics import f1_score

    model.eval()
    predicted = []
    with torch.no_grad():
        for row in rows:
            if task == "sentiment":
                enc = tokenizer(row["text"], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
                predicted.append(labels[int(model(**enc).logits.argmax(-1))])
                continue
            enc = tokenizer(row["tokens"], is_split_into_words=True, truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt")  # fmt: skip
            best = model(**enc).logits[0].argmax(-1).tolist()
            tags, previous = ["O"] * len(row["tokens"]), None
            for position, word in enumerate(enc.word_ids()):
                if word is not None and word != previous:
                    tags[word] = labels[best[position]]
                previous = word
            predicted.append(tags)
    if task == "sentiment":
        return float(np.mean([p == r["label"] for p, r in zip(predicted, rows, strict=True)]))
    return float(f1_score([r["tags"] for r in rows], predicted, zero_division=0))


def advise_pick(task: str, train: Path) -> str:
    """`headkit advise`'s strategy for the training file (its default budget)."""
    from headkit.advise.plan import advise

    _, label, _ = HEAD[task]
    text = "tokens" if task == "ner" else "text"
    return advise(str(train), text=text, label=label, max_length=MAX_LENGTH)[2].strategy


def parse_cell(cell: str) -> tuple[str, dict]:
    """'full@backbone_lr=1e-4,epochs=10' -> ("full", {"backbone_lr": 1e-4, "epochs": 10})."""
    from fewshot import parse_configs

    strategy, _, options = cell.partition("@")
    return strategy, next(iter(parse_configs(options).values())) if options else {}


def run(args: argparse.Namespace) -> list[dict]:
    from fewshot import append_row

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] + [
        c.strip() for c in (args.configs or "").split(";") if c.strip()
    ]
    sizes = dict(part.split("=") for part in args.sizes.split(";"))
    results = []
    for task in args.tasks.split(","):
        data = splits(task)
        scored = data[args.split]
        for size in sizes.get(task, ",".join(SIZES[task])).split(","):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                train = draw(task, data["pool"], size, seed)
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp)
                    train_file = write_jsonl(train, work / "train.jsonl")
                    scored_file = write_jsonl(scored, work / f"{args.split}.jsonl")
                    row = {"task": task, "size": size, "n": len(train), "seed": seed, "split": args.split}
                    if args.advise:
                        row["advise"] = advise_pick(task, train_file)
                    for cell in cells:
                        if f"{task}/{size}/{cell}" in args.skip.split(","):
                            continue
                        if cell == "reference":
                            score, seconds = run_reference(task, train, scored, seed, work)
                        else:
                            strategy, options = parse_cell(cell)
                            score, seconds = run_headkit(task, train_file, scored_file, strategy, seed, work, **options)
                        row[cell] = [round(score, 4), round(seconds, 1)]
                    append_row(out, row)
                    results.append(row)
    return results


def print_table(rows: list[dict]) -> None:
    """Mean score (seconds) per cell over seeds, a row per split, task and size."""
    meta = ("task", "size", "n", "seed", "split", "advise")
    cells = list(dict.fromkeys(k for r in rows for k in r if k not in meta))
    print(f"| split | task | size | n | {' | '.join(cells)} | advise |")
    print("|---|---|---|---|" + "---|" * (len(cells) + 1))
    for split, task, size in dict.fromkeys((r["split"], r["task"], r["size"]) for r in rows):
        mine = [r for r in rows if (r["split"], r["task"], r["size"]) == (split, task, size)]
        shown = []
        for cell in cells:
            have = [r[cell] for r in mine if cell in r]
            score, seconds = (statistics.mean(v[i] for v in have) for i in (0, 1)) if have else (0, 0)
            shown.append(f"{score:.3f} ({seconds:.0f} s)" if have else "-")
        picks = sorted({r["advise"] for r in mine if "advise" in r})
        print(f"| {split} | {task} | {size} | {mine[0]['n']} | {' | '.join(shown)} | {', '.join(picks) or '-'} |")


def main() -> None:
    from machine import machine_line

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="ner,sentiment")
    parser.add_argument("--sizes", default="ner=50,100,400,all;sentiment=8,64,500")
    parser.add_argument("--cells", default="frozen,fewshot,full,lora,reference")
    parser.add_argument("--configs", default="", help="more cells, ';'-separated: STRATEGY@name=value,...")
    parser.add_argument("--split", choices=["test", "dev"], default="test")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--advise", action="store_true", help="record headkit advise's pick per row")
    parser.add_argument("--skip", default="", help="cells not to run, TASK/SIZE/CELL,... (e.g. ner/all/fewshot)")
    parser.add_argument("--out", default="runs/bench/small_data.jsonl")
    parser.add_argument("--table", help="print the table of a saved --out file and stop")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    if args.table:
        from fewshot import read_rows

        print_table(read_rows(args.table))
        return
    print_table(run(args))


if __name__ == "__main__":
    main()
