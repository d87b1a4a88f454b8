"""Instruction tuning SmolLM2-135M-Instruct on chatterbot-corpus: `headkit sft` beside TRL's SFTTrainer.

The English prompt -> reply pairs of chatterbot-corpus (built-in `chatterbot_english`, 2,306
pairs); a seeded 10% is held out. Both trainers get the same training rows (a seeded sample of
steps x batch of the rest), the same chat template (SmolLM2's own), loss on the reply tokens only,
the same LoRA (r 8, alpha 16, dropout 0.1, every linear layer), learning rate, schedule (6% warm-up,
linear decay), weight decay, gradient clipping, batch and number of steps, fp32 on the CPU. Each runs in its
own process; its wall time covers loading the model (from the same cached safetensors copy),
preparing the data, training and saving (headkit: the whole run directory; TRL: its adapter).
Then one function scores both trained models (and the untouched one) on the held-out replies: mean
token loss over reply tokens, and perplexity. Five held-out prompts are answered before and after.

    python benchmarks/sft.py [--steps 60] [--batch 8] [--lr 1e-3] [--eval 120]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": "all-linear"}
MAX_LENGTH = 256


def split(steps: int, batch: int, held_out: int) -> tuple[list[dict], list[dict]]:
    """The same training sample and held-out rows for both trainers (seed 0)."""
    import random

    from headkit.data.batching import split_indices
    from headkit.data.builtin import chatterbot_english

    rows = chatterbot_english()
    train_idx, test_idx = split_indices(len(rows), 0.1, seed=0)
    train = [rows[i] for i in random.Random(0).sample(list(train_idx), min(steps * batch, len(train_idx)))]
    return train, [rows[i] for i in test_idx][:held_out]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows))
    return str(path)


def run_headkit(train_file: str, out: str, args: argparse.Namespace) -> dict:
    from headkit.training.sft import SFTConfig, sft

    config = SFTConfig(model="smollm2", data=train_file, output_dir=out, strategy="lora", epochs=1,
                       batch_size=args.batch, lora_lr=args.lr, lr=args.lr, lora_r=LORA["r"],
                       lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"], lora_targets=["all-linear"],
                       max_length=MAX_LENGTH, val_fraction=0.0, warmup_ratio=0.06, weight_decay=0.01,
                       max_grad_norm=1.0, group_by_length=args.group_by_length, progress=False,
                       overwrite=True)  # fmt: skip
    from headkit.backbone import dequantised, resolve_model

    dequantised(resolve_model("smollm2"))  # made once, before timing (TRL loads the same copy)
    started = time.perf_counter()
    result = sft(config)
    steps = math.ceil(result.metrics["train_examples"] / args.batch)
    return {"seconds": time.perf_counter() - started, "steps": steps, "dir": out}


def run_trl(train_file: str, out: str, args: argparse.Namespace) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from headkit.backbone import dequantised, resolve_model

    path = dequantised(resolve_model("smollm2"))
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in Path(train_file).read_text().splitlines()]
    data = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in rows
    ])  # fmt: skip
    config = SFTConfig(output_dir=out, per_device_train_batch_size=args.batch, num_train_epochs=1,
                       learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0.06, weight_decay=0.01,
                       max_grad_norm=1.0, max_length=MAX_LENGTH, packing=False, completion_only_loss=True,
                       save_strategy="no", report_to="none", logging_steps=10, seed=0, use_cpu=True,
                       dataloader_num_workers=0, disable_tqdm=True)  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))  # fmt: skip
    trainer.train()
    trainer.save_model(out)
    return {"seconds": time.perf_counter() - started, "steps": trainer.state.global_step, "dir": out}


def response_loss(which: str, directory: str, held_out_file: str) -> float:
    """Mean token loss over the held-out reply tokens, one function for every model."""
    import torch
    import torch.nn.functional as F

    from headkit.backbone import dequantised, load_processor, resolve_model
    from headkit.heads import IGNORE_INDEX
    from headkit.training.sft import SFTConfig, conversations, encode, sft_batch

    path = dequantised(resolve_model("smollm2"))
    tokenizer = load_processor(path)
    rows = [json.loads(line) for line in Path(held_out_file).read_text().splitlines()]
    data = encode(conversations(rows, "held-out", SFTConfig(data="x")), tokenizer, MAX_LENGTH, "held-out")
    if which == "headkit":
        from headkit.model import load
        from headkit.ship.save import find_save

        model = load(find_save(directory)).eval()
        logits_of = lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).outputs["lm"]  # noqa: E731
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path).eval()
        if which == "trl":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, directory).eval()
        logits_of = lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # noqa: E731
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), 8):
            batch = sft_batch([data[i] for i in range(start, min(start + 8, len(data)))], tokenizer.pad_token_id)
            logits, labels = logits_of(batch)[:, :-1].float(), batch["labels"]["lm"][:, 1:]
            total += float(
                F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            )
            count += int((labels != IGNORE_INDEX).sum())
    return total / count


def answers(directory: str, prompts: list[str]) -> list[str]:
    from headkit.ship.generate import generate

    return [generate(directory, p, max_new_tokens=32).strip().replace("\n", " ") for p in prompts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps for each trainer")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (headkit's lora default)")
    parser.add_argument("--eval", type=int, default=120, help="held-out pairs scored")
    parser.add_argument(
        "--group-by-length", action="store_true", help="headkit: length-grouped batches (faster, less padding)"
    )
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: WHICH TRAIN_FILE OUT
    args = parser.parse_args()
    if args.one:
        which, train_file, out = args.one
        print(json.dumps((run_headkit if which == "headkit" else run_trl)(train_file, out, args)))
        return
    train, held_out = split(args.steps, args.batch, args.eval)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = write_jsonl(Path(tmp) / "train.jsonl", train)
        held_out_file = write_jsonl(Path(tmp) / "held_out.jsonl", held_out)
        runs = {}
        for which in ("headkit", "trl"):
            command = [sys.executable, __file__, "--one", which, train_file, f"{tmp}/{which}",
                       "--batch", str(args.batch), "--lr", str(args.lr)]  # fmt: skip
            command += ["--group-by-length"] if args.group_by_length else []
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{which} failed:\n{done.stderr[-3000:]}")
            runs[which] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"done: {which} {runs[which]}", file=sys.stderr)
        losses = {w: response_loss(w, runs[w]["dir"], held_out_file) for w in ("headkit", "trl")}
        losses["before"] = response_loss("before", "", held_out_file)
        prompts = [r["prompt"] for r in held_out[:5]]
        before, after = answers("smollm2", prompts), answers(runs["headkit"]["dir"], prompts)

    from machine import machine_line

    print(machine_line())
    print(
        f"\nchatterbot-corpus English: {len(train)} training pairs ({args.steps} steps x batch {args.batch}), "
        f"{len(held_out)} held-out pairs (seed 0); SmolLM2-135M-Instruct, LoRA r 8 all-linear, lr {args.lr}, "
        f"replies-only loss, max {MAX_LENGTH} tokens, fp32 CPU"
    )
    print(f"\n{'':28}{'steps':>7}{'seconds':>9}{'speed':>8}{'held-out loss':>15}{'perplexity':>12}")
    print(f"{'before tuning':28}{'':>7}{'':>9}{'':>8}{losses['before']:15.4f}{math.exp(losses['before']):12.2f}")
    for which, name in (("trl", "TRL SFTTrainer"), ("headkit", "headkit sft")):
        r = runs[which]
        speed = runs["trl"]["seconds"] / r["seconds"]
        loss = losses[which]
        print(f"{name:28}{r['steps'] or '':>7}{r['seconds']:9.1f}{speed:7.2f}x{loss:15.4f}{math.exp(loss):12.2f}")
    print("\nfive held-out prompts, greedy, 32 new tokens (before -> after headkit sft):")
    for prompt, b, a, row in zip(prompts, before, after, held_out, strict=False):
        print(f"  prompt:    {prompt}\n  reference: {row['response']}\n  before:    {b}\n  after:     {a}\n")


if __name__ == "__main__":
    main()
