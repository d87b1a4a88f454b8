"""Optional features and the extras that install them.

`pip install headkit` stays lean; the HTTP server, ONNX export/inference and GGUF checkpoints
come with extras (pyproject.toml's [project.optional-dependencies]). Code that needs one calls
`require(...)` first, so a user without it gets one line naming the exact pip command instead of
a ModuleNotFoundError from somewhere inside a third-party package.
"""

from __future__ import annotations

import importlib.util

from headkit.errors import MissingExtraError

# extra -> the import names it provides (kept equal to pyproject.toml by tests/test_extras.py)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "pydantic", "prometheus_client", "prometheus_fastapi_instrumentator"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "gguf": ("gguf",),
    "timm": ("timm",),  # brings torchvision
    "tensorboard": ("tensorboard",),  # --report_to tensorboard (accelerate's tracker)
    "ray": ("ray",),  # serve --replicas (Ray Serve)
    "sentence-transformers": ("sentence_transformers",),  # export --to sentence-transformers checks its folder
}


def missing_modules(extra: str) -> list[str]:
    """The import names of `extra` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, feature: str) -> None:
    """Raise `MissingExtraError` unless every package of `extra` is installed."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(
            f"{feature} needs {', '.join(missing)}, which headkit installs only on request: "
            f"pip install 'headkit[{extra}]'"
        )
