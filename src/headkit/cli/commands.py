"""The `headkit` subcommands: plain functions whose parameters and docstrings become flags and
help (parser.py), so the CLI and the library never drift. Each one is a thin wrapper over the
library: it parses nothing itself, calls the library and hands the result to render.py. The
commands that fit a model live in training_commands.py; COMMANDS lists them all, in help order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from headkit.choices import Device, DType, Engine
from headkit.cli import render
from headkit.cli.training_commands import advise, pretrain, sft, train
from headkit.data import MAX_TOKENS
from headkit.errors import HeadkitError, UsageError


def inspect(model: str, json: bool = False, trust_remote_code: bool = False) -> None:
    """Show where a checkpoint's backbone ends and its head starts (reads the config only).

    Args:
        model: a local Hugging Face checkpoint directory, or an alias: minilm, smollm2.
        json: print machine-readable JSON instead of a table.
        trust_remote_code: allow checkpoints that need their own Python code.
    """
    from headkit.backbone import inspect_model
    from headkit.ship.engines import read_choice, run_root, still_holds
    from headkit.ship.save import describe_heads

    report = inspect_model(model, trust_remote_code=trust_remote_code)
    heads = describe_heads(model)  # a headkit save or run also carries its own task heads
    root = run_root(model) if heads else None
    checked = read_choice(root) if root else None  # what --engine auto measured (engines.json)
    if json:
        render.as_json({**report.to_dict(), "headkit_heads": heads, "engines": checked})
        return
    render.checkpoint(report)
    if heads:
        render.saved_heads(heads, model)
    if checked and root:
        render.engines(checked, current=still_holds(checked, root, "auto"))


def evaluate(
    run: str,
    data: str | None = None,
    head: list[str] | None = None,
    text_column: str = "text",
    max_length: int | None = None,
    batch_size: int = 64,
    output: str | None = None,
    progress: bool = True,
    engine: Engine = "auto",
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
        engine: auto (the fastest engine validated for this model on this machine), torch, torch-bf16,
            onnx or onnx-int8.
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    from headkit._fs import atomic_write_json
    from headkit.ship.inference import Metrics
    from headkit.ship.predict import load_for_inference
    from headkit.training.evaluate import evaluate_dataset
    from headkit.training.report import print_summary

    if not data:
        raise UsageError("evaluate needs labelled data: --data FILE (or a built-in dataset name)")
    bad = [spec for spec in head or [] if ":" not in spec]
    if bad:
        raise UsageError(f"--head {bad[0]!r} should look like NAME:COLUMN (e.g. sentiment:label)")
    model, tokenizer = load_for_inference(run, engine=engine, device=device, dtype=dtype)
    columns = dict(spec.split(":", 1) for spec in head or [])
    result, count = evaluate_dataset(
        model, tokenizer, data, columns, text_column, max_length, batch_size, progress=progress
    )
    print_summary(model, result, {}, title=f"evaluation on {data} ({count} examples)")
    if output:
        metrics = Metrics(result.scores, result.losses, result.reports, count, result.unseen)
        atomic_write_json(Path(output), metrics.to_json())  # what model.evaluate(...).to_json() gives


def predict(
    run: str,
    input: str | None = None,
    output: str | None = None,
    text: list[str] | None = None,
    image: list[str] | None = None,
    text_column: str = "text",
    text_pair: str | None = None,
    batch_size: int = 64,
    engine: Engine = "auto",
    progress: bool = True,
    max_length: int | None = None,
    max_tokens: int | None = MAX_TOKENS,
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
        text_pair: the column of each row's second text (sentence pairs; a question-answering model's
            context; a multiple-choice model's choices: a column of lists or columns A,B,C); default:
            the one the model's heads trained on, where --input has it. With --text: the second text
            of each --text.
        batch_size: at most this many texts per forward pass.
        engine: auto (the fastest engine validated for this model on this machine against torch fp32; torch
            where none was), torch, torch-bf16, onnx or onnx-int8 (a directory written by export --to onnx).
        progress: show a progress bar for --input files.
        max_length: token limit; longer texts are predicted on their first tokens and marked
            truncated (default: the limit the model was trained with).
        max_tokens: at most this many padded tokens per forward pass (texts x the longest one's
            length): long texts go in smaller batches than short ones; null: --batch_size alone.
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    from headkit.ship.predict import load_for_inference, predict_file, predict_texts

    if not input and not text and not image:
        raise UsageError("nothing to predict: give --input FILE, --text 'some text' or --image FILE")
    model, tokenizer = load_for_inference(run, engine=engine, device=device, dtype=dtype)
    if image:
        _predict_images(model, tokenizer, image, batch_size)
    if input:
        output = output or str(Path(input).with_suffix("")) + ".predictions.jsonl"
        count, truncated = predict_file(
            model, tokenizer, input, text_column, output, batch_size, progress, max_length, max_tokens, text_pair
        )
        render.file_predictions(count, truncated, output)
    if text:
        pairs_only = [n for n, h in model.heads.items() if _reads_pairs(h.codec)]
        if text_pair is None and pairs_only:
            raise UsageError(
                f"heads {pairs_only} score pairs of texts: give --text_pair SECOND beside --text, or rank candidates "
                "with headkit rank --query TEXT --candidate A --candidate B"
            )
        inputs = [(t, text_pair) for t in text] if text_pair is not None and not input else text
        predictions = predict_texts(model, tokenizer, inputs, batch_size, max_length, max_tokens=max_tokens)
        shown = [f"{t} | {text_pair}" for t in text] if inputs is not text else text
        render.predictions(shown, predictions, model)


def _reads_pairs(codec: object) -> bool:
    """Whether a head scores only pairs of texts (a context and a choice, a query and a document)."""
    return getattr(codec, "inputs", None) == "choices" or bool(getattr(codec, "needs_text_pair", False))


def rank(
    run: str,
    query: str | None = None,
    candidate: list[str] | None = None,
    only_head: str | None = None,
    json: bool = False,
    batch_size: int = 32,
    engine: Engine = "auto",
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Order candidate texts for a query, best first, by a head that scores pairs of texts.

    The head scores each (query, candidate) pair: a cross-encoder head (a query and its documents),
    a multiple-choice head (a context and its choices) or a reward head (a prompt and its responses).

    Args:
        run: a training run directory (or its model/ directory), or an ONNX export with --engine onnx.
        query: the context, question or prompt.
        candidate: the texts to order (repeat --candidate for each).
        only_head: the scoring head to rank by (needed when the model has several).
        json: print JSON (index, text, score, probability per candidate) instead of a table.
        batch_size: at most this many pairs per forward pass.
        engine: auto, torch, torch-bf16, onnx or onnx-int8 (as predict's).
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    from headkit.ship.inference import score_choices
    from headkit.ship.predict import load_for_inference

    if query is None or not candidate:
        raise UsageError("rank needs --query TEXT and at least one --candidate TEXT (repeat it for each)")
    model, tokenizer = load_for_inference(run, engine=engine, device=device, dtype=dtype)
    ranked = score_choices(model, tokenizer, [(query, candidate)], only_head, batch_size, how="--only_head")[0].ranked()
    if json:
        render.as_json(ranked)
        return
    render.ranking(query, ranked)


def _predict_images(model, processor, paths: list[str], batch_size: int) -> None:
    from headkit.data.images import is_image_processor, open_image
    from headkit.ship.predict import predict_images

    if not is_image_processor(processor):
        raise HeadkitError("--image needs a model trained on images; this one reads text (use --text)")
    images = [open_image(p, "--image")[0] for p in paths]
    render.predictions(paths, predict_images(model, processor, images, batch_size), model)


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
    from headkit.ship.generate import fill_mask as run_fill_mask

    results = run_fill_mask(model, text, top_k, trust_remote_code, device, dtype)
    if json:
        render.as_json([{"text": t, "masks": r} for t, r in zip(text, results, strict=True)])
        return
    render.masks(text, results)


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
        render.head_texts(answers)
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


def export(
    run: str,
    to: Literal["transformers", "onnx", "sentence-transformers"] | None = None,
    output: str | None = None,
    only_head: str | None = None,
    quantize: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    optimize: bool = True,
) -> None:
    """Export a trained model: to a plain transformers checkpoint, every head to one ONNX graph, or
    an embedding head to a sentence-transformers folder.

    Args:
        run: a training run directory (or a saved model directory).
        to: transformers, onnx or sentence-transformers.
        output: the directory to write; default RUN/export-transformers or RUN/export-onnx.
        only_head: with --to transformers, export this one head of a multi-head model as a plain
            model (old spelling: --head); with --to sentence-transformers, the embedding head to write.
        quantize: with --to onnx, also write an int8 (dynamically quantised) graph.
        overwrite: replace a non-empty output directory.
        progress: show the export's steps as they run.
        optimize: with --to onnx, apply onnxruntime's transformer fusions for the backbone's type
            (--no_optimize: the graph as torch.onnx wrote it).
    """
    from headkit.ship.export import export_onnx, export_sentence_transformers, export_transformers

    if to not in ("transformers", "onnx", "sentence-transformers"):
        raise UsageError("give --to transformers, --to onnx or --to sentence-transformers")
    if quantize and to != "onnx":
        raise UsageError("--quantize applies to --to onnx only")
    if only_head and to == "onnx":
        raise UsageError("--only_head applies to --to transformers and sentence-transformers (ONNX holds every head)")
    output = output or str(Path(run) / f"export-{to}")
    if to == "transformers":
        result = export_transformers(run, output, head=only_head, overwrite=overwrite, progress=progress)
    elif to == "sentence-transformers":
        result = export_sentence_transformers(run, output, head=only_head, overwrite=overwrite, progress=progress)
    else:
        result = export_onnx(run, output, quantize=quantize, overwrite=overwrite, progress=progress, optimize=optimize)
    render.export_result(result)


def serve(
    run: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: Engine = "auto",
    max_texts: int = 64,
    max_chars: int = 20_000,
    timeout: float = 30.0,
    max_batch_texts: int = 128,
    batch_wait_ms: float = 2.0,
    max_new_tokens: int = 64,
    max_queue: int = 256,
    api_key: str | None = None,
    admin_key: str | None = None,
    heads_dir: str | None = None,
    cors_origin: list[str] | None = None,
    replicas: int = 1,
    drain_s: float = 0.0,
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Serve every head over HTTP: POST /predict, GET /health, /ready, /metadata, /metrics, /docs.

    Args:
        run: a training run, a saved model, or an ONNX export (with --engine onnx / onnx-int8).
        host: interface to bind; the default answers this machine only.
        port: TCP port.
        engine: auto (the fastest engine validated for this model on this machine), torch, torch-bf16,
            onnx or onnx-int8.
        max_texts: texts one request may send (more: HTTP 413).
        max_chars: characters per text (more: HTTP 413).
        timeout: seconds a request may wait for its predictions (then HTTP 504).
        max_batch_texts: texts gathered from concurrent requests into one prediction call (run in
            length-grouped forward passes of at most 16 texts and 4096 padded tokens).
        batch_wait_ms: how long to wait for more requests to fill a forward pass.
        max_new_tokens: generated texts (seq2seq heads, sft runs): the most tokens a request may
            ask for (its `max_new_tokens`, default this; more: HTTP 413).
        max_queue: requests that may wait for the worker; more, or more queued work than it gets
            through within --timeout at its measured pace, is answered 429 with Retry-After.
        api_key: a key every route but /health and /ready requires as `Authorization: Bearer KEY`
            (default: the HEADKIT_API_KEY environment variable, which keeps it out of `ps`; none: open).
        admin_key: enables POST /admin/heads and DELETE /admin/heads/NAME (loading head saves onto
            the running backbone, unloading heads), which require this key (default: HEADKIT_ADMIN_KEY).
        heads_dir: the folder the admin routes load head saves from (a request names a save inside it).
        cors_origin: a browser origin allowed to call the server (repeat for more; default none).
        replicas: more than 1: that many copies of the server behind Ray Serve's proxy on this
            machine (or the cluster RAY_ADDRESS names), each batching its own requests and using its
            share of the cores (`pip install 'headkit[ray]'`).
        drain_s: on SIGTERM, /ready turns 503 at once and the server keeps answering this many
            seconds (time for a load balancer to stop sending) before it refuses connections,
            answers the requests it accepted and exits.
        device: auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda or mps.
        dtype: auto (bf16 on GPUs that have it, fp32 elsewhere), float32, bfloat16 or float16.
    """
    from headkit.ship.serve import ServeAccess, ServeLimits, load_app, run_server

    limits = ServeLimits(
        max_texts=max_texts,
        max_chars=max_chars,
        timeout_s=timeout,
        max_batch_texts=max_batch_texts,
        batch_wait_ms=batch_wait_ms,
        max_new_tokens=max_new_tokens,
        max_queue=max_queue,
    )
    access = ServeAccess.from_options(api_key, admin_key, heads_dir, cors_origin or ())
    if access.heads_folder is not None and not access.heads_folder.is_dir():
        raise UsageError(f"--heads_dir {heads_dir} is not a folder")
    if replicas < 1:
        raise UsageError(f"--replicas {replicas}: give 1 or more")
    if replicas > 1:
        from headkit.ship.serve.ray_serve import application, run_replicas

        if drain_s:
            raise UsageError("--drain_s applies to one server; Ray Serve drains its replicas itself")
        app = application(run, replicas, engine=engine, limits=limits, access=access, device=device, dtype=dtype)
        run_replicas(app, host=host, port=port, timeout_s=timeout)
        return
    app = load_app(run, engine=engine, limits=limits, device=device, dtype=dtype, access=access)
    run_server(app, host=host, port=port, drain_s=drain_s)


COMMANDS: list[Callable] = [
    inspect,
    train,
    evaluate,
    predict,
    rank,
    fill_mask,
    generate,
    pretrain,
    sft,
    export,
    serve,
    advise,
]
