"""`--engine auto`: the fastest engine this model has been *validated* with on this machine.

A faster engine is only worth having if it answers as the model does, and whether it is faster
depends on the CPU (int8 ONNX gains ~2x where the CPU has VNNI, next to nothing where it has not),
so the choice is measured, never assumed. Each candidate engine

    torch        the saved model in fp32: the reference
    torch-bf16   the saved model in bf16 (a CPU with AMX, or a GPU)
    onnx         the ONNX export, onnxruntime's transformer fusions applied
    onnx-int8    its int8-weight copy (CPU)

scores the run's validation split (kept by training in validation.json, or data given to
`validate_engines`), is timed on it, and is valid only if for **every head** its decisions agree
with torch fp32's on >= 99.5% of the examples (as the head's scoring judges "the same decision")
and its primary metric moves by <= 0.3 point. The fastest valid engine is chosen; the record (every
candidate's speed, agreement, metric change and verdict, the machine it was measured on and the
model's identity) is written to engines.json next to the model, shown by `headkit inspect RUN` and
reused until the machine, torch, onnxruntime or the model changes.

When: at export (`headkit export RUN --to onnx` into the run's default `RUN/export-onnx`, which is
where the ONNX candidates are read from), else on first use of `auto` (torch candidates and an
existing export). Predicting never writes an export behind the user's back. A model with nothing
to validate on (no validation.json, no data given) runs on torch.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

from headkit._fs import atomic_write_json
from headkit.choices import Engine
from headkit.errors import HeadkitError, UsageError
from headkit.save_layout import find_save, read_json_manifest

logger = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = get_args(Engine)
CHOICE_FILE = "engines.json"
FORMAT = "headkit.engines/1"
EXPORT_DIR = "export-onnx"  # where `headkit export RUN --to onnx` writes by default
MIN_AGREEMENT = 0.995  # of examples on which a head decides as torch fp32 does
MAX_METRIC_CHANGE = 0.003  # 0.3 point of a metric in [0, 1] (relative, for metrics beyond 1)
MIN_TIMED_SECONDS = 0.5  # a candidate's passes are repeated until this much time is measured (best one kept)


@dataclass
class EngineCheck:
    """One candidate's measurements and verdict."""

    engine: str
    valid: bool
    why: str
    examples_per_s: float | None = None
    agreement: dict[str, float] = field(default_factory=dict)  # head -> share of examples decided alike
    metric_change: dict[str, float] = field(default_factory=dict)  # head -> |primary metric - torch fp32's|


def machine_facts(device: str) -> dict[str, Any]:
    """What decides which engine is fastest: the CPU and its int8/bf16 instructions, the device,
    torch's and onnxruntime's versions. A record measured under other facts is measured again."""
    import torch

    from headkit.devices import pick_device

    where = pick_device(device)
    model, flags = cpu_facts()
    facts = {
        "cpu": model,
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "amx": bool(flags & {"amx_tile", "amx_bf16"}),
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name(where) if where.type == "cuda" else where.type,
        "torch": torch.__version__,
    }
    try:  # the installed version, without importing it (a second of start-up)
        facts["onnxruntime"] = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        facts["onnxruntime"] = None
    return facts


def cpu_facts() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux /proc/cpuinfo; elsewhere the platform's name)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return platform.processor() or platform.machine(), set()
    model, flags = platform.machine(), set[str]()
    for line in info.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def run_root(run: str | os.PathLike) -> Path:
    """The directory engines.json, validation.json and export-onnx/ live in: the run directory
    (for a run's model/ or the run itself), or a save directory itself."""
    model_dir = find_save(run, with_backbone=False)
    if model_dir is None:
        raise HeadkitError(f"{run} is neither a training run (with model/) nor a saved model")
    parent = model_dir.parent
    return parent if model_dir.name == "model" and (parent / "model").resolve() == model_dir.resolve() else model_dir


def onnx_dir(run: str | os.PathLike) -> Path:
    """The ONNX export to run: `run` itself when it is one, else the run's export-onnx/."""
    from headkit.hub import local_path
    from headkit.ship.onnx_engine import ONNX_MANIFEST

    local = local_path(run)
    if (local / ONNX_MANIFEST).is_file() or find_save(local) is None:
        return local  # an export, or nothing headkit reads: OnnxModel names what is missing
    export = run_root(local) / EXPORT_DIR
    return export if (export / ONNX_MANIFEST).is_file() else local


def validate_after_export(run: str | os.PathLike, output_dir: Path) -> dict[str, Any] | None:
    """At export: when the export is the run's own (RUN/export-onnx) and the run kept its validation
    split, check the engines now, so that `--engine auto` starts from a measured choice (on the
    device `auto` will pick, so that the record fits the runs that follow)."""
    from headkit.training.validation_set import VALIDATION_FILE

    root = run_root(run)
    if output_dir.resolve() != (root / EXPORT_DIR).resolve() or not (root / VALIDATION_FILE).is_file():
        return None
    return validate_engines(root)


def model_identity(root: Path) -> str:
    """A digest that changes when the saved model does: heads.json (which holds every head file's
    sha256) and the backbone's file names and sizes (hashing gigabytes of weights would cost more
    than the check saves)."""
    import hashlib

    model_dir = find_save(root, with_backbone=False)
    assert model_dir is not None  # run_root found it
    digest = hashlib.sha256((model_dir / "heads.json").read_bytes())
    backbone = model_dir / "backbone"
    for path in sorted(backbone.rglob("*")) if backbone.is_dir() else []:
        if path.is_file():
            digest.update(f"{path.relative_to(backbone)}:{path.stat().st_size};".encode())
    return digest.hexdigest()


def resolve_engine(
    run: str | os.PathLike, engine: str, device: str, dtype: str, trust_remote_code: bool = False
) -> tuple[str, str]:
    """(engine, dtype) to load `run` with: `auto` resolved (see auto_engine; a dtype named by the
    user means the torch engine, whose setting it is), torch-bf16 as torch in bfloat16. A choice
    the check made runs as it was checked: torch in fp32."""
    if engine == "torch-bf16":
        if dtype not in ("auto", "bfloat16"):
            raise UsageError(f"--engine torch-bf16 runs in bfloat16; --dtype {dtype} contradicts it")
        return "torch", "bfloat16"
    if engine != "auto":
        return engine, dtype
    if dtype != "auto":
        return "torch", dtype
    chosen = auto_engine(run, device, trust_remote_code)
    if chosen is None:
        return "torch", dtype  # nothing was checked: torch as it always ran (bf16 on a GPU)
    return resolve_engine(run, chosen, device, "float32" if chosen == "torch" else dtype)


def read_choice(root: Path) -> dict[str, Any] | None:
    path = root / CHOICE_FILE
    if not path.is_file():
        return None
    try:
        return read_json_manifest(path, FORMAT)
    except HeadkitError as e:
        logger.warning("%s is unreadable (%s); the engines are checked again", path, e)
        return None


def auto_engine(run: str | os.PathLike, device: str = "auto", trust_remote_code: bool = False) -> str | None:
    """The engine `--engine auto` runs `run` on: the recorded choice when it was measured on this
    machine for this model and its files are still there, else a fresh check when there is an
    engine besides torch to check and the run kept its validation split; None (torch, unchecked)
    otherwise."""
    from headkit.hub import local_path
    from headkit.ship.onnx_engine import ONNX_MANIFEST

    local = local_path(run)
    if (local / ONNX_MANIFEST).is_file():  # an ONNX export directory: no torch weights to compare with
        return "onnx"
    root = run_root(local)
    record = read_choice(root)
    if record is not None and still_holds(record, root, device):
        return record["chosen"]
    if not candidates(root, device)[0]:
        return None  # torch is all there is here: nothing to measure
    from headkit.training.validation_set import load_validation_set

    data = load_validation_set(root)
    if data is None:
        logger.info(
            "engine auto: torch (%s has no validation split to check other engines on; "
            "headkit.validate_engines(RUN, DATA) checks them on labelled data)",
            root,
        )
        return None
    return validate_engines(root, data, device=device, trust_remote_code=trust_remote_code)["chosen"]


def still_holds(record: dict[str, Any], root: Path, device: str) -> bool:
    """Whether a record speaks for this machine, this model and the files its choice runs."""
    from headkit.ship.onnx_engine import ONNX_FILE, ONNX_INT8_FILE

    if record.get("machine") != machine_facts(device) or record.get("model") != model_identity(root):
        return False
    graph = {"onnx": ONNX_FILE, "onnx-int8": ONNX_INT8_FILE}.get(record["chosen"])
    return graph is None or (root / EXPORT_DIR / graph).is_file()


def validate_engines(
    run: str | os.PathLike, data: Any = None, device: str = "auto", trust_remote_code: bool = False
) -> dict[str, Any]:
    """Check every candidate engine against torch fp32 on labelled `data` (default: the run's kept
    validation split; else anything `model.evaluate` reads; a label training never had is a miss
    for every engine), time each, choose the fastest valid one and write the record to
    engines.json next to the model. Returns the record.

    Candidates: torch-bf16 where the CPU has AMX or a GPU runs it; onnx and onnx-int8 when the run
    has an ONNX export in RUN/export-onnx (`headkit export RUN --to onnx` writes it and runs this)."""
    from headkit.hub import local_path
    from headkit.training.evaluate import encode_dataset
    from headkit.training.validation_set import load_validation_set

    root = run_root(local_path(run))
    load: dict[str, Any] = {"device": device, "trust_remote_code": trust_remote_code}
    reference, processor = _torch_model(root, "float32", **load)
    if data is None:
        data = load_validation_set(root)
        if data is None:
            raise HeadkitError(f"{root} kept no validation split (validation.json): pass labelled data to check on")
    elif not _is_encoded(data):
        # labels training never had are misses for every engine alike (a small labelled set has them)
        data = encode_dataset(reference, processor, data, name="the validation data", unseen_labels=True)
    if not len(data):
        raise HeadkitError("validate_engines: the validation data has no examples")
    pad_id = getattr(processor, "pad_token_id", None) or 0
    names, notes = candidates(root, device)
    checks = []
    if names:  # one candidate alone needs no measuring
        expected, speed = _score(reference, data, pad_id)
        checks.append(EngineCheck("torch", True, "the reference", speed))
        checks += [_check(name, root, data, pad_id, expected, load) for name in names]
    else:
        checks.append(EngineCheck("torch", True, "the reference; no other engine to check here"))
    checks += [EngineCheck(name, False, why) for name, why in notes.items()]
    valid = [c for c in checks if c.valid]
    chosen = max(valid, key=lambda c: c.examples_per_s or 0.0).engine
    record = {
        "format": FORMAT,
        "chosen": chosen,
        "examples": len(data),
        "rule": f"every head: agreement >= {MIN_AGREEMENT:.1%} with torch fp32, primary metric within "
        f"{MAX_METRIC_CHANGE * 100:.1f} point",
        "machine": machine_facts(device),
        "model": model_identity(root),
        "candidates": [asdict(c) for c in checks],
    }
    try:
        atomic_write_json(root / CHOICE_FILE, record)
    except OSError as e:  # a read-only model (a hub cache): the choice holds for this process only
        logger.warning("engine auto: could not record the choice in %s (%s)", root / CHOICE_FILE, e)
    if names:
        logger.warning("engine auto: %s (%s)", chosen, summary(record))
    return record


def candidates(root: Path, device: str) -> tuple[list[str], dict[str, str]]:
    """(the engines to check besides torch fp32, {engine: why it is not a candidate here})."""
    import importlib.util

    from headkit.ship.onnx_engine import ONNX_INT8_FILE, ONNX_MANIFEST

    facts = machine_facts(device)
    gpu = facts["device"] not in ("cpu", "mps")
    names, notes = [], {}
    if facts["amx"] or gpu:
        names.append("torch-bf16")
    else:
        notes["torch-bf16"] = "not tried: bf16 is slow on a CPU without AMX"
    export = root / EXPORT_DIR
    if not (export / ONNX_MANIFEST).is_file():
        notes["onnx"] = notes["onnx-int8"] = (
            f"not tried: no ONNX export in {EXPORT_DIR}/ (headkit export RUN --to onnx)"
        )
    elif importlib.util.find_spec("onnxruntime") is None:
        notes["onnx"] = notes["onnx-int8"] = "not tried: onnxruntime is not installed (pip install 'headkit[onnx]')"
        logger.warning("engine auto: onnxruntime is not installed (pip install 'headkit[onnx]'): torch engines only")
    else:
        names.append("onnx")
        if gpu:
            notes["onnx-int8"] = "not tried: int8 weights are a CPU engine"
        elif not (export / ONNX_INT8_FILE).is_file():
            notes["onnx-int8"] = "not tried: the export has no int8 graph (headkit export RUN --to onnx --quantize)"
        else:
            names.append("onnx-int8")
    return names, notes


def _check(name: str, root: Path, data: Any, pad_id: int, expected: Any, load: dict[str, Any]) -> EngineCheck:
    """Build engine `name`, score `data` with it and judge it against torch fp32's `expected`."""
    try:
        engine = _build(name, root, load)
    except HeadkitError as e:  # a damaged or mismatched export (CheckpointError)
        return EngineCheck(name, False, f"could not be built: {e}")
    evaluation, speed = _score(engine, data, pad_id)
    heads = engine.heads
    agreement = {
        h: _agreement(heads[h].scoring, evaluation.predictions[h], expected.predictions[h])
        for h in expected.predictions
        if expected.predictions[h]  # heads the data labels nothing for are not decoded, so not judged
    }
    change = {h: _metric_change(heads[h].scoring, evaluation.scores[h], expected.scores[h]) for h in expected.scores}
    failed = [f"{h}: agreement {a:.2%}" for h, a in agreement.items() if a < MIN_AGREEMENT]
    # not `c > bar`: a metric that came out nan (or any change that is not a number) fails too
    failed += [
        f"{h}: primary metric moved {c * 100:.2f} point" for h, c in change.items() if not c <= MAX_METRIC_CHANGE
    ]
    why = "; ".join(failed) if failed else "agrees with torch fp32"
    return EngineCheck(name, not failed, why, speed, agreement, change)


def load_torch_model(directory: Path, dtype: str, device: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """The torch engine: the save in `directory` on `device` in `dtype` (eval mode), its processor
    set on it (model.predict reads with the processor the pipeline and the CLI use), and that
    processor. ship/predict.py loads with it too."""
    from headkit.backbone import load_processor
    from headkit.devices import place
    from headkit.model import load
    from headkit.save_layout import BACKBONE_DIR

    model = place(load(directory, trust_remote_code=trust_remote_code), device, dtype)
    processor = load_processor(directory / BACKBONE_DIR, trust_remote_code=trust_remote_code)
    model.set_processor(processor)
    return model, processor


def _torch_model(root: Path, dtype: str, device: str, trust_remote_code: bool) -> tuple[Any, Any]:
    directory = find_save(root)
    if directory is None:
        raise HeadkitError(f"{root} holds no saved model with its backbone")
    return load_torch_model(directory, dtype, device, trust_remote_code)


def _build(name: str, root: Path, load: dict[str, Any]) -> Any:
    if name == "torch-bf16":
        return _torch_model(root, "bfloat16", **load)[0]
    from headkit.devices import pick_device
    from headkit.ship.onnx_engine import OnnxModel

    return OnnxModel(root / EXPORT_DIR, int8=name == "onnx-int8", device=pick_device(load["device"]).type)


def _is_encoded(data: Any) -> bool:
    from headkit.data.batching import EncodedData

    return isinstance(data, EncodedData)


def _score(model: Any, data: Any, pad_id: int) -> tuple[Any, float]:
    """(the evaluation of `data`, examples per second of the forward pass and decoding: the best of
    passes repeated for at least MIN_TIMED_SECONDS, after an untimed warm-up batch). Scoring and
    losses stay out of the timing: they are the same work whatever the engine, and a torch model
    computes losses an ONNX graph does not."""
    from headkit.training.evaluate import evaluate

    evaluation = evaluate(model, data, pad_id)
    batches = [collate_batch(data, indices, pad_id) for indices in inference_batches(data)]
    _forward(model, batches[:1])  # warm-up: first-call allocations, lazy inits
    best, spent = math.inf, 0.0
    while spent < MIN_TIMED_SECONDS:
        started = time.perf_counter()
        _forward(model, batches)
        seconds = time.perf_counter() - started
        best, spent = min(best, seconds), spent + seconds
    return evaluation, len(data) / best


def inference_batches(data: Any) -> list[list[int]]:
    """The batches predict would make of these examples (by tokens, data/batching.py)."""
    from headkit.data import MAX_TOKENS
    from headkit.data.batching import data_batches

    return data_batches(data, MAX_TOKENS, 64)


def collate_batch(data: Any, indices: list[int], pad_id: int) -> dict[str, Any]:
    from headkit.data.batching import collate

    return collate([data[i] for i in indices], pad_id, {}, {})


def _forward(model: Any, batches: list[dict[str, Any]]) -> None:
    """Every head's decoded answers for `batches`, as predict computes them (no labels, no grad)."""
    import torch

    from headkit.data.batching import model_inputs

    with torch.inference_mode():
        for batch in batches:
            out = model(**model_inputs(batch, model.device))
            for name, output in out.outputs.items():
                model.heads[name].decode(output, out.mask)


def _agreement(scoring: Any, got: list[Any], expected: list[Any]) -> float:
    """The share of examples on which the head decides alike (its scoring says what that means)."""
    return sum(scoring.same_decision(a, b) for a, b in zip(got, expected, strict=True)) / max(len(expected), 1)


def _metric_change(scoring: Any, got: dict[str, float], expected: dict[str, float]) -> float:
    """How far the head's primary metric moved: in points of a metric in [0, 1], relative beyond
    (an mse of 4.9); 0 for a head with no labels in the data (nothing to score)."""
    metric = scoring.primary if scoring.primary in expected else next(iter(expected), None)
    if metric is None:
        return 0.0
    if metric not in got:
        return math.inf
    return abs(got[metric] - expected[metric]) / max(1.0, abs(expected[metric]))


def summary(record: dict[str, Any]) -> str:
    """One line: each candidate's speed relative to torch fp32 and its verdict."""
    checks = record["candidates"]
    base = next((c["examples_per_s"] for c in checks if c["engine"] == "torch"), None) or 1.0
    parts = []
    for c in checks:
        speed = f"{c['examples_per_s'] / base:.2f}x" if c.get("examples_per_s") else "-"
        verdict = "valid" if c["valid"] else "not tried" if c["why"].startswith("not tried") else "refused"
        parts.append(f"{c['engine']} {speed} {verdict}")
    return f"on {record['examples']} validation examples: " + ", ".join(parts)
