"""`headkit.pipeline(run)`: every head of a trained model behind one call, answering as
transformers pipelines do (text-classification: {"label", "score"}; token-classification:
entity spans with character offsets, as with aggregation_strategy="simple"), one backbone pass
for all heads.

    classify = headkit.pipeline("runs/demo")
    classify("A gripping thriller.")   # {"sentiment": {"label": "fresh", "score": 0.93}, "topic": {...}}
"""

from __future__ import annotations

import os
from typing import Any

from headkit.ship.predict import load_for_inference, predict_texts


class HeadsPipeline:
    """Callable on one text (-> one dict: head -> answer) or a list of texts (-> a list of them)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, max_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, inputs: str | list[str], heads: list[str] | None = None) -> Any:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        predictions = predict_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_length, heads)
        answers = [
            {h: self.model.heads[h].view.pipeline_output(v) for h, v in p.items() if h in self.model.heads}
            for p in predictions
        ]
        return answers[0] if isinstance(inputs, str) else answers


def pipeline(
    run: str | os.PathLike,
    device: str = "auto",
    dtype: str = "auto",
    engine: str = "torch",
    batch_size: int = 32,
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> HeadsPipeline:
    """A pipeline over a training run, a headkit save or an ONNX export (`engine` onnx / onnx-int8)."""
    model, tokenizer = load_for_inference(run, trust_remote_code, engine, device, dtype)
    return HeadsPipeline(model, tokenizer, batch_size, max_length)
