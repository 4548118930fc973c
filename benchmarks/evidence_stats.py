"""The statistics of the evidence protocol (``evidence.py``), per architecture, from scipy.

Every test and interval comes from ``scipy.stats``; this module only arranges the numbers:

* :func:`variance_components` -- one-way random-effects ANOVA over architectures x seeds: sigma_seed
  (the spread of one architecture's accuracy over retraining seeds) and sigma_arch (the spread of the
  architectures' true accuracies), ``sigma_arch^2 = max(0, (MS_between - MS_within) / n)``;
* :func:`rank_agreement` -- Kendall's tau-b (``scipy.stats.kendalltau``) between two rankings;
* :func:`percentiles` -- each value's percentile among a reference set
  (``scipy.stats.percentileofscore``, ``kind="mean"``);
* :func:`mann_whitney` -- one-sided Mann-Whitney U (``scipy.stats.mannwhitneyu``, H1: a > b);
* :func:`bootstrap_diff` -- a percentile bootstrap interval (``scipy.stats.bootstrap``) of
  mean(a) - mean(b), resampling architectures;
* :func:`minimum_detectable_effect` -- the smallest shift of the mean that a one-sided test at level
  alpha detects with the given power for these group sizes: the normal approximation
  ``(z_{1-alpha} + z_{power}) * sd * sqrt(1/n_a + 1/n_b)``, divided by sqrt(3/pi) for Mann-Whitney
  (its asymptotic efficiency against the t-test under normality).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def variance_components(by_arch: Mapping[Any, Sequence[float]]) -> dict[str, float]:
    """``{"sigma_seed", "sigma_arch", "n_arch", "n_seeds", "ms_between", "ms_within"}`` from the
    accuracies of each architecture over its seeds (the same number of seeds for all)."""
    groups = [list(v) for v in by_arch.values() if len(v) > 0]
    ns = {len(g) for g in groups}
    if len(ns) != 1 or len(groups) < 2 or ns.pop() < 2:
        raise ValueError("variance components need >= 2 architectures, each with the same >= 2 seeds")
    n = len(groups[0])
    k = len(groups)
    means = [sum(g) / n for g in groups]
    grand = sum(means) / k
    ms_between = n * sum((m - grand) ** 2 for m in means) / (k - 1)
    ms_within = sum((x - m) ** 2 for g, m in zip(groups, means, strict=True) for x in g) / (k * (n - 1))
    return {
        "sigma_seed": math.sqrt(ms_within),
        "sigma_arch": math.sqrt(max(0.0, (ms_between - ms_within) / n)),
        "n_arch": k,
        "n_seeds": n,
        "ms_between": ms_between,
        "ms_within": ms_within,
    }


def rank_agreement(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Kendall's tau-b between ``a`` and ``b`` with its two-sided p-value and n."""
    from scipy.stats import kendalltau

    res = kendalltau(a, b, variant="b")
    return {"tau": float(res.statistic), "p": float(res.pvalue), "n": len(a)}


def percentiles(values: Sequence[float], reference: Sequence[float]) -> list[float]:
    """The percentile (0-100) of each of ``values`` among ``reference``."""
    from scipy.stats import percentileofscore

    return [float(percentileofscore(list(reference), v, kind="mean")) for v in values]


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """One-sided Mann-Whitney U (H1: ``a`` tends to be larger than ``b``): U of ``a``, p, and the
    common-language effect size U / (n_a n_b) (the chance that an ``a`` beats a ``b``)."""
    from scipy.stats import mannwhitneyu

    res = mannwhitneyu(a, b, alternative="greater")
    return {
        "U": float(res.statistic),
        "p": float(res.pvalue),
        "prob_a_beats_b": float(res.statistic) / (len(a) * len(b)),
        "n_a": len(a),
        "n_b": len(b),
    }


def bootstrap_diff(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, seed: int = 0) -> dict:
    """mean(a) - mean(b) with a percentile bootstrap interval over architectures (10,000 resamples of
    each group independently, ``scipy.stats.bootstrap``)."""
    import numpy as np
    from scipy.stats import bootstrap

    def diff(x: Any, y: Any, axis: int = -1) -> Any:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    res = bootstrap(
        (list(a), list(b)),
        diff,
        confidence_level=confidence,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return {
        "diff": float(np.mean(a) - np.mean(b)),
        "low": float(res.confidence_interval.low),
        "high": float(res.confidence_interval.high),
        "confidence": confidence,
    }


def minimum_detectable_effect(
    n_a: int, n_b: int, sd: float, alpha: float = 0.05, power: float = 0.8, rank_test: bool = True
) -> float:
    """The shift of the mean a one-sided test at ``alpha`` detects with ``power`` (module docstring)."""
    from scipy.stats import norm

    d = (norm.ppf(1 - alpha) + norm.ppf(power)) * sd * math.sqrt(1 / n_a + 1 / n_b)
    return d / math.sqrt(3 / math.pi) if rank_test else d
