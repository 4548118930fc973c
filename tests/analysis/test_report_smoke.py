"""The report of the real smoke study (run.py + Ray + Optuna + MLflow), checked against its store.

Reuses the platform tests' session fixture ``smoke_study`` (one smoke study per pytest session,
registered in tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from report_checks import assert_report_consistent

from analysis.loader import load_study
from analysis.report import build_report

pytestmark = [pytest.mark.slow, pytest.mark.platform]  # runs the smoke study on Ray


@pytest.fixture(scope="module")
def smoke(smoke_study):
    return smoke_study


def test_smoke_study_report(smoke, tmp_path: Path) -> None:
    study = smoke.experiment_name.split("/", 1)[1]
    rep = build_report(study, smoke.tracking_uri, smoke.out_dir, tmp_path / "report", log=None)
    data = load_study(study, smoke.tracking_uri, smoke.out_dir)
    assert_report_consistent(rep, data)
    search = data.search
    assert len(search) >= 1 and (search["state"] == "complete").any()
    # Every complete search run has its genotype drawn by the platform with the same bnas.visualize.
    for rid in search.loc[search["state"] == "complete", "run_id"]:
        names = {a.path for a in data.client.list_artifacts(rid, "cells")}
        assert names == {"cells/normal.png", "cells/reduce.png"}
    # Retraining runs link back to search runs of this study.
    linked = data.retrain["search_run_id"].dropna()
    assert set(linked) <= set(search["run_id"])
    expected = {
        "pareto",
        "search_curves",
        "search_cost",
        "best_normal_cell",
        "best_reduce_cell",
        "reduction_history_normal",
        "reduction_history_reduce",
        "optuna_history",
        "retrain_curves",
    }
    assert expected <= set(rep.pictures)
    # The dataset in the header, and Optuna's trial numbers mapped to Tune trial ids (MLflow run names).
    html = rep.html.read_text()
    assert "dataset: cifar10" in html and "16x16 px, 10 classes" in html
    mapped = rep.frames["optuna_trials"].set_index("number")["tune_trial_id"]
    assert mapped.notna().all() and set(mapped) == set(search["trial_id"])
    runs = search.set_index("trial_id")
    otrials = rep.frames["optuna_trials"].set_index("number")
    for number, trial_id in mapped.items():
        sampled = runs.loc[trial_id, "param.space.binarization.method"]
        assert str(otrials.loc[number, "param.binarization.method"]) == sampled
    assert "degenerate_cells" in rep.frames["leaderboard"]
