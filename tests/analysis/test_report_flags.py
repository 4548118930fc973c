"""The report's warnings about what its figures mean: accuracies at chance, degenerate cells, and which
Tune trial each Optuna trial number is. Plain data, no store."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.tables import degenerate_cells, match_optuna_trials
from bnas.genotype import GENOTYPES, Genotype
from bnas.platform.leaderboard import chance_margin, leaderboard, near_chance


def test_chance_margin_is_two_standard_errors_of_guessing_or_of_the_seeds() -> None:
    chance, margin = chance_margin(10, 1000)
    assert chance == 0.1 and margin == pytest.approx(2 * math.sqrt(0.09 / 1000))  # 0.019
    assert chance_margin(10, 1000, seed_std=0.05)[1] == pytest.approx(0.1)  # the seeds spread more
    assert near_chance(0.1000000034, 10, 200) and near_chance(0.11, 10, 1000)
    assert not near_chance(0.34, 10, 1000, seed_std=0.01)
    assert not near_chance(0.34, None, 1000)  # class count unknown: no claim either way
    assert not near_chance(math.nan, 10, 1000)


def _search(run: str, digest: str, val: float) -> dict:
    return {
        "run_id": run,
        "kind": "search",
        "state": "complete",
        "genotype_digest": digest,
        "derived_val_acc": val,
        "param.data.train_subset": 512,
        "param.data.val_fraction": 0.5,
        "param.binarization.method": "xnor",
        "packed_bytes": 1000.0,
        "trial_id": run,
    }


def _retrain(run: str, search: str, digest: str, seed: int, acc: float) -> dict:
    return {
        "run_id": run,
        "kind": "retrain",
        "state": "complete",
        "genotype_digest": digest,
        "search_run_id": search,
        "seed": seed,
        "test_acc": acc,
        "param.data.test_subset": 1000,
        "param.binarization.method": "xnor",
    }


def test_rows_at_chance_are_flagged_and_not_ranked_above_real_ones() -> None:
    """The issue's case: 0.10000000335 vs 0.10000000056 ranked as if they differed."""
    records = [
        _search("s1", "aaa", 0.26),
        _search("s2", "bbb", 0.22),
        _search("s3", "ccc", 0.19),
        _retrain("r1", "s1", "aaa", 0, 0.10000000335),
        _retrain("r2", "s1", "aaa", 1, 0.10000000335),
        _retrain("r3", "s2", "bbb", 0, 0.348),
        _retrain("r4", "s2", "bbb", 1, 0.335),
    ]
    rows = leaderboard(records, num_classes=10)
    # ccc was never retrained, but its derived_val_acc (0.19 on 256 images) is told apart from chance;
    # aaa's retrainings are not: it goes last.
    assert [r["genotype_digest"] for r in rows] == ["bbb", "ccc", "aaa"]
    flags = {r["genotype_digest"]: (r["test_near_chance"], r["val_near_chance"]) for r in rows}
    assert flags["bbb"] == (False, False) and flags["aaa"][0] is True
    # Without the class count nothing is flagged and the order is the plain one.
    plain = leaderboard(records)
    assert not any(r["test_near_chance"] or r["val_near_chance"] for r in plain)


def test_degenerate_cells_are_flagged() -> None:
    assert degenerate_cells(GENOTYPES.get("bnas_xnor")) == ""
    d = GENOTYPES.get("bnas_xnor").to_dict()
    d["normal"] = [["max_pool_3x3", e[1]] for e in d["normal"]]
    d["normal"][0][0] = "skip_connect"  # 7 of 8 edges max_pool_3x3, as in the issue
    flag = degenerate_cells(Genotype.from_dict(d))
    assert flag == f"normal: {len(d['normal']) - 1}/{len(d['normal'])} max_pool_3x3"
    # Mixed parameter-free ops collapse a cell too (the 6/8 pooling/skip cells).
    d["normal"] = [
        ["skip_connect", 0],
        ["avg_pool_3x3", 1],
        ["max_pool_3x3", 0],
        ["skip_connect", 1],
        ["avg_pool_3x3", 2],
        ["max_pool_3x3", 3],
        ["sep_conv_3x3", 0],
        ["dil_conv_3x3", 4],
    ]
    assert degenerate_cells(Genotype.from_dict(d)) == "normal: 6/8 parameter-free"
    assert degenerate_cells(Genotype.from_dict(d), share=0.8) == ""


def test_optuna_trial_numbers_map_to_tune_trial_ids_by_their_sampled_values() -> None:
    optuna_trials = pd.DataFrame(
        {
            "number": [0, 1, 2],
            "state": ["COMPLETE", "PRUNED", "COMPLETE"],
            "param.binarization.method": ["xnor", "pcnn", "xnor"],
            "param.search.lr": [0.02, 0.03, 0.04],
            "param.binarization.pcnn_lambda": [math.nan, 1e-4, math.nan],
            "param.search.sampling_k": [2, 4, 2],
        }
    )
    runs = pd.DataFrame(
        {
            "kind": ["search"] * 3,
            "trial_id": ["t_b", "t_a", "t_c"],
            "start_time": [2, 1, 3],
            "param.space.binarization.method": ["pcnn", "xnor", "xnor"],
            "param.space.search.lr": [0.03, 0.02, 0.04],
            "param.space.binarization.pcnn_lambda": [1e-4, math.nan, math.nan],
            "param.space.search.sampling_k": [4.0, 2.0, 2.0],  # a frame column with NaN elsewhere: floats
        }
    )
    assert match_optuna_trials(optuna_trials, runs).tolist() == ["t_a", "t_b", "t_c"]
    assert match_optuna_trials(optuna_trials, runs.iloc[:0]).isna().all()


def test_pareto_plot_shows_float_noise_as_flat() -> None:
    """0.10000000335 vs 0.10000000056 drew a 1e-9 axis with a "+1e-1" offset: now a plain 0.02 span."""
    from analysis.plots import plot_pareto

    pts = pd.DataFrame(
        {
            "label": ["a", "b"],
            "packed_bytes": [19000, 19500],
            "acc": [0.10000000335, 0.10000000056],
            "acc_std": [math.nan, math.nan],
            "category": ["search", "search"],
            "pareto": [True, False],
        }
    )
    ax = plot_pareto(pts).axes[0]
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.02 - 1e-12 and ax.yaxis.get_major_formatter().get_offset() == ""
