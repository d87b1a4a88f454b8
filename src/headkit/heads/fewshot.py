"""Few-shot building blocks that head types pick from: pair sampling and closed-form solvers.

Few-shot training (the SetFit recipe) tunes the backbone on contrastive pairs, then solves each
head on the frozen, L2-normalised features with scikit-learn and copies the solution into the
head's Linear layer. Which pairs fit a head follows from its labels (its codec's `fewshot_pairs`);
which solver, from its output: a head type that few-shot can train picks `fewshot = FewShot(solver)`.
The shared machinery lives here.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from headkit.errors import DataError, HeadConfigError
from headkit.heads.labels import IGNORE_INDEX
from headkit.heads.part import Part

Solver = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (x, y, width) -> (weight, bias)


@dataclass(frozen=True)
class Pair:
    """A contrastive pair for few-shot tuning: two examples and how similar their embeddings
    should be. Position -1 compares pooled vectors; a position >= 0 compares that token's vector."""

    head: str
    left: int
    right: int
    target: float
    left_pos: int = -1
    right_pos: int = -1


@dataclass(frozen=True)
class FewShot(Part):
    """A head type's closed-form few-shot solution: `solve(features, y, width)` on L2-normalised
    features gives the (weight, bias) of the head's linear layer `layer`.

    Few-shot heads read unit vectors, as SetFit's sentence-transformers body ends in a Normalize
    module (the contrastive loss trained directions, not lengths): `configure` says so in a head's
    config (its `normalize` field) before the head is built."""

    solve: Solver
    layer: str = "classifier.1"  # the Linear of the usual dropout -> linear classifier

    def fit(self, features: np.ndarray, y: Any) -> None:
        """Solve the bound head on `features` (one row per labelled example, or tagged token)."""
        linear = self.head.get_submodule(self.layer)
        load_linear(linear, *self.solve(features, np.asarray(y), linear.out_features))

    @staticmethod
    def configure(config: Any) -> Any:
        """`config` for a head that few-shot training solves: it reads unit vectors."""
        FewShot.check(config)
        return dataclasses.replace(config, normalize=True)

    @staticmethod
    def check(config: Any) -> None:
        """Refuse a head with hidden layers (a task's, or one the model already has): the closed
        form solves one linear layer on the features, and the layers below it would stay random."""
        if getattr(config, "hidden_layers", 0):
            raise HeadConfigError(
                f"a '{config.type}' head with hidden_layers={config.hidden_layers} has no closed-form few-shot "
                "solution (fewshot solves one linear layer on the features): train it with frozen, full or lora, "
                "or drop hidden_layers"
            )


def class_pairs(name: str, y: np.ndarray, iterations: int, rng: np.random.Generator) -> list[Pair]:
    """Per labelled example and iteration: one partner of its class (1.0), one of another (0.0)."""
    present = labelled_rows(y)
    counts = Counter(int(c) for c in y[present])
    scarce = sorted(c for c, n in counts.items() if n < 2)
    if scarce:
        raise DataError(
            f"head '{name}': few-shot needs at least 2 training examples of every class (a positive pair), "
            f"but {len(scarce)} class(es) have fewer after the validation split; label more, or lower --val_fraction"
        )
    if len(counts) < 2:
        raise DataError(f"head '{name}': the training data holds a single class; a classifier needs at least 2")
    members = {c: present[y[present] == c] for c in counts}  # per class, once: not per example and iteration
    others = {c: present[y[present] != c] for c in counts}
    pairs = []
    for _ in range(iterations):
        for i in present:
            same = members[int(y[i])][members[int(y[i])] != i]
            other = others[int(y[i])]
            pairs.append(Pair(name, int(i), int(rng.choice(same)), 1.0))
            pairs.append(Pair(name, int(i), int(rng.choice(other)), 0.0))
    return pairs


Similarity = Callable[[np.ndarray, np.ndarray, np.ndarray], float]  # (a, b, per-column span) -> [0, 1]


def random_partner_pairs(
    name: str, y: np.ndarray, similarity: Similarity, iterations: int, rng: np.random.Generator
) -> list[Pair]:
    """Vector labels (NaN = missing): two random partners per labelled example and iteration,
    each pair's target the head's own similarity of the two label rows."""
    present = labelled_rows(y)
    if len(present) < 2:
        raise DataError(f"head '{name}': few-shot needs at least 2 labelled training examples")
    span = label_span(y, present)
    pairs = []
    for _ in range(iterations):
        for i in present:
            for j in rng.choice(present[present != i], size=2):
                pairs.append(Pair(name, int(i), int(j), similarity(y[i], y[j], span)))
    return pairs


def labelled_rows(y: np.ndarray) -> np.ndarray:
    """Indices of the examples that carry a label (class ids: not IGNORE_INDEX; vectors: not all NaN)."""
    return np.flatnonzero(y != IGNORE_INDEX) if y.ndim == 1 else np.flatnonzero(~np.isnan(y).all(axis=1))


def label_span(y: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Each label column's range over the labelled rows (1 where constant or for class ids): the
    scale a similarity of vector labels divides gaps by."""
    if y.ndim == 1 or not len(present):
        return np.ones(1)
    span = np.nanmax(y[present], axis=0) - np.nanmin(y[present], axis=0)
    span[span == 0] = 1.0
    return span


def block_pairs(name: str, y: np.ndarray, blocks: list[np.ndarray], similarity: Similarity) -> list[list[Pair]]:
    """Per block of examples (one step of the all-pairs recipe, which embeds its block once): every
    pair of labelled examples in it, each pair's target the head's similarity of their labels."""
    present = labelled_rows(y)
    span, labelled = label_span(y, present), set(present.tolist())
    steps = []
    for block in blocks:
        inside = [int(i) for i in block if int(i) in labelled]
        steps.append(
            [Pair(name, i, j, similarity(y[i], y[j], span)) for k, i in enumerate(inside) for j in inside[k + 1 :]]
        )
    return steps


def _fit(estimator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    estimator.fit(x, y)
    return np.atleast_2d(estimator.coef_), np.atleast_1d(estimator.intercept_)


def class_solution(x: np.ndarray, y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression over the examples that have a class (single-label classes, token tags)."""
    keep = y != IGNORE_INDEX
    return logistic(x[keep], y[keep], width)


def logistic(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression (SetFit's head and its C) as a (C, H) linear layer over all `n_classes`."""
    from sklearn.linear_model import LogisticRegression

    estimator = LogisticRegression(C=1.0, max_iter=2000)
    coef, intercept = _fit(estimator, x, y)
    classes = estimator.classes_.astype(int)
    weight = np.zeros((n_classes, x.shape[1]))
    bias = np.full(n_classes, -30.0)  # a class absent from training is never predicted
    if len(classes) == 2:  # sklearn gives one vector for two classes: split it symmetrically
        weight[classes] = np.stack([-coef[0] / 2, coef[0] / 2])
        bias[classes] = [-intercept[0] / 2, intercept[0] / 2]
    else:
        weight[classes], bias[classes] = coef, intercept
    return weight, bias


def ridge_per_target(x: np.ndarray, y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One ridge regression per target column (NaN = missing), strength by efficient leave-one-out."""
    from sklearn.linear_model import RidgeCV

    weight, bias = np.zeros((width, x.shape[1])), np.zeros(width)
    for k in range(width):
        keep = ~np.isnan(y[:, k])
        coef, intercept = _fit(RidgeCV(alphas=(0.01, 0.1, 1.0, 10.0)), x[keep], y[keep, k])
        weight[k], bias[k] = coef[0], intercept[0]
    return weight, bias


def binary_logistic_per_label(x: np.ndarray, y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One binary logistic regression per label (NaN = missing); a label always on (off) is a constant."""
    weight, bias = np.zeros((width, x.shape[1])), np.zeros(width)
    for k in range(width):
        keep = ~np.isnan(y[:, k])
        column = (y[keep, k] > 0.5).astype(int)
        if column.min() == column.max():
            bias[k] = 30.0 if column[0] else -30.0
            continue
        w, b = logistic(x[keep], column, 2)
        weight[k], bias[k] = w[1] - w[0], b[1] - b[0]
    return weight, bias


@torch.no_grad()
def load_linear(linear: nn.Linear, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy a solved (weight, bias) into a torch Linear, in its dtype."""
    linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
    linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
