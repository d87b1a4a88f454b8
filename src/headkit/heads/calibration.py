"""Calibrated class probabilities: expected calibration error and temperature scaling.

A classifier's softmax is a score, not a probability: fine-tuned transformers are often
over-confident (Guo et al. 2017, "On Calibration of Modern Neural Networks"). Temperature scaling
divides the logits by one number T fitted on held-out data (minimum negative log-likelihood); the
argmax, hence every decision and the accuracy, is unchanged. The expected calibration error (ECE)
is the gap between confidence and accuracy, averaged over 15 equal-width confidence bins, as in
that paper and torchmetrics' `CalibrationError(norm="l1")`.

Everything here reads decoded probabilities, not logits: log p differs from the logits by one
constant per example, which softmax(./T) ignores, so T fitted on log p is T for the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 15
SEARCH = (0.05, 20.0)  # the temperatures searched: from 20x sharper to 20x flatter
MIN_EXAMPLES = 50  # fewer labelled validation examples fit a temperature to noise; they keep T = 1
TINY = 1e-38  # a probability that underflowed to 0 still has a (very negative) log


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: how many examples, their mean confidence and their accuracy."""

    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        return float((self.counts * np.abs(self.accuracy - self.confidence)).sum() / total) if total else 0.0


def reliability(confidences: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin examples by confidence into (0, 1/bins], ..., ((bins-1)/bins, 1]."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    which = np.clip(np.ceil(confidences * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, confidences, minlength=bins) / counts
        accuracy = np.bincount(which, correct, minlength=bins) / counts
    return Reliability(counts, np.nan_to_num(confidence), np.nan_to_num(accuracy))


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    return reliability(confidences, correct, bins).ece


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), TINY))


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities the logits divided by T give."""
    from scipy.special import softmax

    return softmax(log_probs(probs) / temperature, axis=-1)


def nll(probs: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the target classes at temperature T."""
    from scipy.special import logsumexp

    z = log_probs(probs) / temperature
    return float(np.mean(logsumexp(z, axis=-1) - z[np.arange(len(targets)), targets]))


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The T in SEARCH with the least NLL of `targets` (class indices); 1.0 when T = 1 is as good.

    Refuses to fit (returns 1.0) on fewer than MIN_EXAMPLES examples, and when every example is
    already right: the NLL then falls without end as T -> 0, and the fit would only make the head
    as sure as the search allows, which no held-out data would bear out."""
    from scipy.optimize import minimize_scalar

    probs, targets = np.asarray(probs), np.asarray(targets)
    if len(targets) < MIN_EXAMPLES or (probs.argmax(-1) == targets).all():
        return 1.0
    found = minimize_scalar(
        lambda t: nll(probs, targets, float(np.exp(t))),
        bounds=(np.log(SEARCH[0]), np.log(SEARCH[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(np.exp(found.x))
    return temperature if nll(probs, targets, temperature) < nll(probs, targets) - 1e-9 else 1.0
