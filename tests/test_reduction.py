"""Reduction strategies, the performance strategy checked against numbers worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

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

    def evaluate(sel: Selection) -> float:
        if log is not None:
            log.append((sel.normal[0], sel.reduce[0]))
        return acc[sel.normal[0]]

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
    strat = make_strategy(ReductionConfig(strategy=name, rounds=1))
    strat.choose_drops(ctx_for({"a": 0.1, "b": 0.5, "c": 0.6, "d": 0.7}))
    again = make_strategy(ReductionConfig(strategy=name, rounds=1))
    again.load_state_dict(strat.state_dict())
    assert again.state_dict() == strat.state_dict()
