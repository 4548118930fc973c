"""What a search's decisions rest on: figures that tell signal from noise, per stage and per genotype.

Torch-free (numbers in, numbers out), so the search, the benchmarks and the report share one
definition of each figure:

* :func:`order_correlation` -- Spearman's rho between a sampled sub-network's score and its position in
  the evaluation order. Sub-networks that train one after another on shared weights score higher the
  later they come; with the order bias removed rho is zero up to chance.
* :func:`signal_to_noise` -- the spread (standard deviation) of the sub-network scores of a stage
  divided by the standard error of one score on the validation images used: near 1, the ranking of
  the sub-networks is what the finite validation sample made of it.
* :func:`normalized_entropy` -- entropy of a softmax over ``k`` choices divided by ``ln k`` (1 = uniform,
  0 = one-hot): how far alpha and beta have moved from their initial uniform distribution.
* :func:`param_free_share` -- the share of a cell's edges whose op has no weights
  (:data:`bnas.search_space.PARAM_FREE`); :func:`degenerate_cells` flags cells at or above a share.
* :func:`shared_edges` and :func:`random_shared_expectation` -- how many (cell, node, op, input) edges
  two genotypes share, and the exact expectation for two independent uniformly random genotypes of
  the same space (:func:`bnas.genotype.random_genotype`): seeds of a search that finds something agree
  well above it.

Statistics come from scipy (``scipy.stats.spearmanr``), not hand-written tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

from bnas.search_space import OPS, PARAM_FREE

Edge = tuple[str, int]


def order_correlation(scores: Sequence[float]) -> tuple[float, float]:
    """(Spearman's rho, two-sided p) between ``scores`` and their positions 0, 1, ...; (nan, nan) for
    fewer than 3 scores or when all scores are equal (rho is undefined)."""
    if len(scores) < 3 or len(set(scores)) == 1:
        return math.nan, math.nan
    from scipy.stats import spearmanr

    res = spearmanr(list(range(len(scores))), list(scores))
    return float(res.statistic), float(res.pvalue)


def pooled_order_correlation(groups: Iterable[Sequence[float]]) -> tuple[float, float, int]:
    """Spearman's rho between score and evaluation position pooled over several groups (stages, seeds):
    within each group both are turned into centred ranks (so that a stage's level or length does not
    count), then one rho over all pairs. Returns (rho, two-sided p, number of scores)."""
    from scipy.stats import rankdata, spearmanr

    pos: list[float] = []
    val: list[float] = []
    for g in groups:
        if len(g) < 2:
            continue
        n = len(g)
        pos += [(i - (n - 1) / 2) / n for i in range(n)]
        r = rankdata(list(g))
        val += [float((x - (n + 1) / 2) / n) for x in r]
    if len(pos) < 3 or len(set(val)) == 1:
        return math.nan, math.nan, len(pos)
    res = spearmanr(pos, val)
    return float(res.statistic), float(res.pvalue), len(pos)


def binomial_se(acc: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` images: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(acc * (1 - acc), 0.0) / n) if n > 0 else math.nan


def signal_to_noise(scores: Sequence[float], standard_errors: Sequence[float]) -> float:
    """Standard deviation of ``scores`` (ddof 1) over the mean standard error of one score; nan for fewer
    than 2 scores or a zero standard error."""
    if len(scores) < 2:
        return math.nan
    m = sum(scores) / len(scores)
    sd = math.sqrt(sum((s - m) ** 2 for s in scores) / (len(scores) - 1))
    se = sum(standard_errors) / len(standard_errors) if standard_errors else math.nan
    return sd / se if se and se == se else math.nan


def normalized_entropy(probs: Sequence[float]) -> float:
    """H(p) / ln(k) for a distribution over k >= 2 choices (1 = uniform, 0 = one-hot); nan for k < 2."""
    k = len(probs)
    if k < 2:
        return math.nan
    h = -sum(p * math.log(p) for p in probs if p > 0)
    return h / math.log(k)


def mean_normalized_entropy(rows: Iterable[Sequence[float]]) -> float:
    """Mean of :func:`normalized_entropy` over the rows with at least 2 choices; nan when none has."""
    vals = [normalized_entropy(r) for r in rows if len(r) >= 2]
    return sum(vals) / len(vals) if vals else math.nan


def param_free_share(edges: Sequence[Edge]) -> float:
    """Share of ``edges`` ((op, input) pairs) whose op has no weights."""
    return sum(op in PARAM_FREE for op, _ in edges) / len(edges) if edges else math.nan


def degenerate_cells(genotype: Any, share: float) -> dict[str, float]:
    """``{cell type: parameter-free share}`` for the cells of ``genotype`` at or above ``share``."""
    out = {}
    for cell in ("normal", "reduce"):
        s = param_free_share(getattr(genotype, cell))
        if s >= share:
            out[cell] = s
    return out


def _edge_set(genotype: Any) -> set[tuple[str, int, str, int]]:
    """(cell, node, op, input) of every edge; edge k feeds intermediate node 2 + k // 2."""
    return {
        (cell, 2 + k // 2, op, inp)
        for cell in ("normal", "reduce")
        for k, (op, inp) in enumerate(getattr(genotype, cell))
    }


def shared_edges(a: Any, b: Any) -> int:
    """Number of (cell, node, op, input) edges that genotypes ``a`` and ``b`` share."""
    return len(_edge_set(a) & _edge_set(b))


def mean_pairwise_shared(genotypes: Sequence[Any]) -> float:
    """Mean :func:`shared_edges` over all pairs; nan for fewer than 2 genotypes."""
    pairs = list(combinations(genotypes, 2))
    return sum(shared_edges(a, b) for a, b in pairs) / len(pairs) if pairs else math.nan


def random_shared_expectation(ops: Sequence[str] | None = None, steps: int = 4) -> float:
    """Expected :func:`shared_edges` of two independent genotypes of
    :func:`bnas.genotype.random_genotype` (each node draws 2 distinct inputs of its ``2 + i`` uniformly
    and, per input, an op other than ``none`` uniformly), summed exactly over both cells:
    ``2 * sum_i sum_{(op, input)} P(op, input)^2`` with ``P = (2 / (2 + i)) / n_ops``."""
    n_ops = len([o for o in (ops or OPS) if o != "none"])
    per_cell = 0.0
    for i in range(steps):
        n_in = 2 + i
        p = (2 / n_in) / n_ops  # one (op, input) pair is an edge of the node with this probability
        per_cell += n_in * n_ops * p * p
    return 2 * per_cell
