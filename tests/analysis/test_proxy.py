"""Kendall tau of the search's proxies against the retrained accuracy (analysis.proxy)."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from analysis.proxy import (
    MIN_GENOTYPES,
    kendall_tau,
    plot_proxy_correlation,
    proxy_correlations,
    proxy_points,
)


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_b_is_scipys_with_ties(seed: int) -> None:
    from scipy import stats

    rng = random.Random(seed)
    n = rng.randint(4, 15)
    x = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(n)]  # few values: ties in x
    y = [rng.randint(0, 5) / 5 for _ in range(n)]
    tau, p, m = kendall_tau(x, y)
    ref = stats.kendalltau(x, y, variant="b")
    assert m == n
    assert (math.isnan(tau) and math.isnan(ref.statistic)) or (tau, p) == (
        pytest.approx(ref.statistic),
        pytest.approx(ref.pvalue),
    )


def test_kendall_tau_extremes_and_missing_values() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40])[::2] == (1.0, 4)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1])[::2] == (-1.0, 4)
    tau, p, n = kendall_tau([1, 2, 3], [5, 5, 5])  # one side constant: undefined
    assert math.isnan(tau) and math.isnan(p) and n == 3
    assert kendall_tau([1, float("nan"), 3, None], [1, 2, 3, 4])[::2] == (1.0, 2)  # pairs with a gap dropped
    assert kendall_tau([], [])[2] == 0


def _runs(n_genotypes: int) -> pd.DataFrame:
    """A runs frame (analysis.loader.runs_frame columns) of n search trials, each retrained with two
    seeds, plus a full-precision control retraining of the first (which must be left out)."""
    rows = []
    for i in range(n_genotypes):
        rows.append(
            {
                "run_id": f"s{i}",
                "kind": "search",
                "state": "complete",
                "trial_id": f"t{i}",
                "genotype_digest": f"g{i}",
                "derived_val_acc": 0.1 * i,
                "supernet_val_acc": 0.5 - 0.1 * i,
                "proxy_val_acc": 0.3 + 0.01 * i,
                "param.binarization.method": "xnor",
                "search_run_id": None,
                "test_acc": math.nan,
            }
        )
        for seed, acc in enumerate((0.2 * i, 0.2 * i + 0.1)):
            rows.append(
                {
                    "run_id": f"r{i}{seed}",
                    "kind": "retrain",
                    "state": "complete",
                    "search_run_id": f"s{i}",
                    "genotype_digest": f"g{i}",
                    "param.binarization.method": "xnor",
                    "test_acc": acc,
                }
            )
    rows.append(
        {
            "run_id": "fp",
            "kind": "retrain",
            "state": "complete",
            "search_run_id": "s0",
            "genotype_digest": "g0",
            "param.binarization.method": "fp",
            "test_acc": 0.99,
        }
    )
    rows.append({"run_id": "x", "kind": "search", "state": "pruned", "trial_id": "t9"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n", [0, 1, MIN_GENOTYPES - 1, MIN_GENOTYPES, 6])
def test_points_and_verdict(n: int) -> None:
    points = proxy_points(_runs(n))
    assert len(points) == n and (points["n_seeds"] == 2).all()
    # Mean over the two xnor seeds; the fp control (0.99) is not averaged in.
    assert points["test_acc"].tolist() == pytest.approx([0.2 * i + 0.05 for i in range(n)])
    summary = proxy_correlations(points)
    assert summary["judged"] == (n >= MIN_GENOTYPES)
    if n >= MIN_GENOTYPES:
        # derived_val_acc rises with the retrained accuracy, supernet val_acc falls with it.
        assert (
            summary["derived_val_acc"]["tau"] == pytest.approx(1.0) and summary["derived_val_acc"]["n"] == n
        )
        assert summary["proxy_val_acc"]["tau"] == pytest.approx(1.0)
        assert summary["supernet_val_acc"]["tau"] == pytest.approx(-1.0)
        assert 0 < summary["derived_val_acc"]["p"] < 0.1
        assert f"n = {n}" in summary["verdict"] and "cannot" not in summary["verdict"]
    else:
        assert "cannot be judged" in summary["verdict"]
    fig = plot_proxy_correlation(points, summary)
    titles = [ax.get_title() for ax in fig.axes]
    cols = ("proxy_val_acc", "derived_val_acc", "supernet_val_acc")
    assert all(f"n = {summary[c]['n']}" in t for c, t in zip(cols, titles, strict=True))
    # Below the threshold the titles print no tau (noise), only that there are too few to judge.
    assert all(("too few to judge" in t) == (n < MIN_GENOTYPES) for t in titles)
    assert all(("Kendall tau" in t) == (n >= MIN_GENOTYPES) for t in titles)


def test_an_empty_frame_gives_no_points() -> None:
    assert proxy_points(pd.DataFrame()).empty
    assert proxy_correlations(proxy_points(pd.DataFrame()))["n_genotypes"] == 0
