"""Paired comparisons of two rankers on the same users: what a difference is worth.

For per-user metric values a (a method) and b (its reference), on the same users:
  diff         mean of a - b
  ci_low/high  95% bootstrap interval of that mean (users resampled with replacement)
  p_value      two-sided paired t-test of a - b (scipy.stats.ttest_rel); with hundreds of users the
               mean of the differences is close to normal even though each is mostly 0
  mde          the smallest true mean difference this many users detect with 80% power at the
               5% level, (z_0.975 + z_0.8) * sd(a - b) / sqrt(n), from the observed spread
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5%, 80% power


def paired_comparison(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float | int]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need the same users: {a.shape} vs {b.shape}")
    diff = a - b
    n = len(diff)
    if n == 0:
        return {"users": 0, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "mde": math.nan}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    sd = float(diff.std(ddof=1)) if n > 1 else 0.0
    p = 1.0 if sd == 0.0 else float(stats.ttest_rel(a, b).pvalue)
    return {
        "users": n,
        "diff": float(diff.mean()),
        "ci_low": float(np.percentile(means, 2.5)),
        "ci_high": float(np.percentile(means, 97.5)),
        "p_value": p,
        "mde": (Z_ALPHA + Z_POWER) * sd / math.sqrt(n),
    }
