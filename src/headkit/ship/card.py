"""The model card every save writes: README.md with the Hub's YAML metadata, then what a reader
needs to trust and reuse the model — the base model, each head with its labels, how it was
trained (strategy and hyperparameters), on how many examples, how it scored, with which library
versions, and how to load it (headkit's public API; and, where a head has a transformers class,
as a plain transformers model).

`info` is what a training run knows (training/finish.py `card_info`, kept on the model as
`training_facts` and in its save's training.json, so a trained model saved again or pushed keeps
it); a model saved by hand has none of it and its card says so. Each head says which metrics it
reports (`head.scoring.metrics`).
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from huggingface_hub import ModelCardData

from headkit.backbone.resolve import hub_id
from headkit.hub import is_hub_id

# a model with no run's facts: saved by hand, or loaded from a save made before saves kept them
NOT_RECORDED = "- how it was trained: not recorded (saved by hand, not by a training run)"
PLACEHOLDER = "PATH_OR_REPO_ID"  # where the snippets load from, for a save that names no repository


def model_card(
    model: Any, info: dict[str, Any] | None = None, repo_id: str | None = None, processor: Any = None
) -> str:
    """README.md text for a save of `model` (a MultiHeadModel). `info` (from a training run):
    strategy, hyperparameters, examples per split and head, metrics ("heads": validation scores,
    or "scores": {split: {head: {metric: value}}}), data sources, base_model (the name it was
    trained from). `processor`: what the model reads with (the usage snippet gives it an image or text)."""
    info = info or {}
    base = hub_id(info.get("base_model") or getattr(model.backbone.config, "name_or_path", None))
    tasks = [h.export.pipeline_tag for h in model.heads.values() if h.export.pipeline_tag]
    data = [str(d) for d in info.get("data", []) if d]
    metadata = ModelCardData(
        library_name="headkit",
        base_model=base,
        tags=["headkit", "multi-head" if len(model.heads) > 1 else "single-head", *sorted(set(tasks))],
        pipeline_tag=tasks[0] if len(model.heads) == 1 and tasks else None,
        datasets=[d for d in data if is_hub_id(d.removeprefix("hf:").split(":")[0])] or None,
    )
    lines = ["---", metadata.to_yaml(), "---", "", f"# {repo_id.split('/')[-1] if repo_id else 'headkit model'}", ""]
    lines += [
        f"{len(model.heads)} head(s) on one `{model.backbone.config.model_type}` backbone"
        + (f" ([`{base}`](https://huggingface.co/{base}))" if base else "")
        + ", trained with [headkit](https://pypi.org/project/headkit/): one backbone pass answers every head.",
        "",
        table_head("head", "type", "layer", "labels"),
    ]
    for name, head in model.heads.items():
        labels = ", ".join(head.config.labels[:12]) + (" …" if len(head.config.labels) > 12 else "")
        lines.append(row(name, head.config.type, head.config.layer, labels or "-"))
    lines += training(model, info, data) + metrics(model, info) + versions(model)
    lines += usage(model, repo_id or PLACEHOLDER, processor)
    return "\n".join(lines) + "\n"


def best_epoch_fact(info: dict[str, Any]) -> tuple[str, str | None]:
    """The epoch the model was taken from, or each head's where heads kept their own
    (training/head_best.py), named for the card and the summary: ("best epoch", "7"),
    ("best epochs", "embed 25, topic 12")."""
    per_head = info.get("head_best_epochs")
    if per_head:
        return "best epochs", ", ".join(f"{head} {epoch}" for head, epoch in per_head.items())
    return "best epoch", None if info.get("best_epoch") is None else str(info["best_epoch"])


def training(model: Any, info: dict[str, Any], data: list[str]) -> list[str]:
    """Strategy, hyperparameters and the examples each head trained and was scored on."""
    lines = ["", "## Training", ""]
    facts = [
        ("strategy", info.get("strategy")),
        ("training data", ", ".join(data) if data else None),
        best_epoch_fact(info),
    ]
    lines += [f"- {key}: {value}" for key, value in facts if value is not None] or [NOT_RECORDED]
    if getattr(model, "max_length", None) is not None:  # the model's own, known with or without a run
        lines.append(f"- max_length (tokens read; predict and serve use it too): {model.max_length}")
    settings = info.get("hyperparameters") or {}
    if settings:
        lines += ["", "Hyperparameters:", "", table_head("setting", "value"), *(row(k, v) for k, v in settings.items())]
    examples = info.get("examples") or {}
    if examples:
        splits = list(examples)
        lines += ["", "Examples with a label, per head:", "", table_head("head", *splits)]
        lines += [row(name, *(examples[s].get(name, "-") for s in splits)) for name in model.heads]
    return lines


def metrics(model: Any, info: dict[str, Any]) -> list[str]:
    """Each head's metrics (in the order the head lists them), one column per scored split."""
    scores = info.get("scores") or ({"validation": info["heads"]} if info.get("heads") else {})
    if not scores:
        return []
    splits = list(scores)
    lines = ["", "## Metrics", "", table_head("head", "metric", *splits)]
    for name, head in model.heads.items():
        reported = [m for s in splits for m in scores[s].get(name, {})]
        for metric in dict.fromkeys([*(m for m in head.scoring.metrics if m in reported), *reported]):
            lines.append(row(name, metric, *(number(scores[s].get(name, {}).get(metric)) for s in splits)))
    return lines


def versions(model: Any) -> list[str]:
    """The library versions the model was saved with (peft's when its backbone holds adapters)."""
    from headkit import __version__

    libraries = ["torch", "transformers", *(["peft"] if hasattr(model.backbone, "peft_config") else [])]
    found = [("headkit", __version__), *((n, importlib.metadata.version(n)) for n in libraries)]
    return ["", "## Versions", "", table_head("library", "version"), *(row(n, v) for n, v in found),
            row("python", platform.python_version())]  # fmt: skip


def usage(model: Any, where: str, processor: Any) -> list[str]:
    """How to load and run it: headkit's public API, the CLI, and a plain transformers export."""
    from headkit.data.images import is_image_processor

    imports, example, cli = ["import headkit"], '["some text"]', '--text "some text"'
    if processor is not None and is_image_processor(processor):
        imports, example = ["import headkit", "from PIL import Image"], '[Image.new("RGB", (224, 224))]'
    elif any((columns or {}).get("text_pair") for columns in (getattr(model, "columns", None) or {}).values()):
        example, cli = '[("a first text", "a second text")]', '--text "a first text" --text_pair "a second text"'
    lines = ["", "## Use", "", "```python", *imports, ""]
    lines += [f'model = headkit.MultiHeadModel.from_pretrained("{where}")', f"print(model.predict({example}))", "```"]
    lines += ["", f"or `headkit predict {where} {cli}`."]
    exportable = [n for n, h in model.heads.items() if h.export.target]
    if exportable:
        name, auto = exportable[0], model.heads[exportable[0]].export.target
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
    return lines


def table_head(*columns: str) -> str:
    return row(*columns) + "\n" + row(*("---" for _ in columns))


def row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)
