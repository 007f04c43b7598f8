"""Statistics for accuracy curves: confidence intervals and paired tests on the same images.

- :func:`wilson_interval`: the Wilson score interval of an accuracy (k correct of n), which
  keeps its coverage near 0% and 100%, unlike the normal approximation.
- :func:`mcnemar`: McNemar's exact test of two methods evaluated on the same images: only
  the discordant images count (A right and B wrong, or the reverse); under the null both
  kinds are equally likely, so their split is Binomial(n_discordant, 1/2).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def wilson_interval(correct: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% (by default) Wilson score interval of the accuracy ``correct / n``, in percent."""
    if n <= 0:
        raise ValueError("an accuracy needs n >= 1 samples")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must lie in [0, n]: got {correct} of {n}")
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 (or 1) the bound is exactly 0 (or 1); centre - half leaves a rounding residue there
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return 100.0 * lo, 100.0 * hi


def _log_binom_pmf(k: int, n: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2.0)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials with p = 1/2."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    # P(X <= k) + P(X >= n - k), summed in log space for large n
    logs = [_log_binom_pmf(i, n) for i in range(0, k + 1)]
    m = max(logs)
    tail = math.exp(m) * sum(math.exp(v - m) for v in logs)
    return min(1.0, 2.0 * tail)


def mcnemar(a_correct: Sequence[bool] | torch.Tensor, b_correct: Sequence[bool] | torch.Tensor) -> dict:
    """McNemar's exact test of A against B on the same images.

    Returns ``a_only`` (A right, B wrong), ``b_only``, the exact two-sided ``p`` value, and
    ``diff`` = accuracy(A) - accuracy(B) in points."""
    a = torch.as_tensor(a_correct).bool().flatten()
    b = torch.as_tensor(b_correct).bool().flatten()
    if a.shape != b.shape:
        raise ValueError(f"paired tests need the same images: got {a.numel()} and {b.numel()} results")
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    n = a.numel()
    return {"a_only": a_only, "b_only": b_only, "n": n, "p": binomial_two_sided(a_only, a_only + b_only),
            "diff": 100.0 * (a_only - b_only) / n if n else 0.0}


def verdict(test: dict, name_a: str, name_b: str, alpha: float = 0.05) -> str:
    """A one-line reading of a McNemar result: who is ahead, and whether the test supports it."""
    d = test["diff"]
    if test["p"] >= alpha:
        return f"no significant difference ({d:+.2f} points, p={test['p']:.3g})"
    better, worse = (name_a, name_b) if d > 0 else (name_b, name_a)
    return f"{better} beats {worse} by {abs(d):.2f} points (p={test['p']:.3g})"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error
    rate): the adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
