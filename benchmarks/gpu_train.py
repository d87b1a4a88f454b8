"""Training and inference speed on an accelerator: sequences/s and model FLOPs utilisation (MFU).

Full fine-tuning of a classification head + backbone at sequence length 128, for the shipped
MiniLM and a BERT-base-sized config (random weights: speed does not depend on them), and
MiniLM inference. Two configurations run in the same process so the ratio is measured, not
claimed:
  baseline  fp32, eager attention, for-each AdamW
  fast      bf16 autocast (on GPUs with bf16; a CPU emulates it, 9x slower here, so not there),
            SDPA attention, fused AdamW (CUDA), optional torch.compile
MFU = model FLOPs per second / the device's peak dense bf16 FLOPS, with model FLOPs per token
= 6·N (N = non-embedding parameters: an embedding lookup is not a matmul) + 12·L·H·T
(attention scores and values, as in PaLM's MFU). On a CPU there is no reference peak, so MFU is
printed as n/a and the script says it ran on CPU.

    python benchmarks/gpu_train.py [--compile] [--steps 20] [--batch 64] [--infer-batch 1024]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

SEQ = 128
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense, SXM


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def build(model_name: str, attention: str, device: torch.device):
    import transformers

    from headkit import MultiHeadModel, head_config
    from headkit.backbone import resolve_model

    if model_name == "minilm":
        backbone = transformers.AutoModel.from_pretrained(resolve_model("minilm").path, attn_implementation=attention)
    else:  # BERT-base sized: 12 layers, 768 hidden, 110M parameters
        backbone = transformers.BertModel(transformers.BertConfig(attn_implementation=attention))
    head = head_config("classification", labels=["a", "b"], pooling="cls")
    return MultiHeadModel(backbone, {"label": head}).to(device)


def flops_per_token(model) -> float:
    config = model.backbone.config
    embeddings = sum(p.numel() for p in model.backbone.get_input_embeddings().parameters())
    params = sum(p.numel() for p in model.parameters()) - embeddings
    return 6 * params + 12 * config.num_hidden_layers * config.hidden_size * SEQ


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_speed(model_name: str, fast: bool, compile_: bool, device, batch: int, steps: int) -> tuple[float, float]:
    """(sequences/s, model FLOPs/s) of full fine-tuning."""
    model = build(model_name, "sdpa" if fast else "eager", device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fast and device.type == "cuda")
    step_fn = torch.compile(model) if compile_ else model
    vocab = model.backbone.config.vocab_size
    inputs = {
        "input_ids": torch.randint(1000, vocab, (batch, SEQ), device=device),
        "attention_mask": torch.ones(batch, SEQ, dtype=torch.long, device=device),
    }
    labels = {"label": torch.randint(0, 2, (batch,), device=device)}
    bf16 = fast and device.type == "cuda" and torch.cuda.is_bf16_supported()  # CPU bf16 is emulated: slower

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_fn(labels=labels, **inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - started
    sequences = batch * steps / seconds
    return sequences, sequences * SEQ * flops_per_token(model)


@torch.inference_mode()
def inference_speed(fast: bool, compile_: bool, device, batch: int, steps: int) -> float:
    model = build("minilm", "sdpa" if fast else "eager", device).eval()
    if fast and device.type == "cuda":
        model = model.to(torch.bfloat16)
    run = torch.compile(model) if compile_ else model
    vocab = model.backbone.config.vocab_size
    inputs = {
        "input_ids": torch.randint(1000, vocab, (batch, SEQ), device=device),
        "attention_mask": torch.ones(batch, SEQ, dtype=torch.long, device=device),
    }
    for _ in range(3):
        run(**inputs)
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        out = run(**inputs)
        out.outputs["label"].argmax(-1)
    sync(device)
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast configuration")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on GPU, 3 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default: 64 on GPU, 8 on CPU)")
    parser.add_argument("--infer-batch", type=int, default=None, help="inference batch (default: 1024 / 32)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    steps, batch = args.steps or (20 if gpu else 3), args.batch or (64 if gpu else 8)
    infer_batch = args.infer_batch or (1024 if gpu else 32)
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if gpu else "CPU (no GPU: MFU not defined; figures are CPU figures)"
    print(f"device: {name}; sequence length {SEQ}; train batch {batch}; torch {torch.__version__}")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    mfu = lambda flops: f"{100 * flops / peak:5.1f}%" if peak else "  n/a"  # noqa: E731
    print(f"\n{'training (full fine-tuning)':34}{'seq/s':>10}{'TFLOP/s':>10}{'MFU':>8}{'speed-up':>10}")
    for model_name in ("minilm", "bert-base"):
        base, base_flops = train_speed(model_name, False, False, device, batch, steps)
        fast, fast_flops = train_speed(model_name, True, args.compile, device, batch, steps)
        label = "fast" + (" + compile" if args.compile else "")
        print(f"{model_name + ' baseline':34}{base:10.1f}{base_flops / 1e12:10.2f}{mfu(base_flops):>8}{'1.00x':>10}")
        print(
            f"{model_name + ' ' + label:34}{fast:10.1f}{fast_flops / 1e12:10.2f}{mfu(fast_flops):>8}{fast / base:9.2f}x"
        )
    base = inference_speed(False, False, device, infer_batch, steps)
    fast = inference_speed(True, args.compile, device, infer_batch, steps)
    print(f"\n{'inference (MiniLM, batch ' + str(infer_batch) + ')':34}{'seq/s':>10}{'speed-up':>10}")
    print(f"{'baseline':34}{base:10.1f}{'1.00x':>10}")
    print(f"{'fast':34}{fast:10.1f}{fast / base:9.2f}x")


if __name__ == "__main__":
    main()
