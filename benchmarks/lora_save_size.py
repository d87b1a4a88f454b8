"""Size on disk of a LoRA model's save: naming its base model (now) against copying it (before).

The real all-MiniLM-L6-v2 (the `minilm` alias, shipped on PyPI: see shared/OFFLINE.md) with a
classification head, its backbone wrapped by peft LoRA as `strategy="lora"` wraps it (r=8 on
query/value), no training (the sizes do not depend on the values). Two saves of that one model:

    now      headkit.save: adapter/ + backbone/ holding the base's config and tokenizer only;
             heads.json names the base (`minilm`) and the digest of its weights
    before   the layout every LoRA save had until now: the base's weights copied into backbone/

Both are then loaded back (the first fetches the base by its name) and must give the same
outputs as the model saved. Prints each save's size, the ratio, and the load times.
Measured on the 2-core CPU machine: now 1.04 MB, before 91.90 MB (88x), both loading in ~0.1 s
with identical outputs; the whole script runs in ~8 s.

    python benchmarks/lora_save_size.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXTS = ["A gripping thriller with a superb cast.", "Dull, slow and far too long."]


def size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def save_before(model, directory: Path) -> None:
    """A LoRA save in the layout headkit wrote until LoRA saves named their base: the base's
    clean weights copied into backbone/ (the code of ship/save.py before the change)."""
    from headkit.ship.save import ADAPTER_DIR, BACKBONE_DIR, save_heads

    backbone = model.backbone
    base = backbone.get_base_model()
    clean = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(directory / BACKBONE_DIR, state_dict=clean, safe_serialization=True)
    backbone.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
    model._processor().save_pretrained(directory / BACKBONE_DIR)
    save_heads(model, directory)


def main() -> None:
    import torch

    import headkit
    from headkit.training.strategies import apply_lora

    model = headkit.MultiHeadModel.from_pretrained(
        "minilm", {"sentiment": headkit.head_config("classification", labels=["neg", "pos"])}
    )
    model.backbone = apply_lora(model.backbone, r=8, target_modules=["query", "value"])
    model.eval()
    batch = dict(model._processor()(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = model(**batch).outputs["sentiment"]
    with tempfile.TemporaryDirectory() as tmp:
        now, before = Path(tmp) / "now", Path(tmp) / "before"
        headkit.save(model, now)
        save_before(model, before)
        print(f"{'save':8} {'size':>12} {'load':>8}  files")
        for name, folder in (("now", now), ("before", before)):
            start = time.perf_counter()
            loaded = headkit.load(folder)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                same = torch.equal(loaded(**batch).outputs["sentiment"], expected)
            assert same, f"the {name} save loads with other outputs"
            weights = sorted(str(f.relative_to(folder)) for f in folder.rglob("*.safetensors"))
            print(f"{name:8} {size(folder) / 1e6:9.2f} MB {seconds:7.2f}s  {', '.join(weights)}")
        print(f"ratio before/now: {size(before) / size(now):.0f}x smaller (outputs identical after loading)")


if __name__ == "__main__":
    main()
