"""Aggregates with uncertainty: mean/std/standard error, bootstrap CIs, paired bootstrap differences."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, population std (ddof=0, as the authors' evaluators) and standard error std/√n."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return {"n": 0, "mean": None, "std": None, "std_error": None}
    std = float(x.std())
    return {"n": int(x.size), "mean": float(x.mean()), "std": std, "std_error": std / np.sqrt(x.size)}


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable[[np.ndarray], float] = np.mean,
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` over situations (resampled with replacement)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(reps, x.size))
    boots = np.apply_along_axis(stat, 1, x[idx]) if stat is not np.mean else x[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    stat: Callable[[np.ndarray], float] = np.mean,
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Difference stat(a) − stat(b) on the same situations (same resampled indices for both systems):
    the point estimate, its CI, and the share of resamples where the sign flips (a one-sided p-value)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired bootstrap needs the same situations: {xa.shape} vs {xb.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, xa.size, size=(reps, xa.size))
    diffs = np.array([stat(xa[i]) - stat(xb[i]) for i in idx])
    point = float(stat(xa) - stat(xb))
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = float(np.mean(diffs <= 0)) if point > 0 else float(np.mean(diffs >= 0))
    return {"diff": point, "ci_low": float(lo), "ci_high": float(hi), "p_value": p}


def relative_gain(ours: float, baseline: float) -> float:
    """The paper's headline form: (ours − baseline) / baseline."""
    return (ours - baseline) / baseline if baseline else float("nan")


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest paired mean difference a two-sided test at ``alpha`` detects with ``power``, given the paired
    differences' standard deviation ``sd`` over ``n`` situations (normal approximation: (z_{1-α/2} + z_power)·sd/√n)."""
    from statistics import NormalDist

    if n < 2:
        return float("nan")
    z = NormalDist().inv_cdf
    return (z(1 - alpha / 2) + z(power)) * sd / float(np.sqrt(n))


def paired_summary(a: Sequence[float], b: Sequence[float], reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """:func:`paired_bootstrap` of mean(a) − mean(b), plus the paired differences' SD and the minimum detectable
    effect at 80 % power for that many situations."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    res = paired_bootstrap(xa, xb, reps=reps, seed=seed)
    sd = float(np.std(xa - xb, ddof=1)) if xa.size > 1 else float("nan")
    return {**res, "sd_diff": sd, "mde_80": min_detectable_effect(sd, int(xa.size))}


def paired_against(part: Any, reference: str, value: str, reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """``reference`` − each other system of ``part`` (a frame of ``system``, ``prompt`` and ``value`` columns) on
    the situations both scored: one :func:`paired_summary` row per other system (sorted), none under 2 pairs."""
    ref = part[part["system"] == reference].set_index("prompt")[value]
    rows = []
    for other in sorted(set(part["system"]) - {reference}):
        oth = part[part["system"] == other].set_index("prompt")[value]
        common = ref.index.intersection(oth.index)
        if len(common) < 2:
            continue
        res = paired_summary(ref[common].to_numpy(), oth[common].to_numpy(), reps=reps, seed=seed)
        rows.append({"system": reference, "baseline": other, "n": len(common), **res})
    return rows
