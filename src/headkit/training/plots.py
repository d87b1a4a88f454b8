"""PNG plots a person would rather look at than read: loss curves per head, confusion matrices."""

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
