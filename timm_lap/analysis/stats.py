"""Statistics for paired multi-seed comparisons: Student-t intervals, detectable effects, rank correlation.

    ci = t_interval([78.1, 79.4, 77.9])                  # {'n', 'mean', 'sd', 'half', 'lo', 'hi'}
    diff = paired_difference(lap_by_seed, vanilla_by_seed)  # pairs by key (seed) only
    mde = detectable_difference(diff['sd'], diff['n'])       # smallest true effect found 80 % of the time
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["t_interval", "paired_difference", "detectable_difference", "spearman", "spearman_bootstrap"]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval: {'n', 'mean', 'sd', 'half', 'lo', 'hi'}.

    With a single value the spread is unknown: sd, half, lo and hi are NaN.
    """
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        raise ValueError("t_interval: no values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"t_interval: confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size < 2:
        return {"n": 1, "mean": mean, "sd": math.nan, "half": math.nan, "lo": math.nan, "hi": math.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=x.size - 1) * sd / math.sqrt(x.size))
    return {"n": int(x.size), "mean": mean, "sd": sd, "half": half, "lo": mean - half, "hi": mean + half}


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float],
                      confidence: float = 0.95) -> dict[str, float]:
    """t interval of ``a[k] - b[k]`` over the keys (e.g. seeds) both have; unpaired values are never used."""
    keys = sorted(set(a) & set(b), key=repr)
    if not keys:
        raise ValueError("paired_difference: no common keys to pair")
    return t_interval([a[k] - b[k] for k in keys], confidence)


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test at level ``alpha`` detects with ``power``.

    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (the usual normal-approximation formula with t
    quantiles); NaN with fewer than two pairs or an unknown ``sd``.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman's rank correlation and its two-sided p-value: {'n', 'rho', 'p'}."""
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"spearman: need two sequences of equal length >= 3, got {len(x)} and {len(y)}")
    res = stats.spearmanr(x, y)
    return {"n": len(x), "rho": float(res.statistic), "p": float(res.pvalue)}


def spearman_bootstrap(x: Sequence[float], y: Sequence[float], confidence: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """:func:`spearman` plus a percentile bootstrap interval for rho ('lo', 'hi'), resampling pairs.

    Resamples whose ranks are constant (rho undefined) are dropped; 'n_boot' reports how many were kept.
    """
    out: dict[str, Any] = spearman(x, y)
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(xa), len(xa))
        if np.ptp(xa[idx]) == 0 or np.ptp(ya[idx]) == 0:
            continue
        rhos.append(stats.spearmanr(xa[idx], ya[idx]).statistic)
    tail = (1 - confidence) / 2 * 100
    lo, hi = (np.percentile(rhos, [tail, 100 - tail]) if rhos else (math.nan, math.nan))
    out.update(lo=float(lo), hi=float(hi), n_boot=len(rhos), confidence=confidence)
    return out
