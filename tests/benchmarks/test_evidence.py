"""The evidence protocol (benchmarks/evidence.py): its statistics against scipy on fixed numbers, and
the tiny profile end to end on generated data."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
PNG = b"\x89PNG\r\n\x1a\n"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


st = _load("evidence_stats")


def test_statistics_on_fixed_numbers_are_scipys() -> None:
    from scipy import stats

    derived = [0.331, 0.342, 0.318, 0.356, 0.349, 0.327]
    rand = [0.301, 0.322, 0.315, 0.298, 0.335, 0.309, 0.327, 0.312, 0.304, 0.319]
    mw = st.mann_whitney(derived, rand)
    ref = stats.mannwhitneyu(derived, rand, alternative="greater")
    assert (mw["U"], mw["p"]) == (ref.statistic, ref.pvalue)
    assert mw["prob_a_beats_b"] == ref.statistic / 60
    assert mw["p"] < 0.05  # these derived ones do beat these random ones
    assert st.percentiles([0.331], rand) == [stats.percentileofscore(rand, 0.331, kind="mean")] == [90.0]
    tau = st.rank_agreement(derived, [0.30, 0.34, 0.31, 0.36, 0.33, 0.32])
    ref_tau = stats.kendalltau(derived, [0.30, 0.34, 0.31, 0.36, 0.33, 0.32])
    assert (tau["tau"], tau["p"], tau["n"]) == (
        pytest.approx(ref_tau.statistic),
        pytest.approx(ref_tau.pvalue),
        6,
    )
    b = st.bootstrap_diff(derived, rand)
    assert b["diff"] == pytest.approx(sum(derived) / 6 - sum(rand) / 10)
    assert b["low"] < b["diff"] < b["high"] and b["low"] > 0  # an interval that excludes 0
    assert st.bootstrap_diff(derived, rand) == b  # seeded: the same interval every time


def test_variance_components_by_hand() -> None:
    # Three architectures, two seeds: means 0.31, 0.34, 0.295; within-arch variance
    # (0.0002 + 0.0002 + 0.00045) / 3 = 0.000283; MS_between = 2 * var(means) = 0.00105.
    vc = st.variance_components({"a": [0.30, 0.32], "b": [0.35, 0.33], "c": [0.28, 0.31]})
    assert vc["sigma_seed"] == pytest.approx(math.sqrt((0.0002 + 0.0002 + 0.00045) / 3))
    assert vc["sigma_arch"] == pytest.approx(math.sqrt((0.00105 - 0.00085 / 3) / 2))
    assert st.variance_components({"a": [0.3, 0.3], "b": [0.3, 0.3]})["sigma_arch"] == 0.0
    with pytest.raises(ValueError, match="same >= 2 seeds"):
        st.variance_components({"a": [0.3], "b": [0.3, 0.2]})


def test_minimum_detectable_effect_shrinks_with_more_architectures() -> None:
    from scipy.stats import norm

    d = st.minimum_detectable_effect(6, 16, 0.01, rank_test=False)
    assert d == pytest.approx((norm.ppf(0.95) + norm.ppf(0.8)) * 0.01 * math.sqrt(1 / 6 + 1 / 16))
    assert st.minimum_detectable_effect(6, 16, 0.01) == pytest.approx(d / math.sqrt(3 / math.pi))
    assert st.minimum_detectable_effect(24, 64, 0.01) < st.minimum_detectable_effect(6, 16, 0.01)


@pytest.mark.slow
def test_tiny_profile_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "evidence"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "evidence.py"), "--profile", "tiny", "--fake", "--jobs", "0",
         "--out", str(out)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["commit"] and "evidence.py --profile tiny" in res["meta"]["command"]
    assert res["meta"]["wall_s"] > 0 and res["meta"]["machine"]
    # 3 seeds x 2 schedules searched; 4 + 1 random, 6 derived and 3 reference architectures retrained
    # with 2 seeds each, the 4 proxy-check ones also at 2x the epochs.
    assert sorted({(s["schedule"], s["seed"]) for s in res["searches"]}) == [
        (n, s) for n in ("bnas", "pcdarts") for s in (0, 1, 2)
    ]
    groups = [a["group"] for a in res["architectures"]]
    assert (groups.count("random"), groups.count("derived/bnas"), groups.count("reference")) == (5, 3, 3)
    assert sum(r["budget"] == "long" for r in res["retrain_runs"]) == 4
    assert all(len(a["accs"]) == 2 for a in res["architectures"])
    s = res["stats"]
    for key in ("bnas_vs_random", "pcdarts_vs_random", "bnas_vs_pcdarts"):
        assert {"U", "p", "prob_a_beats_b", "bootstrap", "mde"} <= set(s[key]) and 0 <= s[key]["p"] <= 1
    assert {"tau", "p", "sigma_arch", "sigma_seed", "can_rank"} <= set(s["proxy_check"])
    assert {
        "bnas_proxy_val_acc_tau",
        "bnas_derived_val_acc_tau",
        "bnas_agreement",
        "bnas_param_free",
        "random_param_free",
    } <= set(s)
    assert all(
        0 <= a["percentile_among_random"] <= 100
        for a in res["architectures"]
        if a["group"].startswith("derived")
    )
    assert set(res["conclusion"]) == {"proxy", "bnas_vs_random", "pcdarts_vs_random", "bnas_vs_pcdarts"}
    md = (out / "results.md").read_text()
    assert "## Conclusions" in md and "minimum detectable effect" in md or "beat" in md
    assert (out / "accuracy_by_group.png").read_bytes()[:8] == PNG
