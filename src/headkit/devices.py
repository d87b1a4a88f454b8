"""Which device and dtype inference runs on: `--device auto|cpu|cuda|mps`, `--dtype auto|...`.

auto picks a CUDA GPU when torch sees one, else Apple's MPS, else the CPU; a device that is asked
for by name but missing is an error that says what this machine has. The dtype's auto is bf16 on
GPUs that have it (fp16 on older ones) and fp32 elsewhere; heads decode in fp32 whatever it is.
The flags' types (`Device`, `DType`) live in choices.py, which the CLI reads without loading torch.
"""

from __future__ import annotations

from typing import TypeVar

import torch

from headkit.errors import HeadkitError, UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if name.split(":")[0] not in available:
        raise UsageError(f"--device {name!r}: choose one of auto, cpu, cuda, mps")
    if not available[name.split(":")[0]]:
        have = ", ".join(k for k, v in available.items() if v)
        raise HeadkitError(f"--device {name}: this machine has no {name.split(':')[0].upper()} device (it has: {have})")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        if name not in DTYPES:
            raise UsageError(f"--dtype {name!r}: choose one of auto, {', '.join(DTYPES)}")
        if device.type == "cpu" and name == "float16":
            raise HeadkitError("--dtype float16 runs on GPUs; on the CPU use bfloat16 or float32")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def place(model: ModuleT, device: str = "auto", dtype: str = "auto") -> ModuleT:
    """`model` on the chosen device in the chosen dtype, in eval mode (inference's one placement)."""
    where = pick_device(device)
    return model.to(device=where, dtype=pick_dtype(dtype, where)).eval()


def onnx_providers(device: torch.device) -> list[str]:
    """onnxruntime's execution providers for `device`: CUDA first where this onnxruntime build has it."""
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
