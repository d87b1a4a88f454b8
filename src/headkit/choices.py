"""The values that options take, as `Literal` types, in a module that imports nothing heavy.

The run configs (training/config.py) and the CLI's parser are built from these types; the modules
that act on a choice (devices.py, heads/pooling.py, weighting.py) re-export them. Keeping them here
lets `headkit --help` and `import headkit.training.config` build their flags without loading torch
(seconds of start-up for every command, every test subprocess and every `--help`).
"""

from __future__ import annotations

from typing import Literal

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
# how a pooled head reduces a sequence to one vector (heads/pooling.py computes each)
Pooling = Literal["auto", "mean", "cls", "max", "last", "pooler"]
# what runs a saved model for predict / evaluate / serve (ship/engines.py: auto picks a validated one)
Engine = Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"]
# how the heads' losses combine (weighting.py)
Weighting = Literal["static", "uncertainty"]
