"""PNG plots a person would rather look at than read: loss curves per head, confusion matrices,
reliability diagrams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay


def _smooth(values: list[float], window: int) -> np.ndarray:
    if len(values) < window or window <= 1:
        return np.asarray(values)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def loss_curves(steps: list[dict[str, Any]], epochs: list[dict[str, Any]], heads: list[str], path: Path) -> Path:
    """Training loss per head (smoothed, by step) and validation loss per head (by epoch)."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for head in heads:
        points = [(s["step"], s["losses"][head]) for s in steps if head in s["losses"]]
        if points:
            x, y = zip(*points, strict=True)
            window = max(1, len(y) // 50)
            smooth = _smooth(list(y), window)
            ax_train.plot(x[len(x) - len(smooth) :], smooth, label=head)
        val = [(e["epoch"], e["val_losses"][head]) for e in epochs if head in e.get("val_losses", {})]
        if val:
            ax_val.plot(*zip(*val, strict=True), marker="o", label=head)
    ax_train.set(title="training loss per head", xlabel="optimizer step", ylabel="loss")
    ax_val.set(title="validation loss per head", xlabel="epoch", ylabel="loss")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(head: str, references: list[str], predictions: list[str], labels: list[str], path: Path) -> Path:
    """Confusion matrix of a classification head on the validation set."""
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        references, predictions, labels=labels, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set_title(f"{head}: validation confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reliability_diagram(head: str, before: tuple, after: tuple, path: Path) -> Path:
    """Accuracy against confidence per confidence bin, before and after temperature scaling (a
    calibrated head's bars sit on the diagonal); `before` / `after`: (confidences, correct)."""
    from headkit.heads.calibration import BINS, reliability

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    edges = np.linspace(0, 1, BINS + 1)
    for ax, (title, (confidences, correct)) in zip(axes, (("before", before), ("after", after)), strict=True):
        bins = reliability(confidences, correct)
        filled = bins.counts > 0
        ax.bar(edges[:-1][filled], bins.accuracy[filled], width=1 / BINS, align="edge", edgecolor="black",
               alpha=0.7, label="accuracy")  # fmt: skip
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        ax.set(title=f"{head}: {title} temperature scaling (ECE {bins.ece:.4f})", xlabel="confidence",
               xlim=(0, 1), ylim=(0, 1))  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    axes[0].set_ylabel("accuracy (validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
