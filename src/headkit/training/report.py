"""What a person sees at the end of a run: a summary table, metrics.json and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from headkit._fs import atomic_write_json
from headkit.model import MultiHeadModel
from headkit.ship.card import best_epoch_fact
from headkit.training.evaluate import Evaluation


def write_report(
    run: Path,
    model: MultiHeadModel,
    evaluation: Evaluation | None,
    steps: list,
    epochs: list,
    metrics: dict,
    calibration: dict[str, tuple] | None = None,
) -> None:
    """metrics.json, the per-head loss curves, a confusion matrix per head that decides classes and
    a reliability diagram per head whose temperature was fitted (`calibration`: head -> its
    (confidences, correct) before and after)."""
    from headkit.training import plots

    atomic_write_json(run / "metrics.json", metrics)
    plots.loss_curves(steps, epochs, list(model.heads), run / "loss_curves.png")
    if evaluation is None:
        return
    for name, head in model.heads.items():
        decisions = head.scoring.class_decisions(evaluation.predictions[name], evaluation.references[name])
        if decisions and decisions[0]:
            refs, preds = decisions
            plots.confusion_matrix(name, list(refs), list(preds), head.config.labels, run / f"confusion_{name}.png")
    for name, (before, after) in (calibration or {}).items():
        plots.reliability_diagram(name, before, after, run / f"reliability_{name}.png")


CHANCE_MARGIN = 0.02  # a metric this close to its chance level (absolute) is "at chance"


def chance_notes(model: MultiHeadModel, evaluation: Evaluation | None) -> list[str]:
    """One line per head whose validation scores all end at chance level: no better than the
    best answer that ignores the input (`Scoring.chance`), i.e. the head learned nothing usable.
    A run on little data at a recipe's defaults can end there without an error; this says so.
    A metric whose chance level is within the margin of its best (accuracy on 99% one class)
    tells nothing and is left out; a head with no such metric gets no note."""
    notes: list[str] = []
    if evaluation is None:
        return notes
    for name, head in model.heads.items():
        scores = evaluation.scores.get(name, {})
        chance = head.scoring.chance(evaluation.references[name]) if scores else {}
        telling = {m: c for m, c in chance.items() if m in scores and c + CHANCE_MARGIN < 1}
        if telling and all(scores[m] <= c + CHANCE_MARGIN for m, c in telling.items()):
            shown = ", ".join(f"{m} {scores[m]:.4f} (blind: {c:.4f})" for m, c in telling.items())
            others = "fewshot or frozen" if head.fewshot is not None else "frozen or lora"  # fewshot solves few types
            notes.append(
                f"head '{name}' ends at chance level: validation {shown}, no better than answering blind "
                "to the input; it has not learned the task. Train more optimizer steps (--min_steps above "
                f"the steps this run took), or try --strategy {others} (headkit advise weighs them)"
            )
    return notes


def probe_notes(epochs: list[dict[str, Any]], best_epoch: int | None) -> list[str]:
    """A line when lp-ft's fine-tuning never beat the linear probe it measured first (the heads
    trained on the frozen backbone, the same heads on the same validation split): the best epoch, and
    so the model kept, is then the probe's, and the fine-tuning's time bought nothing at these
    settings. A run that ends below a frozen probe of its heads says so wherever it measured one."""
    probe = next((r for r in epochs if r["epoch"] == best_epoch), None)
    tuned = [r for r in epochs if r["phase"] != "probe" and "objective" in r]
    if probe is None or probe["phase"] != "probe" or not tuned:
        return []
    best_tuned = max(tuned, key=lambda r: r["objective"])
    return [
        f"fine-tuning never beat the linear probe: validation objective {probe['objective']:.4f} at probe epoch "
        f"{best_epoch}, at most {best_tuned['objective']:.4f} (epoch {best_tuned['epoch']}) in the "
        f"{len(tuned)} fine-tuned epochs, so the model kept is the probe's. Fine-tuning at a lower --backbone_lr "
        "may still help; otherwise a frozen probe (--strategy frozen) trains such a model without the fine-tuning"
    ]


def print_summary(
    model: MultiHeadModel, evaluation: Evaluation | None, metrics: dict[str, Any], title: str | None = None
) -> None:
    if title is None and not metrics.get("val_examples"):  # e.g. few-shot: every example trained
        title = "no validation split: score the model with `headkit evaluate` on held-out data"
    title = title or f"validation ({metrics['val_examples']} examples) — {' '.join(map(str, best_epoch_fact(metrics)))}"
    table = Table(title=title)
    table.add_column("head", style="bold")
    table.add_column("type")
    table.add_column("metrics")
    table.add_column("loss", justify="right")
    for name, head in model.heads.items():
        scores = evaluation.scores.get(name, {}) if evaluation else {}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
        loss = evaluation.losses.get(name) if evaluation else None
        table.add_row(name, head.config.type, shown or "-", f"{loss:.4f}" if loss is not None else "-")
    console = Console()
    console.print(table)
    for name, report in (evaluation.reports if evaluation else {}).items():
        console.print(per_class_table(name, report))
    for name, fit in metrics.get("calibration", {}).items():
        console.print(
            f"{name}: probabilities calibrated (temperature {fit['temperature']:.3f}, fitted on validation): "
            f"ECE {fit['ece_before']:.4f} -> {fit['ece_after']:.4f}, "
            f"NLL {fit['nll_before']:.4f} -> {fit['nll_after']:.4f}",
            highlight=False,
        )
    for note in metrics.get("notes", []):
        console.print(f"[bold yellow]note:[/] {note}", highlight=False)
    if title.startswith("evaluation"):
        return
    console.print(
        f"strategy {metrics['strategy']}: {metrics['trainable_params']:,} trainable of {metrics['total_params']:,} "
        f"parameters; {metrics['train_examples']} training examples; {metrics['seconds']} s"
    )


def per_class_table(head: str, report: dict[str, dict[str, float]], most: int = 30) -> Table:
    """One row per class (entity type for BIO taggers), then the averages; the `most` most frequent
    classes are shown (metrics.json has them all)."""
    averages = {k: v for k, v in report.items() if k.endswith(" avg")}
    classes = sorted(((k, v) for k, v in report.items() if k not in averages), key=lambda kv: -kv[1].get("support", 0))
    hidden = len(classes) - most
    table = Table(title=f"{head}: per class" + (f" ({most} most frequent of {len(classes)})" if hidden > 0 else ""))
    table.add_column("class", style="bold")
    for column in ("precision", "recall", "f1", "support"):
        table.add_column(column, justify="right")
    for i, (label, row) in enumerate([*classes[:most], *averages.items()]):
        cells = [f"{row.get(c, 0):.4f}" for c in ("precision", "recall", "f1")] + [f"{row.get('support', 0):.0f}"]
        table.add_row(label, *cells, end_section=i == min(most, len(classes)) - 1)
    return table
