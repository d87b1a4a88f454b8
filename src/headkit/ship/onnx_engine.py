"""Run an ONNX export (see `export.py`) with onnxruntime behind the same surface as `MultiHeadModel`.

`predict_texts` needs only `heads` (to decode), `backbone_config` (to know the input limit),
`device` and a call that returns a `MultiHeadOutput`; this class provides exactly that, so
batch prediction, the CLI and the server run either engine through the same code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from headkit.devices import onnx_providers
from headkit.errors import CheckpointError
from headkit.extras import require
from headkit.heads import build_head, config_from_dict
from headkit.model import MultiHeadOutput
from headkit.ship.save import read_json_manifest

ONNX_FORMAT = "headkit.onnx"
ONNX_MANIFEST = "onnx.json"
ONNX_FILE, ONNX_INT8_FILE = "model.onnx", "model.int8.onnx"
HEAD_STATE = "head_state.safetensors"  # the heads' fitted buffers (multi-label thresholds), which decoding reads


def read_onnx_manifest(directory: Path) -> dict:
    path = directory / ONNX_MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {ONNX_MANIFEST}: export one with headkit export RUN --to onnx")
    return read_json_manifest(path, ONNX_FORMAT)


def as_feed(tensor: Tensor) -> np.ndarray:
    """Token ids and masks as int64, pixel/audio values as float32: the dtypes the graph was traced with."""
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float32 if np.issubdtype(array.dtype, np.floating) else np.int64, copy=False)


class OnnxModel:
    """All heads from one onnxruntime session; `int8` picks the quantised graph.

    `spin`: onnxruntime's worker threads spin while they wait for work, which saves a wake-up
    between a run's operators (a lone caller's batch runs ~8% faster here) but holds the cores
    even between runs. A server shares its cores with the code that parses requests and tokenises
    them, so it passes `spin=False` (benchmarks/serve_load.py: onnx-int8 at 16 clients, 2 cores).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        int8: bool = False,
        threads: int | None = None,
        device: str = "cpu",
        spin: bool = True,
    ):
        require("onnx", "The onnx engines")
        import onnxruntime as ort
        from transformers import AutoConfig

        directory = Path(directory)
        manifest = read_onnx_manifest(directory)
        file = ONNX_INT8_FILE if int8 else ONNX_FILE
        path = directory / file
        if file not in manifest.get("files", {}) or not path.is_file():
            hint = " (export with --quantize for the int8 graph)" if int8 else ""
            raise CheckpointError(f"{path} is missing{hint}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest["files"][file]:
            raise CheckpointError(f"{path} does not match the checksum in {ONNX_MANIFEST}: the file is corrupt")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            providers = onnx_providers(torch.device(device))
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise CheckpointError(f"onnxruntime could not load {path}: {e}") from e
        self.input_names: list[str] = manifest["inputs"]
        self.heads = {name: build_head(config_from_dict(c)).eval() for name, c in manifest["heads"].items()}
        # head -> its graph output (exports before output names were prefixed named them as the heads)
        self.output_names = dict(zip(self.heads, manifest.get("outputs") or list(self.heads), strict=True))
        load_head_state(self.heads, directory, manifest)
        self.backbone_config = AutoConfig.from_pretrained(directory)
        self.max_length: int | None = manifest.get("max_length")  # the limit the model was trained with
        self.columns: dict[str, Any] = manifest.get("columns") or {}  # the data columns each head trained on
        self.device = torch.device("cpu")  # where inputs are built; onnxruntime copies them to its provider

    # An engine has no training mode; these let evaluation (training/evaluate.py) run it as a model.
    training = False

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        return self

    def __call__(
        self, heads: list[str] | None = None, labels: Mapping[str, Tensor] | None = None, **inputs: Tensor
    ) -> MultiHeadOutput:
        """Every head's (or the named ones') output; `labels` are accepted and not scored (no losses)."""
        names = heads if heads is not None else list(self.heads)
        if "token_type_ids" in self.input_names and "token_type_ids" not in inputs:  # as BERT defaults them
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        feed = {n: as_feed(inputs[n]) for n in self.input_names}
        values = self.session.run([self.output_names[n] for n in names], feed)
        outputs = {n: torch.from_numpy(v) for n, v in zip(names, values, strict=True)}
        mask = inputs.get("attention_mask")
        if mask is None:
            first = next(iter(inputs.values()))
            mask = torch.ones(first.shape[:2], dtype=torch.long)
        return MultiHeadOutput(outputs=outputs, mask=mask)


def load_head_state(heads: Mapping[str, nn.Module], directory: Path, manifest: dict) -> None:
    """Give the heads built from their configs the buffers training fitted (multi-label thresholds):
    the graph computes their outputs, the heads decide on them."""
    digest = manifest.get("files", {}).get(HEAD_STATE)
    if digest is None:  # heads that keep no fitted state
        return
    if not (directory / HEAD_STATE).is_file():
        raise CheckpointError(
            f"{directory} has no {HEAD_STATE}, which {ONNX_MANIFEST} lists (the heads' fitted state, such as "
            "multi-label thresholds): copy the whole export directory"
        )
    data = (directory / HEAD_STATE).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{directory / HEAD_STATE} does not match the checksum in {ONNX_MANIFEST}: it is corrupt")
    state = safetensors.torch.load(data)
    for name, head in heads.items():
        own = {key[len(name) + 1 :]: value for key, value in state.items() if key.startswith(f"{name}.")}
        head.load_state_dict(own, strict=False)
