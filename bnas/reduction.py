"""Operation space reduction strategies, chosen by name from ``REDUCTIONS`` (method.md section 6).

After every stage of super-network training a strategy names, for every edge, the one operation to
remove. Strategies:

``performance`` (BNAS, Chen et al. AAAI 2020 [P], details [R]). On every edge split the k remaining
    operations by softmax(alpha) into the ceil(k/2) smallest (O_small) and the rest (O_large). For T
    rounds, draw on every edge a permutation of O_small, giving |O_small| sub-networks with one op
    per edge; train each for V epochs with the shared weights and measure its validation accuracy y;
    credit y to every op it used. Then per edge::

        ybar_o = mean over the T rounds of the accuracies credited to o          (o in O_small)
        s_o    = softmax_{O_small}(ybar_o / tau)
        s_o    = (max_{O_small} s + mean_{O_small} s) / 2                         (o in O_large)
        S_o   <- S_o / 2 + s_o                                                   (running likelihood)

    and remove the op with the smallest S_o.
``alpha``  drop the op with the smallest softmax(alpha) on every edge; no sampling [D baseline].
``none``   plain PC-DARTS: nothing is removed; the genotype is the argmax at the end [D baseline].
``ucb``    the journal version's upper confidence bound (IJCV 2021) [D]: every round samples all
    remaining ops (one permutation per edge), score_o = ybar_o + c * sqrt(2 ln N / n_o) with N the
    sub-networks evaluated so far and n_o the times o was sampled on that edge; drop the lowest.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    cell type and edge, softmax(alpha) over those ops as floats; ``evaluate`` trains a discrete
    sub-network for V epochs with the shared weights and returns its validation accuracy in [0, 1].
    """

    edge_ops: dict[str, list[list[str]]]
    probs: dict[str, list[list[float]]]
    evaluate: Callable[[Selection], float]
    rng: random.Random
    log: Callable[[str], None] = print


@dataclass
class Drop:
    """One removal: which op left which edge, with the scores that decided it."""

    cell_type: str
    edge: int
    op: str
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cell_type": self.cell_type, "edge": self.edge, "op": self.op, "scores": self.scores}


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


def split_by_alpha(names: list[str], probs: list[float]) -> tuple[list[str], list[str]]:
    """(O_small, O_large): the ceil(k/2) ops with the smallest softmax(alpha), and the rest."""
    order = sorted(range(len(names)), key=lambda i: (probs[i], i))
    n_small = math.ceil(len(names) / 2)
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


def _sample_rounds(
    ctx: ReductionContext,
    pools: dict[EdgeKey, list[str]],
    rounds: int,
) -> dict[EdgeKey, dict[str, list[float]]]:
    """T rounds; each draws a permutation of every edge's pool (all pools have the same size n)
    and evaluates the n sub-networks that take the j-th op of every permutation."""
    accs: dict[EdgeKey, dict[str, list[float]]] = {k: {o: [] for o in p} for k, p in pools.items()}
    sizes = {len(p) for p in pools.values()}
    if len(sizes) != 1:
        raise ValueError(f"edges hold different numbers of candidate ops {sorted(sizes)}; cannot sample")
    n = sizes.pop()
    for r in range(rounds):
        perms = {k: ctx.rng.sample(p, len(p)) for k, p in pools.items()}
        for j in range(n):
            sel = Selection(
                normal=[perms[("normal", e)][j] for e in range(len(ctx.edge_ops["normal"]))],
                reduce=[perms[("reduce", e)][j] for e in range(len(ctx.edge_ops["reduce"]))],
            )
            y = ctx.evaluate(sel)
            ctx.log(f"  round {r + 1}/{rounds} sub-network {j + 1}/{n}: val_acc {y:.4f}")
            for k in pools:
                accs[k][perms[k][j]].append(y)
    return accs


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
            small[(t, e)], large[(t, e)] = split_by_alpha(ctx.edge_ops[t][e], ctx.probs[t][e])
        accs = _sample_rounds(ctx, small, self.cfg.rounds)
        drops = []
        for t, e in _edges(ctx):
            key = f"{t}/{e}"
            mean_acc = {o: sum(v) / len(v) for o, v in accs[(t, e)].items()}
            S = performance_likelihood(
                small[(t, e)], large[(t, e)], mean_acc, self.S.get(key, {}), self.cfg.temperature
            )
            self.S[key] = S
            op = _argmin(S, ctx.edge_ops[t][e])
            drops.append(Drop(t, e, op, dict(S)))
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
            drops.append(Drop(t, e, _argmin(scores, ctx.edge_ops[t][e]), scores))
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
    """Upper-confidence-bound scoring over all remaining ops (journal version) [D]."""

    name = "ucb"
    samples = True

    def __init__(self, cfg: ReductionConfig) -> None:
        super().__init__(cfg)
        self.sums: dict[str, dict[str, float]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.total = 0

    def choose_drops(self, ctx: ReductionContext) -> list[Drop]:
        pools = {(t, e): list(ctx.edge_ops[t][e]) for t, e in _edges(ctx)}
        accs = _sample_rounds(ctx, pools, self.cfg.rounds)
        n_sub = self.cfg.rounds * len(next(iter(pools.values())))
        self.total += n_sub
        drops = []
        for t, e in _edges(ctx):
            key = f"{t}/{e}"
            sums, counts = self.sums.setdefault(key, {}), self.counts.setdefault(key, {})
            for o, v in accs[(t, e)].items():
                sums[o] = sums.get(o, 0.0) + sum(v)
                counts[o] = counts.get(o, 0) + len(v)
            scores = {
                o: sums[o] / counts[o] + self.cfg.ucb_c * math.sqrt(2 * math.log(self.total) / counts[o])
                for o in ctx.edge_ops[t][e]
            }
            drops.append(Drop(t, e, _argmin(scores, ctx.edge_ops[t][e]), scores))
        return drops

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: dict(v) for k, v in state.get("sums", {}).items()}
        self.counts = {k: dict(v) for k, v in state.get("counts", {}).items()}
        self.total = int(state.get("total", 0))


def make_strategy(cfg: ReductionConfig) -> ReductionStrategy:
    return REDUCTIONS.get(cfg.strategy)(cfg)
