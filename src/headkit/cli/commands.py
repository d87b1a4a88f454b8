"""The `headkit` subcommands: plain functions whose parameters and docstrings become flags and
help (parser.py), so the CLI and the library never drift. Each one is a thin wrapper over the
library: it parses nothing itself and prints results for a person."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from headkit.devices import Device, DType
from headkit.errors import HeadkitError
from headkit.training.config import TrainConfig
from headkit.training.pretrain import PretrainConfig
from headkit.training.sft import SFTConfig

Engine = Literal["torch", "onnx", "onnx-int8"]


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit} ({n:,})"
    return f"{n:,}"


def inspect(model: str, json: bool = False, trust_remote_code: bool = False) -> None:
    """Show where a checkpoint's backbone ends and its head starts (reads the config only).

    Args:
        model: a local Hugging Face checkpoint directory, or an alias: minilm, smollm2.
        json: print machine-readable JSON instead of a table.
        trust_remote_code: allow checkpoints that need their own Python code.
    """
    import json as jsonlib

    from headkit.backbone import inspect_model
    from headkit.ship.save import describe_heads

    report = inspect_model(model, trust_remote_code=trust_remote_code)
    heads = describe_heads(model)  # a headkit save or run also carries its own task heads
    if json:
        print(jsonlib.dumps({**report.to_dict(), "headkit_heads": heads}, indent=2))
        return
    table = Table(title=f"{report.architecture}  ({report.model_type})", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    if report.output_layer:
        head = f"{report.head_kind}: {report.output_layer}  {report.output_in}→{report.output_out}"
    else:
        head = "none: a bare backbone (attach task heads with headkit.MultiHeadModel)"
    rows = [
        ("path", report.path),
        ("backbone", f"{report.backbone_class}  (module: {report.backbone_module})"),
        ("head", head),
        ("head modules", ", ".join(f"{n} ({c})" for n, c in report.head_modules.items()) or "-"),
        ("tied embeddings", "yes (head decoder = input embeddings)" if report.tied_embeddings else "no"),
        ("hidden size", str(report.hidden_size)),
        ("layers", str(report.num_layers)),
        ("vocab size", str(report.vocab_size)),
        ("params total", _count(report.params_total)),
        ("params backbone", _count(report.params_backbone)),
        ("params head", _count(report.params_head) + ("  (+ tied decoder)" if report.tied_embeddings else "")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    if heads:
        head_table = Table(title=f"headkit heads on this backbone ({model})")
        for column in ("head", "type", "pooling", "labels", "params"):
            head_table.add_column(column, overflow="fold")
        for name, h in heads.items():
            labels = ", ".join(h["labels"][:6]) + (f" … ({len(h['labels'])})" if len(h["labels"]) > 6 else "")
            params = _count(h["params"]) + ("  (+ tied decoder)" if h["tied_to_embeddings"] else "")
            head_table.add_row(name, h["type"], str(h["pooling"]), labels or "-", params)
        Console().print(head_table)


def train(config: TrainConfig) -> None:
    """Train heads on a backbone with one adaptation strategy (frozen, partial:K, full, lora, lp-ft, fewshot).

    Args:
        config: see TrainConfig; give a YAML file with --config, flags, or both (flags win).
    """
    from headkit.training.recipe import train as run_training

    run_training(config)


def evaluate(
    run: str,
    data: str | None = None,
    head: list[str] | None = None,
    text_column: str = "text",
    max_length: int | None = None,
    batch_size: int = 64,
    output: str | None = None,
    progress: bool = True,
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Score a trained model on labelled data, with the label maps saved at training time.

    Args:
        run: a training run directory (or its model/ directory).
        data: a labelled file or built-in dataset.
        head: NAME:COLUMN for each head to score (default: the column named like the head, or 'label' for one).
        text_column: the text column (old spelling: --text).
        max_length: token limit; longer inputs are truncated (default: the limit the model was trained with).
        batch_size: examples per forward pass.
        output: also write the scores (and the per-class report) to this JSON file.
        progress: show a progress bar.
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    from headkit._fs import atomic_write_json
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset
    from headkit.training.report import print_summary

    if not data:
        raise HeadkitError("evaluate needs labelled data: --data FILE (or a built-in dataset name)")
    bad = [spec for spec in head or [] if ":" not in spec]
    if bad:
        raise HeadkitError(f"--head {bad[0]!r} should look like NAME:COLUMN (e.g. sentiment:label)")
    model, tokenizer = load_for_inference(run, device=device, dtype=dtype)
    columns = dict(spec.split(":", 1) for spec in head or [])
    result, count = evaluate_dataset(
        model, tokenizer, data, columns, text_column, max_length, batch_size, progress=progress
    )
    print_summary(model, result, {}, title=f"evaluation on {data} ({count} examples)")
    if output:
        atomic_write_json(Path(output), {"scores": result.scores, "losses": result.losses, "per_class": result.reports})


def predict(
    run: str,
    input: str | None = None,
    output: str | None = None,
    text: list[str] | None = None,
    image: list[str] | None = None,
    text_column: str = "text",
    batch_size: int = 64,
    engine: Engine = "torch",
    progress: bool = True,
    max_length: int | None = None,
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Predict every head for texts from a file (written to another file) or from --text.

    Args:
        run: a training run directory (or its model/ directory), or an ONNX export with --engine onnx.
        input: a CSV / JSONL / Parquet file with a text column.
        output: where to write predictions (.jsonl or .csv); default INPUT.predictions.jsonl.
        text: texts to predict directly (repeat --text for several).
        image: image files to predict directly, for an image model (repeat --image for several).
        text_column: the text column of --input (for an image model: the column of image paths).
        batch_size: texts per forward pass.
        engine: torch (the saved model), onnx or onnx-int8 (a directory written by export --to onnx).
        progress: show a progress bar for --input files.
        max_length: token limit; longer texts are predicted on their first tokens and marked
            truncated (default: the limit the model was trained with).
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    from headkit.ship.predict import load_for_inference, predict_file, predict_texts

    if not input and not text and not image:
        raise HeadkitError("nothing to predict: give --input FILE, --text 'some text' or --image FILE")
    model, tokenizer = load_for_inference(run, engine=engine, device=device, dtype=dtype)
    if image:
        _print_images(model, tokenizer, image, batch_size)
    if input:
        output = output or str(Path(input).with_suffix("")) + ".predictions.jsonl"
        count, truncated = predict_file(model, tokenizer, input, text_column, output, batch_size, progress, max_length)
        print(f"wrote predictions for {count} texts to {output}")
        if truncated:
            print(
                f"note: {truncated} texts were longer than the model reads and were predicted on their "
                'first tokens (marked "truncated": true)'
            )
    for sample, prediction in zip(
        text or [], predict_texts(model, tokenizer, text or [], batch_size, max_length), strict=True
    ):
        Console().print(f"[bold]{sample}[/]", highlight=False)
        for head, value in prediction.items():
            if head == "truncated":
                Console().print("  (text truncated to the model's limit)", highlight=False)
                continue
            Console().print(f"  {head}: {model.heads[head].brief(value)}", highlight=False)


def _print_images(model, processor, paths: list[str], batch_size: int) -> None:
    from headkit.data.images import is_image_processor, open_image
    from headkit.ship.predict import predict_images

    if not is_image_processor(processor):
        raise HeadkitError("--image needs a model trained on images; this one reads text (use --text)")
    images = [open_image(p, "--image")[0] for p in paths]
    for path, prediction in zip(paths, predict_images(model, processor, images, batch_size), strict=True):
        Console().print(f"[bold]{path}[/]", highlight=False)
        for head, value in prediction.items():
            Console().print(f"  {head}: {model.heads[head].brief(value)}", highlight=False)


def fill_mask(
    model: str,
    text: list[str],
    top_k: int = 5,
    json: bool = False,
    trust_remote_code: bool = False,
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Fill every mask in one or more texts with the model's masked-LM head: top-k tokens and probabilities.

    Args:
        model: a masked-LM checkpoint directory, or a run of `headkit pretrain --objective mlm`.
        text: texts, each with at least one mask token (e.g. [MASK] for BERT).
        top_k: candidates shown per mask.
        json: print JSON instead of a table.
        trust_remote_code: allow checkpoints that need their own Python code.
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    import json as jsonlib

    from headkit.ship.generate import fill_mask as run_fill_mask

    results = run_fill_mask(model, text, top_k, trust_remote_code, device, dtype)
    if json:
        print(jsonlib.dumps([{"text": t, "masks": r} for t, r in zip(text, results, strict=True)], indent=2))
        return
    for sample, masks in zip(text, results, strict=True):
        Console().print(f"[bold]{sample}[/]", highlight=False)
        for number, candidates in enumerate(masks, start=1):
            shown = "  ".join(f"{token} {p:.3f}" for token, p in candidates)
            Console().print(f"  mask {number}: {shown}", highlight=False)


def generate(
    model: str,
    prompt: str,
    max_new_tokens: int = 64,
    sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    chat: bool = True,
    seed: int = 0,
    num_beams: int | None = None,
    trust_remote_code: bool = False,
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Write text: a causal LM continues the prompt, streamed (greedy unless --sample); a run with
    seq2seq heads answers with each of them.

    Args:
        model: a causal-LM checkpoint directory or GGUF alias (smollm2), a `headkit pretrain
            --objective clm` or `headkit sft` run, or a run with seq2seq heads.
        prompt: the text to continue (wrapped in the chat template when the tokenizer has one), or
            the input of the seq2seq heads (e.g. an article to write a headline for).
        max_new_tokens: the most tokens to generate.
        sample: sample with temperature / top-p instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus sampling probability mass.
        chat: use the tokenizer's chat template when it has one.
        seed: random seed for sampling.
        num_beams: seq2seq heads: beam search width (default: the head's own; 1 = greedy).
        trust_remote_code: allow checkpoints that need their own Python code.
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    from headkit.ship.generate import generate as run_generate
    from headkit.ship.generate import generate_heads, writing_heads

    if writing_heads(model):  # seq2seq heads: each writes its text for the prompt
        answers = generate_heads(model, [prompt], max_new_tokens, num_beams, device=device, dtype=dtype)[0]
        print("\n".join(f"{h}: {t}" for h, t in answers.items() if h != "truncated"))
        return
    run_generate(
        model,
        prompt,
        max_new_tokens=max_new_tokens,
        sample=sample,
        temperature=temperature,
        top_p=top_p,
        chat=chat,
        stream=True,
        seed=seed,
        trust_remote_code=trust_remote_code,
        device=device,
        dtype=dtype,
    )
    print()


def pretrain(config: PretrainConfig) -> None:
    """Continue pretraining (MLM or CLM) on your own text: domain adaptation before fine-tuning.

    Args:
        config: see PretrainConfig; give a YAML file with --config, flags, or both.
    """
    from headkit.training.pretrain import pretrain as run_pretraining

    run_pretraining(config)


def sft(config: SFTConfig) -> None:
    """Instruction-tune a causal LM on prompt -> response data (chat template, loss on responses only).

    Args:
        config: see SFTConfig; give a YAML file with --config, flags, or both.
    """
    from headkit.training.sft import sft as run_sft

    run_sft(config)


def export(
    run: str,
    to: Literal["transformers", "onnx"] | None = None,
    output: str | None = None,
    only_head: str | None = None,
    quantize: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    optimize: bool = True,
) -> None:
    """Export a trained model: to a plain transformers checkpoint, or every head to one ONNX graph.

    Args:
        run: a training run directory (or a saved model directory).
        to: transformers or onnx.
        output: the directory to write; default RUN/export-transformers or RUN/export-onnx.
        only_head: with --to transformers, export this one head of a multi-head model as a plain
            model (old spelling: --head).
        quantize: with --to onnx, also write an int8 (dynamically quantised) graph.
        overwrite: replace a non-empty output directory.
        progress: show the export's steps as they run.
        optimize: with --to onnx, apply onnxruntime's transformer fusions for the backbone's type
            (--no_optimize: the graph as torch.onnx wrote it).
    """
    from headkit.ship.export import export_onnx, export_transformers

    if to not in ("transformers", "onnx"):
        raise HeadkitError("give --to transformers or --to onnx")
    if quantize and to != "onnx":
        raise HeadkitError("--quantize applies to --to onnx only")
    if only_head and to != "transformers":
        raise HeadkitError("--only_head applies to --to transformers (ONNX holds every head in one graph)")
    output = output or str(Path(run) / f"export-{to}")
    if to == "transformers":
        result = export_transformers(run, output, head=only_head, overwrite=overwrite, progress=progress)
    else:
        result = export_onnx(run, output, quantize=quantize, overwrite=overwrite, progress=progress, optimize=optimize)
    print(f"wrote {result.path} ({result.target})")
    print(result.message)


def serve(
    run: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: Engine = "torch",
    max_texts: int = 64,
    max_chars: int = 20_000,
    timeout: float = 30.0,
    max_batch_texts: int = 128,
    batch_wait_ms: float = 2.0,
    max_new_tokens: int = 64,
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Serve every head over HTTP: POST /predict, GET /health, GET /metadata, GET /docs.

    Args:
        run: a training run, a saved model, or an ONNX export (with --engine onnx / onnx-int8).
        host: interface to bind; the default answers this machine only.
        port: TCP port.
        engine: torch, onnx or onnx-int8.
        max_texts: texts one request may send (more: HTTP 413).
        max_chars: characters per text (more: HTTP 413).
        timeout: seconds a request may wait for its predictions (then HTTP 504).
        max_batch_texts: texts gathered from concurrent requests into one prediction call (run in
            length-grouped forward passes of 16).
        batch_wait_ms: how long to wait for more requests to fill a forward pass.
        max_new_tokens: generated texts (seq2seq heads, sft runs): the most tokens a request may
            ask for (its `max_new_tokens`, default this; more: HTTP 413).
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    from headkit.ship.serve import ServeLimits, load_app, run_server

    limits = ServeLimits(
        max_texts=max_texts,
        max_chars=max_chars,
        timeout_s=timeout,
        max_batch_texts=max_batch_texts,
        batch_wait_ms=batch_wait_ms,
        max_new_tokens=max_new_tokens,
    )
    run_server(load_app(run, engine=engine, limits=limits, device=device, dtype=dtype), host=host, port=port)


def advise(
    data: str | None = None,
    text_column: str = "text",
    label: str = "label",
    budget: float = 30.0,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    model: str = "minilm",
    max_length: int = 128,
    unlabelled: list[str] | None = None,
    output_dir: str = "runs/advised",
    run: bool = False,
    overwrite: bool = False,
) -> None:
    """Recommend an adaptation strategy for your data and hardware, with its steps; --run does them.

    Args:
        data: the labelled file (CSV/JSONL/Parquet) or a built-in dataset; rows with an empty
            label count as unlabelled text.
        text_column: the text column (old spelling: --text).
        label: the label column (classes, or numbers for regression).
        budget: minutes of training you can spend on this machine.
        device: auto (a CUDA GPU if there is one), cpu or cuda.
        model: the backbone checkpoint directory or alias.
        max_length: token limit the plan trains with.
        unlabelled: more unlabelled text (files or built-in datasets, same text column), for
            continued pretraining when the data's vocabulary is far from the backbone's.
        output_dir: where the plan's run goes.
        run: carry the plan out now (pretraining if planned, then training).
        overwrite: with --run, replace an existing run in output_dir.
    """
    from headkit.advise.plan import advise as make_plan
    from headkit.advise.plan import run_plan
    from headkit.advise.rules import RULES
    from headkit.heads import head_class

    facts, hardware, plan = make_plan(
        data, text_column, label, budget, device, model, max_length, unlabelled, output_dir
    )
    console = Console()
    table = Table(title=f"what headkit sees in {data}", show_header=False)
    counts = head_class(facts.task_type).describe_counts(facts.class_counts) if facts.class_counts else ""
    rows = [
        ("task", f"{facts.task_type}" + (f", {counts}" if counts else "")),
        ("labelled examples", f"{facts.labelled:,}"),
        ("unlabelled texts", f"{facts.unlabelled:,}"),
        ("tokens per text", f"median {facts.tokens_median:.0f}, 95th percentile {facts.tokens_p95:.0f}"),
        ("words split into 3+ pieces", f"{facts.fragmented_share:.1%} (domain-shift signal; 10%+ is a clear shift)"),
        ("hardware", f"{hardware.name}" + (f", {hardware.memory_gb:.0f} GiB" if hardware.memory_gb else "")),
        ("budget", f"{budget:g} min"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    costs = Table(title="estimated training time here (from a measured step on your texts)")
    costs.add_column("strategy")
    costs.add_column("time", justify="right")
    costs.add_column("fits budget")
    for name, seconds in sorted(plan.costs.items(), key=lambda kv: kv[1]):
        costs.add_row(
            name,
            f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s",
            "yes" if seconds <= plan.budget_s else "no",
        )
    console.print(costs)
    steps = ("continued pretraining, then " if plan.pretrain else "") + plan.strategy
    console.print(f"[bold]recommended:[/] {steps}   (rule {plan.rule}: {RULES[plan.rule]})")
    for reason in plan.reasons:
        console.print(f"  - {reason}")
    console.print("[bold]steps:[/]")
    for i, command in enumerate(plan.commands, start=1):
        console.print(f"  {i}. {command}", highlight=False, soft_wrap=True)
    if run:
        run_plan(plan, facts, model, output_dir, list(unlabelled or []), overwrite=overwrite)
        console.print(f"done: the model is in {output_dir}; evaluate it with step {len(plan.commands) - 1} above")


COMMANDS: list[Callable] = [
    inspect,
    train,
    evaluate,
    predict,
    fill_mask,
    generate,
    pretrain,
    sft,
    export,
    serve,
    advise,
]
