"""`headkit.pipeline(model)`: every head of a trained model behind one call, answering as
transformers pipelines do (text-classification: {"label", "score"}; token-classification:
entity spans with character offsets, as with aggregation_strategy="simple"), one backbone pass
for all heads.

    classify = headkit.pipeline("runs/demo")            # a run or save dir, a hub id, or a model
    classify("A gripping thriller.")   # {"sentiment": {"label": "fresh", "score": 0.93}, "topic": {...}}
    classify([("A man sleeps.", "A person rests.")])    # sentence pairs
    headkit.pipeline("org/vision-model")(Image.open("cat.jpg"))

A pipeline answers through the same code as `model.predict` (ship/inference.py: `answer`), so
the two give the same answers for the same inputs; the ONNX engines run through it too.
"""

from __future__ import annotations

import os
from typing import Any

from headkit.ship.inference import answer


class HeadsPipeline:
    """Callable on one input (-> one dict: head -> answer) or a list of them (-> a list of dicts);
    inputs as `model.predict` takes them: texts, (text, text_pair) tuples or PIL images.
    `tokenizer` is the model's processor (an image processor for an image model)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, max_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, inputs: Any, heads: list[str] | None = None) -> Any:
        return answer(self.model, self.tokenizer, inputs, self.batch_size, heads, self.max_length)


def pipeline(
    model: Any,
    device: str | None = None,
    dtype: str = "auto",
    engine: str = "auto",
    batch_size: int = 32,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    processor: Any = None,
) -> HeadsPipeline:
    """A pipeline over a `MultiHeadModel`, a training run or headkit save directory, a hub id
    holding one (`org/name[@revision]`, read from the hub cache or downloaded as
    `from_pretrained` reads it), or an ONNX export (`engine` onnx / onnx-int8). `engine` auto: a
    saved model runs on the fastest engine validated for it on this machine (ship/engines.py), a
    model object on torch.

    `device` / `dtype` (see headkit.devices): where a loaded model runs (default: auto); a model
    given as an object is moved (itself, as transformers' pipeline moves it) only to a `device` or
    `dtype` that is named, and keeps its dtype unless one is. `processor`: the tokenizer or
    image processor (default: the one saved with the model).
    """
    from torch import nn

    if isinstance(model, nn.Module):
        if engine not in ("auto", "torch"):
            raise _engine_error(engine)
        if device is not None or dtype != "auto":
            from headkit.devices import pick_device, pick_dtype

            # as transformers' pipeline(model=..., device=...): the given model itself moves (no copy); its
            # dtype changes only when one is named ("auto" would turn an fp32 model bf16 on a GPU behind its back)
            where = pick_device(device) if device is not None else model.device
            # a MultiHeadModel, whose device and dtype are properties (nn.Module types them as submodules)
            model = model.to(device=where, dtype=model.dtype if dtype == "auto" else pick_dtype(dtype, where)).eval()  # type: ignore[arg-type]
        return HeadsPipeline(model, processor if processor is not None else model._processor(), batch_size, max_length)
    if not isinstance(model, str | os.PathLike):
        raise _type_error(model)
    from headkit.ship.predict import load_for_inference

    loaded, saved_processor = load_for_inference(model, trust_remote_code, engine, device or "auto", dtype)
    if processor is not None and hasattr(loaded, "set_processor"):
        loaded.set_processor(processor)
    return HeadsPipeline(loaded, processor if processor is not None else saved_processor, batch_size, max_length)


def _engine_error(engine: str) -> Exception:
    from headkit.errors import HeadkitError

    return HeadkitError(
        f"engine={engine!r} runs an ONNX export directory; a model object runs on torch (export it first: "
        "headkit export RUN --to onnx)"
    )


def _type_error(model: Any) -> Exception:
    from headkit.errors import HeadkitError

    return HeadkitError(
        f"pipeline() takes a MultiHeadModel, a run or save directory, or a hub id (org/name), not "
        f"{type(model).__name__}"
    )
