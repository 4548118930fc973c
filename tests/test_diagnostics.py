"""bnas.diagnostics: the figures that tell a search's signal from noise."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from bnas.diagnostics import (
    binomial_se,
    degenerate_cells,
    mean_pairwise_shared,
    normalized_entropy,
    order_correlation,
    param_free_share,
    pooled_order_correlation,
    random_shared_expectation,
    shared_edges,
    signal_to_noise,
)
from bnas.genotype import GENOTYPES, Genotype, random_genotype


def test_random_shared_expectation_matches_sampling() -> None:
    exact = random_shared_expectation()
    # 2 cells x 4/7 x (1/2 + 1/3 + 1/4 + 1/5): each node's (op, input) pairs
    assert exact == pytest.approx(2 * 4 / 7 * (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5))
    draws = [shared_edges(random_genotype(2 * i), random_genotype(2 * i + 1)) for i in range(3000)]
    # Standard error of the mean over 3000 pairs is about 0.02: 5 standard errors of margin.
    assert statistics.fmean(draws) == pytest.approx(exact, abs=0.1)
    assert random_shared_expectation(["sep_conv_3x3", "skip_connect"], steps=2) == pytest.approx(
        2 * (2 * 2 * (1 / 2) ** 2 + 3 * 2 * ((2 / 3) / 2) ** 2)
    )


def test_shared_edges_counts_node_op_and_input() -> None:
    g = GENOTYPES.get("bnas_xnor")
    assert shared_edges(g, g) == 16
    d = g.to_dict()
    d["normal"][0] = ["sep_conv_5x5", 1]  # another op on node 2's first edge
    d["reduce"][7] = ["dil_conv_3x3", 3]  # another input on node 5's last edge
    assert shared_edges(g, Genotype.from_dict(d)) == 14
    assert mean_pairwise_shared([g, g, g]) == 16 and math.isnan(mean_pairwise_shared([g]))


def test_param_free_share_and_degenerate_cells() -> None:
    g = GENOTYPES.get("bnas_xnor")
    assert param_free_share(g.normal) == 4 / 8  # two skips, two max pools
    assert degenerate_cells(g, 0.75) == {}
    d = g.to_dict()
    d["normal"] = [["skip_connect", 0], ["avg_pool_3x3", 1]] * 3 + [["sep_conv_3x3", 0], ["max_pool_3x3", 1]]
    flagged = degenerate_cells(Genotype.from_dict(d), 0.75)
    assert flagged == {"normal": 7 / 8}


def test_entropy_snr_and_standard_error_by_hand() -> None:
    assert normalized_entropy([0.25] * 4) == pytest.approx(1.0)
    assert normalized_entropy([1.0, 0.0]) == 0.0
    assert math.isnan(normalized_entropy([1.0]))
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    # scores 0.1, 0.2, 0.3: sd 0.1; mean standard error 0.05 -> 2
    assert signal_to_noise([0.1, 0.2, 0.3], [0.04, 0.06, 0.05]) == pytest.approx(2.0)
    assert math.isnan(signal_to_noise([0.1], [0.05]))


def test_order_correlation_is_scipys_spearman() -> None:
    from scipy.stats import spearmanr

    scores = [0.11, 0.15, 0.14, 0.19, 0.18, 0.22]
    rho, p = order_correlation(scores)
    ref = spearmanr(range(6), scores)
    assert (rho, p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    assert rho > 0.8  # rising with the position: an order bias
    assert all(math.isnan(v) for v in order_correlation([0.1, 0.1, 0.1]))


def test_pooled_order_correlation_finds_a_trend_and_not_noise() -> None:
    rng = random.Random(0)
    rising = [[0.01 * i + rng.gauss(0, 0.005) for i in range(4)] for _ in range(7)]
    rho, p, n = pooled_order_correlation(rising)
    assert n == 28 and rho > 0.6 and p < 0.01
    noise = [[rng.gauss(0, 1) for _ in range(4)] for _ in range(200)]
    rho, p, n = pooled_order_correlation(noise)
    # 800 scores: the standard error of rho under no trend is about 1/sqrt(800) = 0.035.
    assert abs(rho) < 0.15
