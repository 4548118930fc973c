"""The tracking schema's owner (bnas.platform.tracking_schema): store URIs and probe, the leaderboard
aggregation shared by the console summary and the report, and import hygiene. No Ray, no server."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from platform_helpers import REPO, free_port

from bnas.platform.leaderboard import leaderboard
from bnas.platform.tracking_schema import (
    PARAM_COLUMN,
    RETRAIN,
    SEARCH,
    Metric,
    RunMap,
    State,
    TrackingError,
    param_value,
    parse_param,
    probe_store,
    recorded_tracking_uri,
    resolve_tracking_uri,
    runs_filter,
)

METHOD = PARAM_COLUMN + "binarization.method"


# --------------------------------------------------------------------------------------------
# Store URIs and the probe
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [True, False], ids=["write", "read"])
@pytest.mark.parametrize(
    "uri, words",
    [
        ("http://127.0.0.1:{port}", "no MLflow tracking server answers"),
        ("file:///tmp/mlruns", "not in a file store"),
        ("{tmp}/mlruns", "not in a file store"),
        ("sqlite://relative.db", "is not a SQLite file URI"),
        ("sqlite:///:memory:", "is not a SQLite file URI"),
    ],
)
def test_probe_refuses_unusable_stores(tmp_path: Path, write: bool, uri: str, words: str) -> None:
    with pytest.raises(TrackingError, match=words) as err:
        probe_store(uri.format(port=free_port(), tmp=tmp_path), write=write, timeout_s=2)
    assert (err.value.key == "--mlflow-uri") == write  # the platform names its flag; analysis does not


def test_probe_sqlite_writing_needs_a_writable_folder_reading_needs_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrackingError, match="does not exist"):
        probe_store("sqlite:///no/such/folder/m.db", write=True)
    assert probe_store("sqlite:///m.db", write=True) == f"sqlite:///{tmp_path / 'm.db'}"  # made absolute
    with pytest.raises(TrackingError, match="no MLflow store at"):
        probe_store("sqlite:///m.db", write=False)
    assert not (tmp_path / "m.db").exists(), "probing never creates a store"
    (tmp_path / "m.db").touch()
    assert probe_store("sqlite:///m.db", write=False) == f"sqlite:///{tmp_path / 'm.db'}"
    assert probe_store("postgresql://u@h/db", write=True) == "postgresql://u@h/db"  # SQLAlchemy's job


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given URI, else the one the study folder recorded, else MLflow's default (absolute)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "study"
    folder.mkdir()
    assert recorded_tracking_uri(folder) is None
    assert resolve_tracking_uri(None, folder) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    RunMap(folder, "sqlite:////abs/first.db").set_parent("p1")
    assert recorded_tracking_uri(folder) == "sqlite:////abs/first.db"
    assert resolve_tracking_uri(None, folder) == "sqlite:////abs/first.db"
    assert resolve_tracking_uri("sqlite:///x.db", folder) == f"sqlite:///{tmp_path / 'x.db'}"
    (folder / "mlflow_runs.json").write_text("{broken")
    assert recorded_tracking_uri(folder) is None  # unreadable: as if new (the writer reports it)


def test_run_map_entries_and_atomic_saves(tmp_path: Path) -> None:
    rm = RunMap(tmp_path, "sqlite:////x.db")
    assert rm.entry(SEARCH.key("t1")) is None
    rm.update(SEARCH.key("t1"), run_id="r1", last_step=0)
    rm.update(SEARCH.key("t1"), last_step=3)
    rm.set_parent("p")
    assert rm.entry("search/t1") == {"run_id": "r1", "last_step": 3}
    assert rm.load()["parent"] == "p" and rm.load()["tracking_uri"] == "sqlite:////x.db"
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow_runs.json"]  # no temporary file left


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"runs": {"search/t1": {"run_id": "r1"}', "not readable as JSON"),  # truncated
        ("[1, 2]", "the whole file not what the study writes"),
        ('{"runs": [1]}', "runs not what the study writes"),
        ('{"runs": {"search/t1": 3}}', "runs.search/t1 is not a mapping"),
    ],
)
def test_a_damaged_run_map_is_one_error_naming_it(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "mlflow_runs.json").write_text(text)
    with pytest.raises(TrackingError, match="mlflow_runs.json is damaged") as e:
        RunMap(tmp_path, "sqlite:////x.db").entry("search/t1")
    assert why in str(e.value) and str(e.value).startswith(str(tmp_path))
    assert recorded_tracking_uri(tmp_path) is None  # the reader of the URI alone stays quiet


@pytest.mark.parametrize("text", ['{"search": ["search-1"', '{"search": "search-1"}', '{"search": [1]}'])
def test_a_damaged_study_state_is_one_error_naming_it(tmp_path: Path, text: str) -> None:
    from bnas.platform.stages import STATE_FILE, StudyState

    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(TrackingError, match="study_state.json is damaged"):
        StudyState(tmp_path)


def test_params_round_trip_and_filters() -> None:
    assert param_value(["a", "b"]) == '["a", "b"]' and len(param_value("x" * 900)) == 500
    for v in (4, 0.025, True, None, "xnor"):
        assert parse_param(param_value(v)) == v
    assert runs_filter("s", SEARCH.name, state=State.COMPLETE, status="FINISHED") == (
        "tags.`bnas.study` = 's' and tags.`bnas.kind` = 'search' and tags.`bnas.state` = 'complete' "
        "and attributes.status = 'FINISHED'"
    )


# --------------------------------------------------------------------------------------------
# The leaderboard aggregation
# --------------------------------------------------------------------------------------------


def _search(
    run_id: str, digest: str | None, acc: float, packed: float, *, state: str = State.COMPLETE
) -> dict:
    return {
        "run_id": run_id,
        "kind": SEARCH.name,
        "state": state,
        "trial_id": f"t-{run_id}",
        "genotype_digest": digest,
        Metric.DERIVED_VAL_ACC: acc,
        Metric.PACKED_BYTES: packed,
        METHOD: "xnor",
    }


def _retrain(search_id: str | None, digest: str, seed: int, acc: float, packed: float, **kw) -> dict:
    return {
        "run_id": f"r-{digest}-{seed}-{kw.get('method', 'xnor')}",
        "kind": RETRAIN.name,
        "state": kw.get("state", State.COMPLETE),
        "genotype_digest": digest,
        "genotype_name": kw.get("name", ""),
        "search_run_id": search_id,
        "seed": seed,
        Metric.TEST_ACC: acc,
        Metric.PACKED_BYTES: packed,
        METHOD: kw.get("method", "xnor"),
    }


STORE = [
    _search("s1", "aaa", 0.50, 100),
    _search("s2", "bbb", 0.60, 100),
    _search("s3", "aaa", 0.55, 100),  # found aaa again, better
    _search("s4", "ccc", 0.40, 80),  # never retrained
    _search("s5", "ddd", 0.40, 60),  # never retrained, same val as ccc but smaller
    _search("s6", None, math.nan, math.nan, state=State.PRUNED),
    _retrain("s3", "aaa", 0, 0.30, 100),
    _retrain("s3", "aaa", 1, 0.34, 100),
    _retrain("s2", "bbb", 0, 0.32, 90),  # same mean as aaa, smaller: ranks first
    _retrain("s2", "bbb", 1, 0.32, 90),
    _retrain("s2", "bbb", 2, 0.99, 90, state=State.FAILED),  # not finished: ignored
    _retrain("s2", "bbb", 0, 0.45, 3200, method="fp"),  # full precision: its own row
    _retrain(None, "ref", 0, 0.20, 50, name="bnas_xnor"),  # a reference genotype
]


def test_leaderboard_rows_and_order() -> None:
    board = leaderboard(STORE)
    assert [(r["genotype_digest"], r["binarization"]) for r in board] == [
        ("bbb", "fp"),
        ("bbb", "xnor"),  # ties aaa on mean test accuracy (0.32), smaller packed size
        ("aaa", "xnor"),
        ("ref", "xnor"),
        ("ddd", "xnor"),  # not retrained: by derived_val_acc, then smaller packed size
        ("ccc", "xnor"),
    ]
    aaa = board[2]
    assert aaa["test_acc_mean"] == pytest.approx(0.32) and aaa["test_acc_std"] == pytest.approx(
        0.0282843, 1e-4
    )
    assert aaa["n_seeds"] == 2 and aaa["seeds"] == "0,1" and aaa["n_trials"] == 2
    assert aaa["search_run_id"] == "s3" and aaa[Metric.DERIVED_VAL_ACC] == 0.55  # the linked producer
    assert board[1]["n_seeds"] == 2  # the failed retraining is not counted
    assert math.isnan(board[0]["test_acc_std"])  # one run: no spread
    ref = board[3]
    assert ref["source"] == "reference" and ref["genotype_name"] == "bnas_xnor" and ref["producer"] is None
    assert math.isnan(ref[Metric.DERIVED_VAL_ACC]) and ref[Metric.PACKED_BYTES] == 50
    ccc = board[-1]
    assert ccc["n_seeds"] == 0 and math.isnan(ccc["test_acc_mean"]) and ccc[Metric.PACKED_BYTES] == 80


def test_leaderboard_reads_frame_rows_like_records() -> None:
    """The report passes a DataFrame's rows (missing values NaN/None): same rows, same order."""
    frame = pd.DataFrame(STORE)
    frame["seed"] = pd.to_numeric(frame["seed"]).astype("Int64")
    rows = leaderboard(frame.to_dict("records"))
    expect = leaderboard(STORE)
    keys = ("genotype_digest", "binarization", "n_seeds", "seeds", "search_run_id")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in expect]


@pytest.mark.parametrize(
    "records",
    [
        [],
        [{"run_id": "x"}],  # no kind, no state: not a run of the study
        [_search("s", "", 0.5, 1)],  # complete but no genotype derived
        [_retrain(None, "g", 0, math.nan, 1)],  # complete retraining without a test accuracy
        [_search("s", "g", 0.5, 1, state=State.RUNNING)],
    ],
    ids=["empty", "not-a-run", "no-digest", "nan-test-acc", "running"],
)
def test_leaderboard_ignores_unfinished_or_malformed_records(records: list[dict]) -> None:
    assert leaderboard(records) == []


# --------------------------------------------------------------------------------------------
# Import hygiene: what the analysis and the test fixtures import must not pull in Ray
# --------------------------------------------------------------------------------------------


def test_schema_analysis_and_fixtures_import_no_ray() -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests/platform');"
        "import platform_fixtures, analysis.report, analysis.plots, bnas.platform.summary;"
        "import matplotlib;"
        "bad = [m for m in ('ray', 'optuna', 'matplotlib.pyplot') if m in sys.modules];"
        "assert not bad, bad"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
