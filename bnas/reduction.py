"""Operation space reduction strategies, chosen by name from ``REDUCTIONS`` (method.md section 6).

After every stage of super-network training a strategy names, for every edge, the one operation to
remove. Strategies:

``performance`` (BNAS, Chen et al. AAAI 2020 [P], details [R]). On every edge split the k remaining
    operations by softmax(alpha) into the ceil(k/2) smallest (O_small; at least
    ``reduction.min_pool`` of them, or all) and the rest (O_large). For T rounds, draw on every edge a
    permutation of O_small, giving |O_small| sub-networks with one op per edge; score each (trained V
    epochs with the shared weights, then its validation accuracy or loss: ``reduction.subnet_score``)
    and credit the score y to every op it used. Then per edge::

        ybar_o = mean over the T rounds of the scores credited to o              (o in O_small)
        s_o    = softmax_{O_small}(ybar_o / tau)
        s_o    = (max_{O_small} s + mean_{O_small} s) / 2                         (o in O_large)
        S_o   <- S_o / 2 + s_o                                                   (running likelihood)

    and remove the op with the smallest S_o (``reduction.estimate: pooled`` [D]: ybar_o shrunk towards
    the op's mean over the cell type's edges, :func:`pooled_estimates`). With ``min_pool`` 1 (the
    paper as recalled) the last
    stage's O_small holds one op, whose s is 1 like O_large's: S's history decides, not a measurement.
``alpha``  drop the op with the smallest softmax(alpha) on every edge; no sampling [D baseline].
``none``   plain PC-DARTS: nothing is removed; the genotype is the argmax at the end [D baseline].
``ucb``    the journal version's upper confidence bound (IJCV 2021) [D]: T x k sub-networks per stage
    (k ops left per edge), drawn k at a time; in a draw every edge takes, slot by slot, the op with the
    highest ``ybar_o + c * sqrt(2 ln N / n_o)`` (N sub-networks scored so far, n_o the times o was
    scored on that edge, counting the draw's earlier slots as pending; never scored = infinite), so
    promising ops are measured more often than the rest. The op with the lowest bound goes.

Every strategy keeps `none` from being the last op of an edge: where its choice would leave `none`
alone, `none` goes instead (``Drop.instead_of`` records the op that was spared).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bnas.logs import info
from bnas.registry import Registry
from bnas.search_space import CELL_TYPES
from bnas.supernet import Selection

if TYPE_CHECKING:  # annotations only: bnas.config imports this module (REDUCTIONS), not the reverse
    from bnas.config import ReductionConfig

EdgeKey = tuple[str, int]  # (cell type, edge index)


@dataclass
class ReductionContext:
    """What a strategy may look at and do during one reduction step.

    ``edge_ops`` maps each cell type to the per-edge lists of remaining ops; ``probs`` gives, per
    cell type and edge, softmax(alpha) over those ops as floats.
    ``evaluate(selections)`` scores a list of sub-networks (higher is better), in order.
    """

    edge_ops: dict[str, list[list[str]]]
    probs: dict[str, list[list[float]]]
    evaluate: Callable[[list[Selection]], list[float]]
    rng: random.Random
    log: Callable[[str], None] = info


@dataclass
class Drop:
    """One removal: which op left which edge, with the scores that decided it."""

    cell_type: str
    edge: int
    op: str
    scores: dict[str, float] = field(default_factory=dict)
    #: The op the strategy chose, where removing it would have left `none` alone (so `none` went).
    instead_of: str | None = None
    #: ``ucb``: how many sampled sub-networks used each op on this edge so far.
    counts: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "cell_type": self.cell_type,
            "edge": self.edge,
            "op": self.op,
            "scores": self.scores,
        }
        if self.instead_of is not None:
            d["instead_of"] = self.instead_of
        if self.counts is not None:
            d["counts"] = self.counts
        return d


class ReductionStrategy:
    """Base class. ``reduces`` is False for ``none``; ``samples`` is True when sub-networks train."""

    name = "base"
    reduces = True
    samples = False

    def __init__(self, cfg: ReductionConfig) -> None:
        self.cfg = cfg

    def choose_drops(self, ctx: ReductionContext) -> list[Drop]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


REDUCTIONS: Registry[type[ReductionStrategy]] = Registry("reduction strategy")


def _edges(ctx: ReductionContext) -> list[EdgeKey]:
    return [(t, e) for t in CELL_TYPES for e in range(len(ctx.edge_ops[t]))]


def _argmin(scores: dict[str, float], order: list[str]) -> str:
    """Lowest score; ties go to the op listed first in ``order`` (deterministic)."""
    return min(order, key=lambda o: (scores[o], order.index(o)))


def drop_for(cell_type: str, edge: int, scores: dict[str, float], order: list[str]) -> Drop:
    """The :class:`Drop` of the lowest-scoring op of ``order``, unless that would leave `none` alone on
    the edge: then `none` goes (a genotype never holds it) and ``instead_of`` names the spared op."""
    op = _argmin(scores, order)
    if [o for o in order if o != op] == ["none"]:
        return Drop(cell_type, edge, "none", dict(scores), instead_of=op)
    return Drop(cell_type, edge, op, dict(scores))


def split_by_alpha(names: list[str], probs: list[float], min_pool: int = 1) -> tuple[list[str], list[str]]:
    """(O_small, O_large): the max(ceil(k/2), min(min_pool, k)) ops with the smallest softmax(alpha),
    and the rest."""
    order = sorted(range(len(names)), key=lambda i: (probs[i], i))
    n_small = max(math.ceil(len(names) / 2), min(min_pool, len(names)))
    return [names[i] for i in order[:n_small]], [names[i] for i in order[n_small:]]


def softmax(values: list[float], tau: float = 1.0) -> list[float]:
    m = max(values)
    ex = [math.exp((v - m) / tau) for v in values]
    z = sum(ex)
    return [v / z for v in ex]


def performance_likelihood(
    small: list[str], large: list[str], mean_acc: dict[str, float], prev: dict[str, float], tau: float
) -> dict[str, float]:
    """The BNAS update for one edge (method.md section 6, step 4): returns the new S for every op."""
    s_small = softmax([mean_acc[o] for o in small], tau)
    s = dict(zip(small, s_small, strict=True))
    s_large = 0.5 * (max(s_small) + sum(s_small) / len(s_small))
    for o in large:
        s[o] = s_large
    return {o: 0.5 * prev.get(o, 0.0) + s[o] for o in small + large}


def _selection(ctx: ReductionContext, picks: dict[EdgeKey, str]) -> Selection:
    return Selection(
        normal=[picks[("normal", e)] for e in range(len(ctx.edge_ops["normal"]))],
        reduce=[picks[("reduce", e)] for e in range(len(ctx.edge_ops["reduce"]))],
    )


def _sample_rounds(
    ctx: ReductionContext,
    pools: dict[EdgeKey, list[str]],
    rounds: int,
    centred: bool = False,
) -> dict[EdgeKey, dict[str, list[float]]]:
    """T rounds; each draws a permutation of every edge's pool (all pools have the same size n)
    and scores the n sub-networks that take the j-th op of every permutation (one call of
    ``ctx.evaluate`` per round). ``centred``: each score minus its round's mean (every op of a pool is
    in every round once, so this removes what the rounds share and nothing that tells ops apart)."""
    accs: dict[EdgeKey, dict[str, list[float]]] = {k: {o: [] for o in p} for k, p in pools.items()}
    sizes = {len(p) for p in pools.values()}
    if len(sizes) != 1:
        raise ValueError(f"edges hold different numbers of candidate ops {sorted(sizes)}; cannot sample")
    n = sizes.pop()
    for r in range(rounds):
        perms = {k: ctx.rng.sample(p, len(p)) for k, p in pools.items()}
        sels = [_selection(ctx, {k: perms[k][j] for k in pools}) for j in range(n)]
        ys = ctx.evaluate(sels)
        mean = sum(ys) / len(ys)
        for j, y in enumerate(ys):
            ctx.log(f"  round {r + 1}/{rounds} sub-network {j + 1}/{n}: score {y:.4f}")
            for k in pools:
                accs[k][perms[k][j]].append(y - mean if centred else y)
    return accs


def pooled_estimates(samples: dict[EdgeKey, dict[str, list[float]]]) -> dict[EdgeKey, dict[str, float]]:
    """Per edge and op, its mean score shrunk towards the mean of the same op over the edges of its cell
    type, by how much the edges really differ (empirical Bayes, James-Stein style) [D].

    With y_eo the mean of the n_eo (round-centred) scores credited to op o on edge e, m_co the mean of
    y_eo over the edges e of cell type c where o was sampled, s2 the variance of all those scores (the
    noise of one score, other edges' ops included) and tau2_co = max(0, var_e(y_eo) - mean_e(s2 / n_eo))
    the part of the spread between edges that the noise does not explain::

        theta_eo = m_co + w_eo (y_eo - m_co),     w_eo = tau2_co / (tau2_co + s2 / n_eo)

    A sub-network's score mixes the ops of all its edges, so one edge's own effect is measured with
    little power; where the edges do not differ beyond that noise (tau2 = 0), each op gets what it
    scored over all the edges of the cell type.
    """
    flat = [v for per in samples.values() for vs in per.values() for v in vs]
    if len(flat) < 2:
        return {k: {o: (sum(v) / len(v) if v else 0.0) for o, v in per.items()} for k, per in samples.items()}
    mu = sum(flat) / len(flat)
    s2 = sum((v - mu) ** 2 for v in flat) / (len(flat) - 1)
    means = {k: {o: sum(v) / len(v) for o, v in per.items() if v} for k, per in samples.items()}
    out: dict[EdgeKey, dict[str, float]] = {k: {} for k in samples}
    for cell in {k[0] for k in samples}:
        ops = {o for k, per in means.items() if k[0] == cell for o in per}
        for o in ops:
            keys = [k for k in means if k[0] == cell and o in means[k]]
            ys = [means[k][o] for k in keys]
            m = sum(ys) / len(ys)
            noise = [s2 / len(samples[k][o]) for k in keys]
            spread = sum((y - m) ** 2 for y in ys) / (len(ys) - 1) if len(ys) > 1 else 0.0
            tau2 = max(0.0, spread - sum(noise) / len(noise))
            for k, y, nv in zip(keys, ys, noise, strict=True):
                w = tau2 / (tau2 + nv) if tau2 + nv > 0 else 0.0
                out[k][o] = m + w * (y - m)
    return out


@REDUCTIONS.register("performance")
class PerformanceReduction(ReductionStrategy):
    """The paper's performance-based strategy (see the module docstring)."""

    name = "performance"
    samples = True

    def __init__(self, cfg: ReductionConfig) -> None:
        super().__init__(cfg)
        self.S: dict[str, dict[str, float]] = {}  # "cell_type/edge" -> op -> running likelihood

    def choose_drops(self, ctx: ReductionContext) -> list[Drop]:
        small, large = {}, {}
        for t, e in _edges(ctx):
            small[(t, e)], large[(t, e)] = split_by_alpha(
                ctx.edge_ops[t][e], ctx.probs[t][e], self.cfg.min_pool
            )
        pooled = self.cfg.estimate == "pooled"
        accs = _sample_rounds(ctx, small, self.cfg.rounds, centred=pooled)
        estimates = pooled_estimates(accs) if pooled else None
        drops = []
        for t, e in _edges(ctx):
            key = f"{t}/{e}"
            if estimates is not None:
                mean_acc = estimates[(t, e)]
            else:
                mean_acc = {o: sum(v) / len(v) for o, v in accs[(t, e)].items()}
            S = performance_likelihood(
                small[(t, e)], large[(t, e)], mean_acc, self.S.get(key, {}), self.cfg.temperature
            )
            self.S[key] = S
            drops.append(drop_for(t, e, S, ctx.edge_ops[t][e]))
        return drops

    def state_dict(self) -> dict[str, Any]:
        return {"S": self.S}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.S = {k: dict(v) for k, v in state.get("S", {}).items()}


@REDUCTIONS.register("alpha")
class AlphaReduction(ReductionStrategy):
    """Drop the lowest-softmax(alpha) op on every edge; no sampling."""

    name = "alpha"

    def choose_drops(self, ctx: ReductionContext) -> list[Drop]:
        drops = []
        for t, e in _edges(ctx):
            scores = dict(zip(ctx.edge_ops[t][e], ctx.probs[t][e], strict=True))
            drops.append(drop_for(t, e, scores, ctx.edge_ops[t][e]))
        return drops


@REDUCTIONS.register("none")
class NoReduction(ReductionStrategy):
    """Plain PC-DARTS: the space never shrinks."""

    name = "none"
    reduces = False

    def choose_drops(self, ctx: ReductionContext) -> list[Drop]:
        return []


@REDUCTIONS.register("ucb")
class UcbReduction(ReductionStrategy):
    """Upper-confidence-bound sampling and scoring over all remaining ops (journal version) [D]."""

    name = "ucb"
    samples = True

    def __init__(self, cfg: ReductionConfig) -> None:
        super().__init__(cfg)
        self.sums: dict[str, dict[str, float]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.total = 0

    def bound(self, key: str, op: str, pending: int = 0, pending_total: int = 0) -> float:
        """``ybar_o + c sqrt(2 ln N / n_o)`` on edge ``key`` with ``pending`` draws of ``op`` (and
        ``pending_total`` sub-networks in all) counted as scored; infinite for an op never scored."""
        n = self.counts.get(key, {}).get(op, 0) + pending
        if n == 0:
            return math.inf
        mean = self.sums[key][op] / self.counts[key][op] if self.counts.get(key, {}).get(op) else 0.0
        big_n = max(self.total + pending_total, 1)
        return mean + self.cfg.ucb_c * math.sqrt(2 * math.log(big_n) / n)

    def _draw(self, ctx: ReductionContext, slots: int) -> list[dict[EdgeKey, str]]:
        """``slots`` sub-networks: slot by slot, every edge takes its highest-bound op (ties at random),
        the draw's earlier slots counted as pending."""
        picks: list[dict[EdgeKey, str]] = [{} for _ in range(slots)]
        for t, e in _edges(ctx):
            key, names = f"{t}/{e}", ctx.edge_ops[t][e]
            pending = dict.fromkeys(names, 0)
            for j in range(slots):
                bounds = {o: self.bound(key, o, pending[o], j) for o in names}
                best = max(bounds.values())
                op = ctx.rng.choice([o for o in names if bounds[o] == best])
                pending[op] += 1
                picks[j][(t, e)] = op
        return picks

    def choose_drops(self, ctx: ReductionContext) -> list[Drop]:
        k = len(ctx.edge_ops["normal"][0])
        for r in range(self.cfg.rounds):
            picks = self._draw(ctx, k)
            ys = ctx.evaluate([_selection(ctx, p) for p in picks])
            for j, (p, y) in enumerate(zip(picks, ys, strict=True)):
                ctx.log(f"  round {r + 1}/{self.cfg.rounds} sub-network {j + 1}/{k}: score {y:.4f}")
                for (t, e), op in p.items():
                    key = f"{t}/{e}"
                    sums, counts = self.sums.setdefault(key, {}), self.counts.setdefault(key, {})
                    sums[op] = sums.get(op, 0.0) + y
                    counts[op] = counts.get(op, 0) + 1
            self.total += k
        drops = []
        for t, e in _edges(ctx):
            key, names = f"{t}/{e}", ctx.edge_ops[t][e]
            scores = {o: self.bound(key, o) for o in names}
            d = drop_for(t, e, scores, names)
            d.counts = {o: self.counts.get(key, {}).get(o, 0) for o in names}
            drops.append(d)
        return drops

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: dict(v) for k, v in state.get("sums", {}).items()}
        self.counts = {k: dict(v) for k, v in state.get("counts", {}).items()}
        self.total = int(state.get("total", 0))


def make_strategy(cfg: ReductionConfig) -> ReductionStrategy:
    return REDUCTIONS.get(cfg.strategy)(cfg)
