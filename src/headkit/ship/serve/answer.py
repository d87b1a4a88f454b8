"""What the worker calls: a gathered batch of requests' items in, one dict of head answers per item out."""

from __future__ import annotations

from typing import Any

from headkit.data.images import is_image_processor
from headkit.ship.predict import predict_images, predict_texts
from headkit.ship.serve.config import ServeLimits


def answerer(model, processor, head_names: list[str], limits: ServeLimits):
    """The function the batcher calls: (items, wanted heads, max_new_tokens) -> one dict per item.
    Only the wanted heads (None: all) are computed; the backbone runs once for them all."""
    heads = getattr(model, "heads", None)

    def run_batch(items: list, wanted: list[str] | None, max_new_tokens: int) -> list[dict[str, Any]]:
        if wanted is not None and heads is not None:  # a head unloaded while its request waited is left out
            wanted = [name for name in wanted if name in heads]
        if is_image_processor(processor):
            return predict_images(model, processor, items, batch_size=limits.forward_batch, heads=wanted)
        if heads is None:  # a causal LM: its one head's answer is a generated reply
            from headkit.ship.generate import generate_replies

            replies = []
            for start in range(0, len(items), limits.forward_batch):
                chunk = items[start : start + limits.forward_batch]
                replies += generate_replies(model, processor, chunk, max_new_tokens)
            return [{head_names[0]: reply} for reply in replies]
        for head in heads.values():
            head.set_generation(max_new_tokens=max_new_tokens)  # text-writing heads; the rest ignore it
        return predict_texts(
            model, processor, items, batch_size=limits.forward_batch, heads=wanted, max_tokens=limits.max_tokens
        )

    return run_batch


def generates(model) -> bool:
    """Whether the model's answers include generated text (requests then keep apart by length)."""
    heads = getattr(model, "heads", None)
    return heads is None or any(h.view.writes_text for h in heads.values())
