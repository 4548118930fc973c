"""The searcher's Optuna bookkeeping and the tracker's no-duplicates rule, on real Optuna and MLflow
stores in a temporary folder (no Ray cluster needed)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from bnas.platform.searcher import StudySearcher, fail_stale_trials, optuna_storage
from bnas.platform.study import load_study
from bnas.platform.tracking import StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import SEARCH, State


def _searcher(tmp_path: Path, metric, mode) -> StudySearcher:
    spec = load_study("bnas_smoke")
    return StudySearcher(
        space=spec.space.sample,
        metric=metric,
        mode=mode,
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="unit",
        storage=optuna_storage(tmp_path),
    )


def test_trial_states_reach_optuna_truthfully(tmp_path: Path) -> None:
    s = _searcher(tmp_path, "derived_val_acc", "max")
    for tid in ("done", "stopped", "broken", "nan"):
        config = s.suggest(tid)
        assert ("binarization.pcnn_lambda" in config) == (config["binarization.method"] == "pcnn")
    for tid in ("done", "stopped"):
        s.on_trial_result(tid, {"val_acc": 0.1, "epoch": 1, "derived_val_acc": float("nan"), "final": False})
    s.on_trial_complete("done", {"final": True, "derived_val_acc": 0.3, "val_acc": 0.2, "epoch": 6})
    # Stopped by the scheduler after epoch 2: that last result never went through on_trial_result.
    s.on_trial_complete(
        "stopped", {"final": False, "derived_val_acc": float("nan"), "val_acc": 0.05, "epoch": 2}
    )
    s.on_trial_complete("broken", error=True)
    s.on_trial_complete("nan", {"final": True, "derived_val_acc": float("nan")})
    study = optuna.load_study(study_name="unit", storage=optuna_storage(tmp_path))
    by_number = {t.number: t for t in study.trials}
    done, stopped, broken, nan = (by_number[i] for i in range(4))
    assert done.state == TrialState.COMPLETE and done.value == pytest.approx(0.3)
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 0.1, 2: 0.05}
    assert broken.state == TrialState.FAIL and nan.state == TrialState.FAIL


def test_multi_objective_values_and_stale_trials(tmp_path: Path) -> None:
    s = _searcher(tmp_path, ["derived_val_acc", "packed_bytes"], ["max", "min"])
    s.suggest("a")
    s.suggest("left_running")
    s.on_trial_result("a", {"val_acc": 0.1, "epoch": 1})  # ignored: no intermediate values with 2 objectives
    s.on_trial_complete("a", {"final": True, "derived_val_acc": 0.25, "packed_bytes": 1234})
    study = optuna.load_study(study_name="unit", storage=optuna_storage(tmp_path))
    assert study.trials[0].values == [0.25, 1234.0]
    assert study.trials[1].state == TrialState.RUNNING  # as after a driver killed with SIGKILL
    assert fail_stale_trials(study, keep=set()) == 1
    assert study.trials[1].state == TrialState.FAIL


def test_tracker_never_duplicates_runs_or_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing of the study may land in the working directory
    cfg = TrackerConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "unit", str(tmp_path))
    first = StudyTracker(cfg)
    run = first.open_search_run("t1", {"search.layers": 3, "search.ops": ["a"] * 200}, {"search.lr": 0.1})
    first.log_epoch(SEARCH, "t1", {"val_acc": 0.1, "stage": 1}, 1)
    first.log_epoch(SEARCH, "t1", {"val_acc": 0.2, "stage": 1}, 2)
    # A restarted driver (new tracker, same study folder) reopens the run and skips epochs it has.
    again = StudyTracker(cfg)
    assert again.parent_id == first.parent_id
    assert again.open_search_run("t1", {"search.layers": 3}, {}) == run
    again.log_epoch(SEARCH, "t1", {"val_acc": 0.2, "stage": 1}, 2)
    again.log_epoch(SEARCH, "t1", {"val_acc": 0.3, "stage": 2, "epoch": 3}, 3)
    again.finish(SEARCH, "t1", state=State.COMPLETE, result={"derived_val_acc": 0.4}, genotype_digest="x")
    again.finish(SEARCH, "t1", state=State.FAILED, error="must not reopen a finished run")
    client = mlflow.MlflowClient(cfg.tracking_uri)
    assert [m.step for m in client.get_metric_history(run, "val_acc")] == [1, 2, 3]
    got = client.get_run(run)
    assert got.info.status == "FINISHED" and got.data.tags["bnas.state"] == "complete"
    assert got.data.tags["mlflow.parentRunId"] == first.parent_id
    assert got.data.params["search.ops"].endswith("...") and len(got.data.params["search.ops"]) == 500
    assert got.data.params["space.search.lr"] == "0.1"
    assert "epoch" not in got.data.metrics  # only the kind's epoch metrics are logged
    assert len(again.runs(SEARCH)) == 1


def test_artifacts_go_beside_a_sqlite_store_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's default for a SQLite store is ./mlruns of the process: a study run from elsewhere left
    its artifacts in that folder. They go to <store folder>/mlartifacts; a server decides its own."""
    from bnas.platform.tracking import artifact_root

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "study").mkdir()
    tracker = StudyTracker(TrackerConfig(f"sqlite:///{store / 'mlflow.db'}", "unit", str(tmp_path / "study")))
    run = tracker.open_search_run("t1", {"search.layers": 3}, {})
    (tmp_path / "g.json").write_text("{}")
    tracker.client.log_artifact(run, str(tmp_path / "g.json"))
    assert (store / "mlartifacts").is_dir() and list((store / "mlartifacts").rglob("g.json"))
    assert not (elsewhere / "mlruns").exists()
    assert artifact_root("http://127.0.0.1:5000") is None


def test_an_epoch_logged_but_not_recorded_in_the_map_is_not_logged_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver killed between MLflow's write and the run map's (the window the e2e kill can hit)."""
    monkeypatch.chdir(tmp_path)
    cfg = TrackerConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "unit", str(tmp_path))
    first = StudyTracker(cfg)
    run = first.open_search_run("t1", {"search.layers": 3}, {})
    first.log_epoch(SEARCH, "t1", {"val_acc": 0.1, "stage": 1}, 1)
    first.map.update(SEARCH.key("t1"), last_step=0)  # the map as the kill left it
    again = StudyTracker(cfg)
    again.open_search_run("t1", {"search.layers": 3}, {})
    again.log_epoch(SEARCH, "t1", {"val_acc": 0.1, "stage": 1}, 1)  # the resumed trial repeats epoch 1
    again.log_epoch(SEARCH, "t1", {"val_acc": 0.2, "stage": 1}, 2)
    steps = [m.step for m in mlflow.MlflowClient(cfg.tracking_uri).get_metric_history(run, "val_acc")]
    assert steps == [1, 2]
