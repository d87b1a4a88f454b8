"""The model card every save writes: README.md with the Hub's YAML metadata, then what a reader
needs — the base model, each head with its labels, how it was trained and scored, and how to
load it (with headkit and, where a head has a transformers class, as a plain transformers model).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCardData

from headkit.hub import is_hub_id


def model_card(model: Any, info: dict[str, Any] | None = None, repo_id: str | None = None) -> str:
    """README.md text for a save of `model` (a MultiHeadModel); `info` (from a training run): strategy, metrics,
    data sources, max_length, base_model (the name it was trained from)."""
    info = info or {}
    base = str(info.get("base_model") or model.backbone.config.name_or_path or "")
    tasks = [h.export.pipeline_tag for h in model.heads.values() if h.export.pipeline_tag]
    tags = ["headkit", "multi-head" if len(model.heads) > 1 else "single-head", *sorted(set(tasks))]
    data = [d for d in info.get("data", []) if d]
    metadata = ModelCardData(
        library_name="headkit",
        base_model=base if is_hub_id(base) else None,
        tags=tags,
        pipeline_tag=tasks[0] if len(model.heads) == 1 and tasks else None,
        datasets=[d for d in data if is_hub_id(d.removeprefix("hf:").split(":")[0])] or None,
    )
    where = repo_id or "PATH_OR_REPO_ID"
    lines = [
        "---",
        metadata.to_yaml(),
        "---",
        "",
        f"# {repo_id.split('/')[-1] if repo_id else 'headkit model'}",
        "",
        f"{len(model.heads)} head(s) on one `{model.backbone.config.model_type}` backbone"
        + (f" (`{base}`)" if base else "")
        + ", trained with [headkit](https://pypi.org/project/headkit/): one backbone pass answers every head.",
        "",
        "| head | type | layer | labels |",
        "|---|---|---|---|",
    ]
    for name, head in model.heads.items():
        labels = ", ".join(head.config.labels[:12]) + (" …" if len(head.config.labels) > 12 else "")
        lines.append(f"| {name} | {head.config.type} | {head.config.layer} | {labels or '-'} |")
    lines += ["", "## Training", ""]
    facts = [
        ("strategy", info.get("strategy")),
        ("training data", ", ".join(data) if data else None),
        ("training examples", info.get("train_examples")),
        ("validation examples", info.get("val_examples")),
        ("max_length (tokens read; predict and serve use it too)", getattr(model, "max_length", None)),
        ("best epoch", info.get("best_epoch")),
    ]
    lines += [f"- {key}: {value}" for key, value in facts if value is not None] or ["- not recorded (saved by hand)"]
    scores = info.get("heads") or {}
    if scores:
        lines += ["", "## Validation metrics", "", "| head | metric | value |", "|---|---|---|"]
        lines += [f"| {h} | {m} | {v:.4f} |" for h, s in scores.items() for m, v in s.items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from headkit import MultiHeadModel",
        "from headkit.ship.predict import predict_texts",
        "from transformers import AutoTokenizer",
        "",
        f'model = MultiHeadModel.from_pretrained("{where}").eval()',
        f'tokenizer = AutoTokenizer.from_pretrained("{where}", subfolder="backbone")',
        'print(predict_texts(model, tokenizer, ["some text"]))',
        "```",
        "",
        f'or `headkit predict {where} --text "some text"`.',
    ]
    exportable = [n for n, h in model.heads.items() if h.export.target]
    if exportable:
        name = exportable[0]
        auto = model.heads[name].export.target
        lines += [
            "",
            f"As a plain transformers model (`{auto}`, no headkit needed), after "
            f"`headkit export {where} --to transformers --only_head {name} --output plain/`:",
            "",
            "```python",
            "import transformers",
            "",
            f'model = transformers.{auto}.from_pretrained("plain/")',
            "```",
        ]
    return "\n".join(lines) + "\n"
