"""Reduction strategies, the performance strategy checked against numbers worked out by hand."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch

from bnas.config import ReductionConfig
from bnas.reduction import (
    REDUCTIONS,
    ReductionContext,
    make_strategy,
    performance_likelihood,
    split_by_alpha,
)
from bnas.supernet import Selection

OPS = ["a", "b", "c", "d"]
PROBS = [0.1, 0.4, 0.2, 0.3]  # softmax(alpha): a < c < d < b


def ctx_for(acc: dict[str, float], log: list | None = None) -> ReductionContext:
    """One normal edge and one reduce edge with the same ops; a sub-network's accuracy is the
    table value of the op on its normal edge."""

    def evaluate(sels: list[Selection]) -> list[float]:
        if log is not None:
            log.extend((sel.normal[0], sel.reduce[0]) for sel in sels)
        return [acc[sel.normal[0]] for sel in sels]

    return ReductionContext(
        edge_ops={"normal": [list(OPS)], "reduce": [list(OPS)]},
        probs={"normal": [list(PROBS)], "reduce": [list(PROBS)]},
        evaluate=evaluate,
        rng=random.Random(0),
        log=lambda s: None,
    )


def test_split_by_alpha_takes_the_smaller_half_rounded_up() -> None:
    assert split_by_alpha(OPS, PROBS) == (["a", "c"], ["d", "b"])
    assert split_by_alpha(["x", "y", "z"], [0.5, 0.2, 0.3]) == (["y", "z"], ["x"])
    assert split_by_alpha(["x"], [1.0]) == (["x"], [])


def test_performance_likelihood_by_hand() -> None:
    # tau = 0.1; ybar_a = 0.5, ybar_c = 0.6 -> s_a = 1/(1+e), s_c = e/(1+e)
    s_a, s_c = 1 / (1 + math.e), math.e / (1 + math.e)
    s_large = 0.5 * (s_c + 0.5)  # (max + mean)/2, the mean of two softmax values is 1/2
    S = performance_likelihood(
        ["a", "c"], ["d", "b"], {"a": 0.5, "c": 0.6}, {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0}, tau=0.1
    )
    assert S["a"] == pytest.approx(0.5 + s_a)  # 0.768941
    assert S["c"] == pytest.approx(s_c)  # 0.731059
    assert S["b"] == pytest.approx(s_large)  # 0.615529
    assert S["d"] == pytest.approx(0.5 + s_large)  # 1.115529
    assert S["b"] == pytest.approx(0.6155294, abs=1e-6)


def test_performance_strategy_drops_what_the_formulas_say() -> None:
    cfg = ReductionConfig(strategy="performance", rounds=3, temperature=0.1)
    strat = make_strategy(cfg)
    # Running likelihoods from an earlier stage: a was strong, d too.
    strat.S = {
        "normal/0": {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0},
        "reduce/0": {"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0},
    }
    calls: list = []
    drops = strat.choose_drops(ctx_for({"a": 0.5, "c": 0.6, "b": 0.9, "d": 0.9}, calls))
    # T = 3 rounds x |O_small| = 2 sub-networks; only O_small ops (a, c) are ever sampled, each once a round.
    assert len(calls) == 6
    assert {c[0] for c in calls} == {"a", "c"} and {c[1] for c in calls} == {"a", "c"}
    for r in range(3):
        assert sorted(c[0] for c in calls[2 * r : 2 * r + 2]) == ["a", "c"]
    by_cell = {d.cell_type: d for d in drops}
    # Normal edge: S = a 0.7689, b 0.6155, c 0.7311, d 1.1155 -> b goes although it was never sampled.
    assert by_cell["normal"].op == "b"
    assert by_cell["normal"].scores["b"] == pytest.approx(0.6155294, abs=1e-6)
    # Reduce edge: the accuracies credited there depend on the normal edge's op, so its own
    # sub-network accuracies are the mean over the pairings; with S_prev a = c = 0 the lower mean loses.
    red = by_cell["reduce"]
    assert red.op in ("a", "c") and red.scores[red.op] == min(red.scores.values())
    # The running likelihood is kept for the next stage.
    assert strat.S["normal/0"]["b"] == pytest.approx(0.6155294, abs=1e-6)


def test_performance_strategy_with_a_table_that_is_the_same_on_both_edges() -> None:
    strat = make_strategy(ReductionConfig(strategy="performance", rounds=2, temperature=0.1))
    drops = strat.choose_drops(ctx_for({"a": 0.2, "c": 0.6}))
    # First stage (S = 0): S_a = s_a = 1/(1+e^4) is the smallest on the normal edge.
    normal = next(d for d in drops if d.cell_type == "normal")
    assert normal.op == "a"
    assert normal.scores["a"] == pytest.approx(1 / (1 + math.exp(4)))


def test_alpha_strategy_drops_the_lowest_probability_and_samples_nothing() -> None:
    calls: list = []
    drops = make_strategy(ReductionConfig(strategy="alpha")).choose_drops(ctx_for({}, calls))
    assert [d.op for d in drops] == ["a", "a"] and calls == []


def test_none_strategy_drops_nothing() -> None:
    strat = make_strategy(ReductionConfig(strategy="none"))
    assert not strat.reduces and strat.choose_drops(ctx_for({})) == []


def test_ucb_strategy_samples_every_op_and_uses_the_bonus() -> None:
    calls: list = []
    strat = make_strategy(ReductionConfig(strategy="ucb", rounds=1, ucb_c=1.0))
    drops = strat.choose_drops(ctx_for({"a": 0.1, "b": 0.5, "c": 0.6, "d": 0.7}, calls))
    assert sorted(c[0] for c in calls) == OPS  # one round, a permutation of all 4 ops
    normal = next(d for d in drops if d.cell_type == "normal")
    bonus = math.sqrt(2 * math.log(4) / 1)
    assert normal.op == "a" and normal.scores["a"] == pytest.approx(0.1 + bonus)


@pytest.mark.parametrize("name", REDUCTIONS.names())
def test_every_strategy_state_round_trips(name: str) -> None:
    """A strategy restored from its checkpointed state makes the original's next decision.

    A stateless strategy (empty state) must really be stateless: a fresh one decides exactly like one
    that has run a stage. A stateful one must need its state: a fresh one decides differently (scores
    included) on the second stage, so the restored one's agreement with the original is no accident.
    """
    cfg = ReductionConfig(strategy=name, rounds=2)
    first = ctx_for({"a": 0.1, "b": 0.5, "c": 0.6, "d": 0.7})
    strat = make_strategy(cfg)
    drops = strat.choose_drops(first)
    assert len(drops) == (2 if strat.reduces else 0)  # one per edge
    stateless = strat.state_dict() == {}
    second = _next_stage(first, drops)
    # Through the checkpoint's serialisation: torch.save, read back with weights_only (plain data only).
    buf = io.BytesIO()
    torch.save({"strategy": strat.state_dict()}, buf)
    buf.seek(0)
    restored = make_strategy(cfg)
    restored.load_state_dict(torch.load(buf, weights_only=True)["strategy"])
    assert restored.state_dict() == strat.state_dict()
    fresh = make_strategy(cfg)

    decisions = {
        k: _decide(s, second) for k, s in (("fresh", fresh), ("restored", restored), ("original", strat))
    }
    assert decisions["restored"] == decisions["original"]
    assert restored.state_dict() == strat.state_dict()  # and both carry the same state into stage 3
    if stateless:
        assert decisions["fresh"] == decisions["original"]  # stateless: a stage leaves nothing behind
    else:
        assert decisions["fresh"] != decisions["original"]  # the state decides
    if strat.reduces:  # a real decision: one op per edge, among those left
        assert [(d["cell_type"], d["edge"]) for d in decisions["original"]] == [("normal", 0), ("reduce", 0)]
        assert all(d["op"] in second.edge_ops[d["cell_type"]][d["edge"]] for d in decisions["original"])
    else:
        assert decisions["original"] == []


def _next_stage(ctx: ReductionContext, drops: list) -> ReductionContext:
    """The next stage's context: the dropped ops gone, the others' probabilities renormalised."""
    edge_ops: dict[str, list[list[str]]] = {}
    probs: dict[str, list[list[float]]] = {}
    for t in ctx.edge_ops:
        edge_ops[t], probs[t] = [], []
        for e, (names, p) in enumerate(zip(ctx.edge_ops[t], ctx.probs[t], strict=True)):
            gone = {d.op for d in drops if (d.cell_type, d.edge) == (t, e)}
            kept = [(o, q) for o, q in zip(names, p, strict=True) if o not in gone]
            edge_ops[t].append([o for o, _ in kept])
            probs[t].append([q / sum(q for _, q in kept) for _, q in kept])
    return ReductionContext(edge_ops, probs, ctx.evaluate, random.Random(1), ctx.log)


def _decide(strat, ctx: ReductionContext) -> list[dict]:
    """``strat``'s drops for ``ctx``, with the same random draws for every strategy object."""
    ctx = ReductionContext(ctx.edge_ops, ctx.probs, ctx.evaluate, random.Random(1), ctx.log)
    return [d.to_dict() for d in strat.choose_drops(ctx)]


def _two_op_ctx(names: list[str], probs: list[float], acc: dict[str, float]) -> ReductionContext:
    def evaluate(sels: list[Selection]) -> list[float]:
        return [acc[s.normal[0]] for s in sels]

    return ReductionContext(
        edge_ops={"normal": [list(names)], "reduce": [list(names)]},
        probs={"normal": [list(probs)], "reduce": [list(probs)]},
        evaluate=evaluate,
        rng=random.Random(0),
        log=lambda s: None,
    )


def test_split_by_alpha_min_pool_measures_both_of_the_last_two_ops() -> None:
    assert split_by_alpha(["x", "y"], [0.4, 0.6]) == (["x"], ["y"])
    assert split_by_alpha(["x", "y"], [0.4, 0.6], min_pool=2) == (["x", "y"], [])
    assert split_by_alpha(OPS, PROBS, min_pool=3) == (["a", "c", "d"], ["b"])
    assert split_by_alpha(["x"], [1.0], min_pool=2) == (["x"], [])


@pytest.mark.parametrize("min_pool,dropped", [(1, "x"), (2, "y")])
def test_the_last_stage_is_measured_only_with_min_pool_2(min_pool: int, dropped: str) -> None:
    # x scores far better than y, but the running likelihood from earlier stages favours y.
    strat = make_strategy(
        ReductionConfig(strategy="performance", rounds=2, temperature=0.05, min_pool=min_pool)
    )
    strat.S = {"normal/0": {"x": 0.0, "y": 1.0}, "reduce/0": {"x": 0.0, "y": 1.0}}
    drops = strat.choose_drops(_two_op_ctx(["x", "y"], [0.4, 0.6], {"x": 0.9, "y": 0.1}))
    # min_pool 1: O_small = [x], s_x = 1 and O_large's s_y = (1 + 1) / 2 = 1, so S_x = 1 < S_y = 1.5 and
    # the better op goes; min_pool 2: s_x ~ 1, s_y ~ 0, S_x ~ 1 > S_y ~ 0.5. (A sub-network's score is
    # its normal edge's table value: the reduce edge's credits mix both ops.)
    assert next(d for d in drops if d.cell_type == "normal").op == dropped


@pytest.mark.parametrize("name", ["performance", "alpha", "ucb"])
def test_no_strategy_leaves_none_alone_on_an_edge(name: str) -> None:
    # `none` scores best and is alpha's favourite: every strategy would drop the other op.
    ctx = _two_op_ctx(["none", "skip_connect"], [0.7, 0.3], {"none": 0.9, "skip_connect": 0.1})
    drops = make_strategy(ReductionConfig(strategy=name, rounds=2, min_pool=2)).choose_drops(ctx)
    assert [d.op for d in drops] == ["none", "none"]  # whatever each edge chose, `none` went
    normal = next(d for d in drops if d.cell_type == "normal")  # (scored by its own op alone)
    assert normal.instead_of == "skip_connect" and normal.to_dict()["instead_of"] == "skip_connect"


def test_ucb_draws_promising_ops_more_often() -> None:
    calls: list = []
    strat = make_strategy(ReductionConfig(strategy="ucb", rounds=6, ucb_c=0.1))
    drops = strat.choose_drops(ctx_for({"a": 0.1, "b": 0.5, "c": 0.6, "d": 0.9}, calls))
    assert len(calls) == 6 * 4  # rounds x ops left
    counts = next(d for d in drops if d.cell_type == "normal").counts
    assert sum(counts.values()) == 24 and min(counts.values()) >= 1  # every op measured at least once
    assert counts["d"] > counts["a"]  # unequal: the best op is measured more than the worst
    assert strat.counts["normal/0"] == counts and strat.total == 24
    # The drop is the lowest bound: the worst op, measured least.
    assert next(d for d in drops if d.cell_type == "normal").op == "a"


def test_pooled_estimates_by_hand() -> None:
    from bnas.reduction import pooled_estimates

    # Two edges, one op: means 0.2 and -0.2; s2 = var(0.3, 0.1, -0.1, -0.3) = 0.2/3; noise per mean
    # s2/2; spread between edges 0.08; tau2 = 0.08 - 0.1/3; w = tau2 / (tau2 + 0.1/3) = 0.58333.
    est = pooled_estimates({("normal", 0): {"a": [0.3, 0.1]}, ("normal", 1): {"a": [-0.1, -0.3]}})
    tau2 = 0.08 - 0.1 / 3
    w = tau2 / (tau2 + 0.1 / 3)
    assert est[("normal", 0)]["a"] == pytest.approx(0.2 * w) and est[("normal", 1)]["a"] == pytest.approx(
        -0.2 * w
    )
    # Edges that do not differ beyond the noise: every edge gets the op's mean over the cell type.
    same = pooled_estimates({("normal", e): {"a": [0.5, -0.3], "b": [-0.5, 0.3]} for e in range(3)})
    assert all(v == {"a": pytest.approx(0.1), "b": pytest.approx(-0.1)} for v in same.values())
    # Cell types are pooled apart.
    apart = pooled_estimates({("normal", 0): {"a": [1.0, 1.0]}, ("reduce", 0): {"a": [-1.0, -1.0]}})
    assert apart[("normal", 0)]["a"] == 1.0 and apart[("reduce", 0)]["a"] == -1.0


def test_pooled_performance_strategy_decides_by_the_op_over_all_edges() -> None:
    # On the normal edge `a` beats `c`; on the reduce edge, the scores credited to its ops are the
    # normal edge's values, mixed. Pooling within a cell type leaves the normal edge's decision as is.
    strat = make_strategy(
        ReductionConfig(strategy="performance", rounds=4, temperature=0.1, estimate="pooled")
    )
    drops = strat.choose_drops(ctx_for({"a": 0.6, "c": 0.2}))
    assert next(d for d in drops if d.cell_type == "normal").op == "c"
