"""The machine a benchmark ran on, in one line: CPU model, cores, the instruction sets that decide
CPU inference speed (AVX2, AVX-512, VNNI for int8 dot products, AMX), the kernels torch picked,
torch and onnxruntime versions and thread counts. int8 ONNX speed-ups depend on VNNI/AMX most:
the same export measured 1.11x on a machine without VNNI and 3.33x on one with it.

    python benchmarks/machine.py
"""

from __future__ import annotations

import os

from headkit.ship.engines import cpu_facts  # the CPU's name and flags, as --engine auto records them

# (what to call it, /proc/cpuinfo flags any of which means present)
FEATURES = [
    ("AVX2", {"avx2"}),
    ("AVX-512", {"avx512f"}),
    ("VNNI", {"avx512_vnni", "avx_vnni"}),
    ("AMX", {"amx_tile", "amx_int8"}),
]


def machine_line() -> str:
    import torch

    model, flags = cpu_facts()
    features = ", ".join(f"{name} {'yes' if flags & names else 'no'}" for name, names in FEATURES) if flags else "?"
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    parts = [
        f"CPU: {model}, {os.cpu_count()} cores; {features}",
        f"torch {torch.__version__} ({capability} kernels, {torch.get_num_threads()} threads)",
    ]
    try:
        import onnxruntime as ort

        parts.append(f"onnxruntime {ort.__version__} (default threads: one per physical core)")
    except ImportError:
        parts.append("onnxruntime not installed")
    return "; ".join(parts)


if __name__ == "__main__":
    print(machine_line())
