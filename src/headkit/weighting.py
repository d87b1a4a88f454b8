"""How per-head losses combine into the one loss that is back-propagated.

`static`: total = sum_i w_i * L_i, with w_i each head's `loss_weight`.
`uncertainty`: Kendall, Gal & Cipolla (2018), "Multi-task learning using uncertainty to weigh
losses": each head learns s_i = log(sigma_i^2) and total = sum_i exp(-s_i) * w_i * L_i + s_i,
so a noisy or hard task is down-weighted automatically and the s_i term stops the trivial
solution sigma -> infinity. Heads absent from a batch (no labels) take no part in the sum.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor, nn

from headkit.choices import Weighting
from headkit.errors import HeadConfigError

WEIGHTING_METHODS: tuple[str, ...] = get_args(Weighting)


class LossWeighting(nn.Module):
    """Combines `{head: loss}` into one scalar; holds learned log-variances when adaptive."""

    def __init__(self, method: str = "static"):
        super().__init__()
        if method not in WEIGHTING_METHODS:
            raise HeadConfigError(f"unknown loss weighting '{method}'; choose one of {list(WEIGHTING_METHODS)}")
        self.method = method
        self.log_vars = nn.ParameterDict()

    def add_head(self, name: str) -> None:
        if self.method == "uncertainty" and name not in self.log_vars:
            self.log_vars[name] = nn.Parameter(torch.zeros(()))

    def remove_head(self, name: str) -> None:
        if name in self.log_vars:
            del self.log_vars[name]

    def forward(self, losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
        terms = []
        for name, loss in losses.items():
            weighted = weights[name] * loss
            if self.method == "uncertainty":
                s = self.log_vars[name]
                weighted = torch.exp(-s) * weighted + s
            terms.append(weighted)
        return torch.stack(terms).sum()

    def current_weights(self, weights: dict[str, float]) -> dict[str, float]:
        """The effective multiplier of each head's loss right now (for logging)."""
        if self.method == "static":
            return dict(weights)
        return {n: float(torch.exp(-self.log_vars[n]).item()) * w for n, w in weights.items()}
