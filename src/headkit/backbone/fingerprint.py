"""Identify the backbone a set of heads was trained on, so heads are never loaded onto another.

A fingerprint holds the model type and sizes, a hash over the parameter names and shapes (a
different family or size) and a digest of the weights themselves (a changed copy of the same
architecture: full, partial, LoRA or few-shot training moves almost every weight).
"""

from __future__ import annotations

import hashlib
import json

import torch

from headkit._typing import Backbone
from headkit.backbone_outputs import floating_dtype, width_or_none


def _backbone_names_and_shapes(backbone: Backbone) -> list[str]:
    """Parameter names and shapes of the backbone, seen through any PEFT wrapper."""
    if hasattr(backbone, "get_base_model"):
        backbone = backbone.get_base_model()
    lines = []
    for name, p in backbone.named_parameters(remove_duplicate=False):
        if "lora_" in name or "modules_to_save" in name:
            continue
        lines.append(f"{name.replace('.base_layer', '')}:{tuple(p.shape)}")
    return sorted(lines)


SAMPLES_PER_TENSOR = 64


def weights_samples(backbone: Backbone) -> dict[str, str]:
    """Per tensor of the backbone's state, a short digest of the weights themselves, cheap enough
    for a 7B model: 64 evenly strided values (buffers such as BatchNorm statistics and LoRA
    adapters included), rounded to bf16 so that the same weights loaded in fp32 or bf16 give the
    same digest. Training moves almost every weight by far more than bf16's rounding, so a
    fine-tuned, partially tuned, LoRA-adapted or few-shot-tuned backbone gets other digests; kept
    per tensor so that a mismatch can say which weights differ."""
    samples = {}
    for name, tensor in sorted(backbone.state_dict().items()):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLES_PER_TENSOR)][:SAMPLES_PER_TENSOR]
        data = sample.to(device="cpu", dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
        samples[name] = hashlib.sha256(data).hexdigest()[:12]
    return samples


def digest_of(samples: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(samples, sort_keys=True).encode()).hexdigest()


def fingerprint(backbone: Backbone) -> dict:
    """Identify the backbone a set of heads was trained on: type, sizes, a structure hash and a
    digest of sampled weights.

    The structure hash covers parameter names and shapes, so a different model family or size
    is told apart from a changed copy of the same architecture; the weights digest tells a
    changed copy (full, partial, LoRA, few-shot training) from the checkpoint it started from.
    """
    config = backbone.config
    samples = weights_samples(backbone)
    digest = hashlib.sha256("\n".join(_backbone_names_and_shapes(backbone)).encode()).hexdigest()
    return {
        "model_type": config.model_type,
        "hidden_size": width_or_none(backbone),
        "vocab_size": getattr(config, "vocab_size", None),
        "structure_sha256": digest,
        "weights_sample_sha256": digest_of(samples),
        "weights_samples": samples,
        "dtype": str(floating_dtype(backbone)).replace("torch.", ""),
    }


def differing_weights(saved: dict, current: dict) -> list[str]:
    """The tensors whose sampled weights differ between two fingerprints (all, when the saved one
    predates per-tensor samples)."""
    before, now = saved.get("weights_samples") or {}, current["weights_samples"]
    return sorted(n for n in set(before) | set(now) if before.get(n) != now.get(n))
