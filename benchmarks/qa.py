"""Extractive QA on SQuAD 2.0 (issue #41): headkit's `span` head beside transformers' own run_qa recipe.

Data: the first 5 articles of the SQuAD 2.0 development set (../shared/data/squad-v2-dev-5-articles.json,
1,407 questions, half unanswerable), split by article: train on four, test on the fifth; `--folds N`
rotates the test article over the first N articles (default 1: Normans is the test article); `--first_fold K`
starts the rotation at the K-th article (folds run in parts).

- headkit: `headkit.train("minilm", {"answer": {"type": "span", "label": "answers"}}, ...)`, then
  `model.predict([(question, context), ...])` (windows and answers as in headkit.heads.qa), once per
  strategy in `--strategy` (comma-separated: full, frozen, lora); `--two_heads` adds a full run with
  a question-type head (the question's first word: what, who, when, ...) on the same backbone, its
  accuracy on the test questions printed below the table.
- reference: `AutoModelForQuestionAnswering` on the same MiniLM checkpoint and `transformers.Trainer`,
  with run_qa's preprocessing (prepare_train_features / prepare_validation_features: truncation
  "only_second", stride, overflowing tokens, offsets) and utils_qa's postprocess_qa_predictions
  (version_2_with_negative, n_best 20, max_answer_length 30, null_score_diff_threshold 0.0), written
  compactly below.

Both get the same window settings (max_length, doc_stride: headkit overlaps a pair's windows by
doc_stride as run_qa does wherever run_qa's tokenizer call works; at the defaults both cut the 1,407
questions into 1,463 windows), epochs,
batch size, seed 0 and the optimizer of headkit's full strategy: AdamW, backbone at --lr, the QA
layer at --head_lr (headkit full's default for its heads, 1e-3; frozen and lora keep their own, 1e-2,
unless --head_lr is given; the Trainer gets the same
two groups through `optimizers=`), weight decay 0.01 on matrices, 6% linear warm-up then linear
decay, gradient clipping at 1.0. headkit trains on every training question (no validation split, no
early stopping). Reference batches (--reference_batches): `matched` pads each batch to its longest
window and groups windows of similar length, as headkit does; `run_qa` pads every window to
max_length in random batches (run_qa's defaults: slower on short windows). Both recipes' answers are
scored by the same function (headkit.heads.squad.squad_scores, the official evaluate-v2.0 EM/F1).
Train time: tokenising, loading the model and training; predict time: windowing, the forward passes
and choosing the answers. Both run in this one process, one after the other, on the same threads.

    python benchmarks/qa.py [--folds 1] [--epochs 2] [--max_length 256] [--strategy full,frozen,lora] [--two_heads]
                            [--train_questions N] [--test_questions N]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "squad-v2-dev-5-articles.json"
N_BEST, MAX_ANSWER_TOKENS, NULL_THRESHOLD = 20, 30, 0.0  # run_qa's defaults
WEIGHT_DECAY, WARMUP, MAX_GRAD_NORM = 0.01, 0.06, 1.0  # headkit TrainConfig's defaults
STARTED = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def folds(rows: list[dict], first: int, n: int, train_questions: int | None, test_questions: int | None, seed: int):
    """(test article, training rows, test rows) for n articles from the `first` (1-based) as the test article."""
    titles = list(dict.fromkeys(r["title"] for r in rows))
    if not (first >= 1 and n >= 1 and first - 1 + n <= len(titles)):
        raise SystemExit(f"--first_fold {first} --folds {n}: the data has {len(titles)} articles to test on")
    for title in titles[first - 1 : first - 1 + n]:
        train = [r for r in rows if r["title"] != title]
        test = [r for r in rows if r["title"] == title]
        yield title, sample(train, train_questions, seed), sample(test, test_questions, seed)


def sample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded sample of n rows, kept in their order (all of them when n is None or larger)."""
    if n is None or n >= len(rows):
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i in keep]


# ----------------------------------------------------------------------------- headkit


QUESTION_WORDS = ("what", "who", "when", "where", "which", "how", "why", "in")  # the rest: "other"


def question_type(question: str) -> str:
    """The second head's label: the question's first word (what, who, when, ...), else "other"."""
    words = question.lower().split()
    return words[0] if words and words[0] in QUESTION_WORDS else "other"


def run_headkit(train: list[dict], test: list[dict], args: argparse.Namespace, strategy: str, two_heads: bool):
    """headkit's span head with `strategy` (beside a question-type head on the same backbone when
    `two_heads`): trained, then predicting every test question."""
    import headkit

    overrides = {"backbone_lr": args.lr} if strategy not in ("lora", "frozen") else {}
    if args.head_lr is not None:
        overrides["lr"] = args.head_lr
    heads: dict[str, Any] = {"answer": {"type": "span", "label": "answers", "options": {"doc_stride": args.doc_stride}}}
    if two_heads:
        heads["qtype"] = {"type": "classification", "label": "qtype"}
        train = [{**r, "qtype": question_type(r["question"])} for r in train]
    started = time.perf_counter()
    result = headkit.train(
        "minilm",
        heads,
        train_dataset=train,
        strategy=strategy,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        val_fraction=0.0,
        patience=0,
        progress=False,
        **overrides,
    )
    train_seconds = time.perf_counter() - started
    say(f"headkit {strategy}{' + qtype' if two_heads else ''} trained in {train_seconds:.1f}s")
    model = result.model
    import headkit.ship.predict_batches as predict_batches

    kept: list[tuple] = []  # what predict chose its answers from: for the null-threshold search, after the clock

    def keeping(logits, windows, contexts, **options):
        kept.append((logits, windows, contexts, options))
        return best_answers(logits, windows, contexts, **options)

    best_answers, predict_batches.best_answers = predict_batches.best_answers, keeping
    try:
        started = time.perf_counter()
        out = model.predict([(r["question"], r["context"]) for r in test], batch_size=args.predict_batch_size)
        predict_seconds = time.perf_counter() - started
    finally:
        predict_batches.best_answers = best_answers
    say(f"headkit predicted {len(test)} questions in {predict_seconds:.1f}s")
    predictions = {r["id"]: o["answer"]["answer"] for r, o in zip(test, out, strict=True)}
    logits, windows, contexts, options = kept[0]
    spans = best_answers(logits, windows, contexts, **{**options, "null_threshold": float("inf")})  # never ""
    scores = {}
    if two_heads:
        right = [o["qtype"]["label"] == question_type(r["question"]) for r, o in zip(test, out, strict=True)]
        scores["qtype_accuracy"] = sum(right) / len(right)
    return {
        "predictions": predictions,
        "spans": {r["id"]: a["answer"] for r, a in zip(test, spans, strict=True)},
        "null_score_diff": {r["id"]: a["null_score_diff"] for r, a in zip(test, spans, strict=True)},
        "train_s": train_seconds,
        "predict_s": predict_seconds,
        "extra": scores,
    }


# ----------------------------------------------------------------------------- transformers' run_qa


def run_qa_windows(tokenizer, rows: list[dict], max_length: int, stride: int, pad: bool):
    """The tokenizer call both of run_qa's preparations make: question and context (context first
    where the tokenizer pads on the left), the context cut into overlapping windows, offsets kept."""
    pad_on_right = tokenizer.padding_side == "right"
    questions, contexts = [r["question"].lstrip() for r in rows], [r["context"] for r in rows]
    return tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad else False,
    )


def prepare_train_features(tokenizer, rows: list[dict], max_length: int, stride: int, pad: bool) -> dict:
    """run_qa's prepare_train_features: windows labelled with the answer's tokens, else [CLS]."""
    pad_on_right = tokenizer.padding_side == "right"
    enc = run_qa_windows(tokenizer, rows, max_length, stride, pad)
    sample_mapping = enc.pop("overflow_to_sample_mapping")
    enc["start_positions"], enc["end_positions"] = [], []
    for i, offsets in enumerate(enc.pop("offset_mapping")):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = enc.sequence_ids(i)
        answers = rows[sample_mapping[i]]["answers"]
        if not answers["answer_start"]:
            enc["start_positions"].append(cls_index)
            enc["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start = 0
        while sequence_ids[token_start] != (1 if pad_on_right else 0):
            token_start += 1
        token_end = len(input_ids) - 1
        while sequence_ids[token_end] != (1 if pad_on_right else 0):
            token_end -= 1
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            enc["start_positions"].append(cls_index)  # the answer is not wholly in this window
            enc["end_positions"].append(cls_index)
            continue
        while token_start < len(offsets) and offsets[token_start][0] <= start_char:
            token_start += 1
        enc["start_positions"].append(token_start - 1)
        while offsets[token_end][1] >= end_char:
            token_end -= 1
        enc["end_positions"].append(token_end + 1)
    return dict(enc)


def prepare_validation_features(tokenizer, rows: list[dict], max_length: int, stride: int, pad: bool):
    """run_qa's prepare_validation_features: the windows, each one's example and its context offsets."""
    pad_on_right = tokenizer.padding_side == "right"
    enc = run_qa_windows(tokenizer, rows, max_length, stride, pad)
    example = list(enc.pop("overflow_to_sample_mapping"))
    context_index = 1 if pad_on_right else 0
    offsets = [
        [o if enc.sequence_ids(i)[k] == context_index else None for k, o in enumerate(mapping)]
        for i, mapping in enumerate(enc.pop("offset_mapping"))
    ]
    return dict(enc), example, offsets


def postprocess_qa_predictions(rows, example, offsets, start_logits, end_logits) -> tuple[dict, dict, dict]:
    """utils_qa.postprocess_qa_predictions with version_2_with_negative: each question's answer text,
    its best non-null span and null score difference (run_qa's null_odds)."""
    features = collections.defaultdict(list)
    for feature, e in enumerate(example):
        features[e].append(feature)
    answers, spans, diffs = {}, {}, {}
    for e, row in enumerate(rows):
        min_null, prelim = None, []
        for f in features[e]:
            start, end, mapping = start_logits[f], end_logits[f], offsets[f]
            null_score = start[0] + end[0]
            if min_null is None or min_null["score"] > null_score:
                min_null = {"offsets": (0, 0), "score": null_score, "start_logit": start[0], "end_logit": end[0]}
            for s in start.argsort()[-1 : -N_BEST - 1 : -1].tolist():
                for t in end.argsort()[-1 : -N_BEST - 1 : -1].tolist():
                    if s >= len(mapping) or t >= len(mapping) or mapping[s] is None or mapping[t] is None:
                        continue
                    if len(mapping[s]) < 2 or len(mapping[t]) < 2 or t < s or t - s + 1 > MAX_ANSWER_TOKENS:
                        continue
                    prelim.append(
                        {
                            "offsets": (mapping[s][0], mapping[t][1]),
                            "score": start[s] + end[t],
                            "start_logit": start[s],
                            "end_logit": end[t],
                        }
                    )
        prelim.append(min_null)
        null_score = min_null["score"]
        predictions = sorted(prelim, key=lambda x: x["score"], reverse=True)[:N_BEST]
        if not any(p["offsets"] == (0, 0) for p in predictions):
            predictions.append(min_null)
        for p in predictions:
            p["text"] = row["context"][p["offsets"][0] : p["offsets"][1]]
        if len(predictions) == 0 or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        i = 0
        while predictions[i]["text"] == "":
            i += 1
        best = predictions[i]
        diff = null_score - best["start_logit"] - best["end_logit"]
        answers[row["id"]] = "" if diff > NULL_THRESHOLD else best["text"]
        spans[row["id"]], diffs[row["id"]] = best["text"], float(diff)
    return answers, spans, diffs


def predict_in_order(trainer: Any, enc: dict, pad: bool) -> tuple[Any, Any]:
    """The Trainer's start and end logits for every window, in the windows' order.

    Trainer.predict under train_sampling_strategy "group_by_length" visits the windows in a
    length-grouped random order and returns its logits in *that* order (its eval sampler groups too,
    transformers#33514), which would pair each window with another's logits. So prediction runs
    sequentially over the windows sorted by length (batches of similar length, as headkit predicts),
    and the logits are put back in window order; unpadded batches come back padded to the longest
    with -100, which no argsort in the post-processing reaches before a real position."""
    import datasets
    import numpy as np

    n = len(enc["input_ids"])
    order = list(range(n)) if pad else sorted(range(n), key=lambda i: len(enc["input_ids"][i]))
    ordered = datasets.Dataset.from_dict({k: [v[i] for i in order] for k, v in enc.items()})
    sampling, trainer.args.train_sampling_strategy = trainer.args.train_sampling_strategy, "sequential"
    try:  # its eval sampler then visits the windows in the order given
        start, end = trainer.predict(ordered).predictions
    finally:
        trainer.args.train_sampling_strategy = sampling
    back = np.empty(n, dtype=int)
    back[order] = np.arange(n)
    return start[back], end[back]


def run_reference(train: list[dict], test: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from headkit.backbone import resolve_model

    path = resolve_model("minilm").path
    pad = args.reference_batches == "run_qa"
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = datasets.Dataset.from_dict(
        prepare_train_features(tokenizer, train, args.max_length, args.doc_stride, pad)
    )
    set_seed(args.seed)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    if args.reference_head == "headkit":  # a diagnostic: the QA layer as headkit builds its span head
        model.qa_outputs.reset_parameters()  # PyTorch's default initialisation instead of normal(0, 0.02)
        model.qa_outputs = torch.nn.Sequential(torch.nn.Dropout(0.1), model.qa_outputs)
    head = {id(p) for p in model.qa_outputs.parameters()}
    groups: dict[tuple[float, float], list] = {}
    for p in model.parameters():  # headkit's full strategy: the QA layer at head_lr, decay on matrices only
        lr = (args.head_lr or 1e-3) if id(p) in head else args.lr
        groups.setdefault((lr, WEIGHT_DECAY if p.ndim >= 2 else 0.0), []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()], fused=True
    )
    training_args = TrainingArguments(
        output_dir=args.scratch,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.predict_batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP,  # a float under 1: a share of the steps
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear",
        train_sampling_strategy="random" if pad else "group_by_length",
        seed=args.seed,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    collator = default_data_collator if pad else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=features,
        data_collator=collator,
        optimizers=(optimizer, None),
    )
    trainer.remove_callback(PrinterCallback)  # no metrics dict printed at the end
    trainer.train()
    train_seconds = time.perf_counter() - started
    say(f"reference trained in {train_seconds:.1f}s")
    started = time.perf_counter()
    enc, example, offsets = prepare_validation_features(tokenizer, test, args.max_length, args.doc_stride, pad)
    start_logits, end_logits = predict_in_order(trainer, enc, pad)
    predictions, spans, diffs = postprocess_qa_predictions(test, example, offsets, start_logits, end_logits)
    predict_seconds = time.perf_counter() - started
    say(f"reference predicted {len(test)} questions in {predict_seconds:.1f}s")
    return {
        "predictions": predictions,
        "spans": spans,
        "null_score_diff": diffs,
        "train_s": train_seconds,
        "predict_s": predict_seconds,
    }


# ----------------------------------------------------------------------------- the table

COLUMNS = [("EM", "exact_match"), ("F1", "f1"), ("HasAns EM", "HasAns_exact_match"), ("HasAns F1", "HasAns_f1"),
           ("NoAns", "NoAns_f1"), ("answered %", "answered"), ("best F1*", "best_f1")]  # fmt: skip


def row_cells(result: dict[str, Any]) -> list[str]:
    s = result["scores"]
    return [f"{100 * s.get(key, float('nan')):.1f}" for _, key in COLUMNS] + [
        f"{result['train_s']:.0f}",
        f"{result['predict_s']:.1f}",
    ]


def ratio_cells(mine: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    a, b = mine["scores"], ref["scores"]
    diffs = [f"{100 * (a.get(k, float('nan')) - b.get(k, float('nan'))):+.1f}" for _, k in COLUMNS]
    return [*diffs, f"{mine['train_s'] / ref['train_s']:.2f}x", f"{mine['predict_s'] / ref['predict_s']:.2f}x"]


def mean(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = results[0]["scores"].keys()
    return {
        "scores": {k: sum(r["scores"][k] for r in results) / len(results) for k in keys},
        "train_s": sum(r["train_s"] for r in results) / len(results),
        "predict_s": sum(r["predict_s"] for r in results) / len(results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA.resolve()), help="a SQuAD 2.0 JSON file")
    parser.add_argument("--folds", type=int, default=1, help="test on N articles in turn from --first_fold (5: all)")
    parser.add_argument("--first_fold", type=int, default=1, help="the first test article (1-based): folds in parts")
    parser.add_argument(
        "--strategy", default="full", help="headkit's strategies, comma-separated: full, frozen, lora (reference: full)"
    )
    parser.add_argument(
        "--two_heads", action="store_true", help="also a full run with a question-type head beside the span head"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--predict_batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5, help="the backbone's learning rate")
    parser.add_argument("--head_lr", type=float, default=None, help="the QA layer's (default: each strategy's)")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_questions", type=int, default=None, help="a seeded sample of training questions")
    parser.add_argument("--test_questions", type=int, default=None, help="a seeded sample of test questions")
    parser.add_argument("--reference_batches", choices=["matched", "run_qa"], default="matched")
    parser.add_argument(
        "--reference_head",
        choices=["bert", "headkit"],
        default="bert",
        help="the reference's QA layer: BertForQuestionAnswering's own, or (a diagnostic) initialised as "
        "headkit's span head and behind the same dropout",
    )
    args = parser.parse_args()

    import tempfile

    import transformers

    import headkit  # noqa: F401  (imported before any clock starts)
    from headkit.heads.squad import null_threshold_search, read_squad, squad_scores

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    rows = read_squad(args.data)
    strategies = [s.strip() for s in args.strategy.split(",") if s.strip() not in ("", "none")]
    results: list[tuple[str, int, int, dict[str, dict], dict]] = []
    with tempfile.TemporaryDirectory() as scratch:
        args.scratch = scratch
        for title, train, test in folds(
            rows, args.first_fold, args.folds, args.train_questions, args.test_questions, args.seed
        ):
            say(f"fold '{title}': {len(train)} training questions, {len(test)} test questions")
            reference = run_reference(train, test, args)
            recipes = {f"headkit {s}": run_headkit(train, test, args, s, False) for s in strategies}
            if args.two_heads:
                recipes["headkit full + qtype head"] = run_headkit(train, test, args, "full", True)
            for result in (reference, *recipes.values()):
                result["scores"] = squad_scores(result["predictions"], test)
                best = null_threshold_search(result["null_score_diff"], result["spans"], test)
                result["scores"]["best_f1"] = best["best_f1"]
                result["best_f1_thresh"] = best["best_f1_thresh"]
                result["scores"]["answered"] = sum(1 for a in result["predictions"].values() if a) / len(test)
            for name, mine in recipes.items():
                say(f"F1 {name} {100 * mine['scores']['f1']:.1f}, reference {100 * reference['scores']['f1']:.1f}")
            results.append((title, len(train), len(test), recipes, reference))

    from machine import machine_line

    print(machine_line())
    print(
        f"\nSQuAD 2.0 dev, 5 articles, split by article; MiniLM (all-MiniLM-L6-v2); headkit strategy "
        f"{', '.join(strategies)}, reference full; {args.epochs} epochs, batch {args.batch_size}, lr {args.lr:g} "
        f"(QA layer {args.head_lr or 1e-3:g}; frozen, lora: {args.head_lr or 1e-2:g}), "
        f"max_length {args.max_length}, doc_stride {args.doc_stride}, "
        f"seed {args.seed}; reference batches: {args.reference_batches}, reference QA layer: {args.reference_head}\n"
    )
    header = ["test article", "train q", "test q", "recipe", *(c for c, _ in COLUMNS), "train s", "predict s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for title, n_train, n_test, recipes, reference in results:
        print("| " + " | ".join([title, str(n_train), str(n_test), "reference", *row_cells(reference)]) + " |")
        for name, mine in recipes.items():
            print("| " + " | ".join([title, "", "", name, *row_cells(mine)]) + " |")
            print("| " + " | ".join([title, "", "", f"{name} − / ÷ reference", *ratio_cells(mine, reference)]) + " |")
    names = list(results[0][3])
    if not names:  # --strategy none: the reference alone
        return
    avg_ref = mean([r[4] for r in results])
    averages = {name: mean([r[3][name] for r in results]) for name in names}
    if len(results) > 1:
        print("| " + " | ".join([f"mean of {len(results)}", "", "", "reference", *row_cells(avg_ref)]) + " |")
        for name, result in averages.items():
            print("| " + " | ".join([f"mean of {len(results)}", "", "", name, *row_cells(result)]) + " |")
            print("| " + " | ".join([f"mean of {len(results)}", "", "", f"{name} − / ÷ reference",
                                     *ratio_cells(result, avg_ref)]) + " |")  # fmt: skip
    for name in names:
        extra = {k: sum(r[3][name]["extra"].get(k, 0.0) for r in results) / len(results)
                 for k in results[0][3][name]["extra"]}  # fmt: skip
        if extra:
            print(f"\n{name}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in extra.items()))
    avg_mine = averages[names[0]]
    f1_gap = 100 * (avg_mine["scores"]["f1"] - avg_ref["scores"]["f1"])
    train_ratio = avg_mine["train_s"] / avg_ref["train_s"]
    predict_ratio = avg_mine["predict_s"] / avg_ref["predict_s"]
    met = f1_gap >= -1.0 and train_ratio <= 1.0 and predict_ratio <= 1.0
    print(
        "\n*best F1: the official best_f1, F1 at the null threshold that is best on these test questions "
        "(an oracle: it shows what the spans learned, whatever the null threshold; the recipes use 0.0)"
    )
    print(
        f"goal ({names[0]}): within 1 F1 point of the reference at no more time: F1 {f1_gap:+.1f} points, "
        f"train time {train_ratio:.2f}x, predict time {predict_ratio:.2f}x -> {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
