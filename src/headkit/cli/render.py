"""What the `headkit` commands print for a person: rich tables, per-text predictions, plans.

commands.py parses nothing and renders nothing itself; it calls the library and hands the result
here, so a command reads as parse -> call -> render and the wording lives in one place."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def count(n: int | None) -> str:
    """A parameter count a person reads at a glance, with the exact figure beside it."""
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit} ({n:,})"
    return f"{n:,}"


def as_json(value: Any) -> None:
    """Machine-readable output (--json)."""
    print(json.dumps(value, indent=2))


def checkpoint(report: Any) -> None:
    """`inspect`: where the checkpoint's backbone ends and its head starts."""
    table = Table(title=f"{report.architecture}  ({report.model_type})", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    if report.output_layer:
        head = f"{report.head_kind}: {report.output_layer}  {report.output_in}→{report.output_out}"
    else:
        head = "none: a bare backbone (attach task heads with headkit.MultiHeadModel)"
    rows = [
        ("path", report.path),
        ("backbone", f"{report.backbone_class}  (module: {report.backbone_module})"),
        ("head", head),
        ("head modules", ", ".join(f"{n} ({c})" for n, c in report.head_modules.items()) or "-"),
        ("tied embeddings", "yes (head decoder = input embeddings)" if report.tied_embeddings else "no"),
        ("hidden size", str(report.hidden_size)),
        ("layers", str(report.num_layers)),
        ("vocab size", str(report.vocab_size)),
        ("params total", count(report.params_total)),
        ("params backbone", count(report.params_backbone)),
        ("params head", count(report.params_head) + ("  (+ tied decoder)" if report.tied_embeddings else "")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def saved_heads(heads: dict[str, dict[str, Any]], model: str) -> None:
    """`inspect` on a headkit save or run: the task heads it carries."""
    table = Table(title=f"headkit heads on this backbone ({model})")
    for column in ("head", "type", "pooling", "labels", "params"):
        table.add_column(column, overflow="fold")
    for name, h in heads.items():
        labels = ", ".join(h["labels"][:6]) + (f" … ({len(h['labels'])})" if len(h["labels"]) > 6 else "")
        params = count(h["params"]) + ("  (+ tied decoder)" if h["tied_to_embeddings"] else "")
        table.add_row(name, h["type"], str(h["pooling"]), labels or "-", params)
    Console().print(table)


def engines(record: dict[str, Any], current: bool = True) -> None:
    """`inspect` on a run whose engines were checked (engines.json): each candidate's speed against
    torch fp32, its agreement and metric change, and the choice `--engine auto` makes (`current`:
    whether the record holds for this machine and model, or auto will measure again)."""
    checks = record["candidates"]
    base = next((c["examples_per_s"] for c in checks if c["engine"] == "torch"), None) or 1.0
    title = f"engines checked on {record['examples']} validation examples ({record['machine']['cpu']})"
    runs = (
        f"--engine auto runs {record['chosen']}"
        if current
        else (
            f"measured for another machine or model version (it chose {record['chosen']}): --engine auto measures again"
        )
    )
    table = Table(title=title, caption=f"{runs}; rule: {record['rule']}")
    for column in ("engine", "speed", "min agreement", "max metric change", "verdict"):
        table.add_column(column, overflow="fold")
    for c in checks:
        speed = f"{c['examples_per_s'] / base:.2f}x" if c.get("examples_per_s") else "-"
        agreement = f"{min(c['agreement'].values()):.2%}" if c.get("agreement") else "-"
        change = f"{max(c['metric_change'].values()) * 100:.2f} pt" if c.get("metric_change") else "-"
        verdict = ("chosen; " if c["engine"] == record["chosen"] else "") + c["why"]
        table.add_row(c["engine"], speed, agreement, change, verdict)
    Console().print(table)


def predictions(samples: list[str], predictions: list[dict[str, Any]], model: Any) -> None:
    """Each text (or image path) in bold, then one line per head in the head's own brief form."""
    console = Console()
    for sample, prediction in zip(samples, predictions, strict=True):
        console.print(f"[bold]{sample}[/]", highlight=False)
        for head, value in prediction.items():
            if head == "truncated":
                console.print("  (text truncated to the model's limit)", highlight=False)
                continue
            console.print(f"  {head}: {model.heads[head].view.brief(value)}", highlight=False)


def ranking(query: str, ranked: list[dict[str, Any]]) -> None:
    """`rank`: the candidates best first, with their probability and score."""
    table = Table(title=query, title_justify="left")
    for column, justify in (("#", "right"), ("candidate", "left"), ("probability", "right"), ("score", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for entry in ranked:
        cut = " (truncated)" if entry.get("truncated") else ""
        table.add_row(str(entry["index"]), entry["text"] + cut, f"{entry['probability']:.3f}", f"{entry['score']:.4f}")
    Console().print(table)


def file_predictions(count: int, truncated: int, output: str) -> None:
    """`predict --input`: where the predictions went, and how many texts were cut to the limit."""
    print(f"wrote predictions for {count} texts to {output}")
    if truncated:
        print(
            f"note: {truncated} texts were longer than the model reads and were predicted on their "
            'first tokens (marked "truncated": true)'
        )


def masks(texts: list[str], results: list[list[list[tuple[str, float]]]]) -> None:
    """`fill-mask`: per text, the top candidates of each mask with their probabilities."""
    console = Console()
    for sample, text_masks in zip(texts, results, strict=True):
        console.print(f"[bold]{sample}[/]", highlight=False)
        for number, candidates in enumerate(text_masks, start=1):
            shown = "  ".join(f"{token} {p:.3f}" for token, p in candidates)
            console.print(f"  mask {number}: {shown}", highlight=False)


def head_texts(answers: dict[str, str]) -> None:
    """`generate` with seq2seq heads: the text each head wrote."""
    print("\n".join(f"{h}: {t}" for h, t in answers.items() if h != "truncated"))


def export_result(result: Any) -> None:
    """`export`: what was written where, and the export's own explanation."""
    print(f"wrote {result.path} ({result.target})")
    print(result.message)
    if result.engines:
        engines(result.engines)


def advice(data: str | None, budget: float, facts: Any, hardware: Any, plan: Any) -> None:
    """`advise`: what headkit sees in the data and the machine, each strategy's estimated time,
    the recommendation with its rule and reasons, and the commands that carry it out."""
    from headkit.advise.rules import RULES
    from headkit.heads import head_class

    console = Console()
    table = Table(title=escape(f"what headkit sees in {data}"), show_header=False)
    heads = facts if isinstance(facts, list) else [facts]
    facts = heads[0]
    rows = []
    for head in heads:
        counts = head_class(head.task_type).codec.describe_counts(head.class_counts) if head.class_counts else ""
        of = f" ({head.label})" if len(heads) > 1 else ""
        rows += [
            (f"task{of}", f"{head.task_type}" + (f", {counts}" if counts else "")),
            (f"labelled examples{of}", f"{head.labelled:,}"),
        ]
    whole = plan.run or facts  # several heads: the rows labelled for any, the rest unlabelled
    if plan.run is not None:
        rows.append(("examples the run trains on", f"{whole.labelled:,} (labelled for some head)"))
    per = f"pair ({facts.text} + {facts.text_pair})" if facts.text_pair else "text"
    rows += [
        ("unlabelled texts", f"{whole.unlabelled:,}"),
        (f"tokens per {per}", f"median {whole.tokens_median:.0f}, 95th percentile {whole.tokens_p95:.0f}"),
        ("words split into 3+ pieces", f"{facts.fragmented_share:.1%} (domain-shift signal; 10%+ is a clear shift)"),
        ("hardware", f"{hardware.name}" + (f", {hardware.memory_gb:.0f} GiB" if hardware.memory_gb else "")),
        ("budget", f"{budget:g} min"),
    ]
    for key, value in rows:
        table.add_row(escape(key), escape(value))
    console.print(table)
    costs = Table(title="estimated training time here (from a measured step on your texts)")
    costs.add_column("strategy")
    costs.add_column("time", justify="right")
    costs.add_column("fits budget")
    for name, seconds in sorted(plan.costs.items(), key=lambda kv: kv[1]):
        costs.add_row(
            name,
            f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s",
            "yes" if seconds <= plan.budget_s else "no",
        )
    console.print(costs)
    steps = ("continued pretraining, then " if plan.pretrain else "") + plan.strategy
    console.print(f"[bold]recommended:[/] {steps}   (rule {plan.rule}: {RULES[plan.rule]})")
    for reason in plan.reasons:  # column names and paths are the user's: no rich markup in them
        console.print(f"  - {reason}", markup=False)
    console.print("[bold]steps:[/]")
    for i, command in enumerate(plan.commands, start=1):
        console.print(f"  {i}. {command}", highlight=False, soft_wrap=True, markup=False)


def plan_done(output_dir: str, steps: int) -> None:
    """`advise --run`: where the model is and which step evaluates it."""
    Console().print(f"done: the model is in {output_dir}; evaluate it with step {steps - 1} above")
