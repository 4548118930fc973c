"""analysis.loader against a real SQLite MLflow store written by the platform's writer."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from analysis.loader import (
    StoreUnreachable,
    StudyNotFound,
    connect,
    list_studies,
    load_study,
    resolve_tracking_uri,
)
from bnas.platform.tracking_schema import parse_param


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_frame_matches_the_store(fake_study) -> None:
    data = load_study(fake_study.study, fake_study.uri, fake_study.out_dir)
    runs = data.runs
    assert data.parent_run_id == fake_study.parent_id
    assert len(data.search) == len(fake_study.search) == 5
    assert len(data.retrain) == len(fake_study.retrain) == 5
    by_trial = data.search.set_index("trial_id")
    for tid, info in fake_study.search.items():
        row = by_trial.loc[tid]
        assert row["run_id"] == info["run_id"]
        if info.get("digest"):
            assert row["state"] == "complete" and row["genotype_digest"] == info["digest"]
            assert row["derived_val_acc"] == pytest.approx(info["final"]["derived_val_acc"])
            assert row["packed_bytes"] == info["final"]["packed_bytes"]
            # Settings are flattened and typed; sampled values keep their space. prefix.
            assert row["param.search.sampling_k"] == 2
            assert row["param.space.search.lr"] == pytest.approx(info["sampled"]["search.lr"])
            assert row["param.space.binarization.method"] == info["sampled"]["binarization.method"]
    assert by_trial.loc["t4", "state"] == "pruned"
    assert by_trial.loc["t5", "status"] == "FAILED" and "out of memory" in by_trial.loc["t5", "error"]
    # Retraining runs: final (step 0) test_acc, not the last epoch's; linked to their search runs.
    rt = data.retrain.set_index("run_id")
    for info in fake_study.retrain:
        row = rt.loc[info["run_id"]]
        assert row["test_acc"] == pytest.approx(info["acc"])
        assert row["genotype_digest"] == info["digest"] and row["seed"] == info["seed"]
        assert row["packed_bytes"] == info["packed_bytes"]
    linked = data.retrain[data.retrain["search_run_id"].notna()]
    assert set(linked["search_trial_id"]) == {"t1", "t2"}
    ref = data.retrain[data.retrain["genotype_name"] == "bnas_xnor"]
    assert len(ref) == 1 and ref["search_run_id"].isna().all()
    assert (runs["wall_s"] >= 0).all()
    assert set(runs["device"]) == {"cpu"}


def test_metric_history_and_artifacts(fake_study) -> None:
    data = load_study(fake_study.study, fake_study.uri, fake_study.out_dir)
    t1 = fake_study.search["t1"]
    hist = data.metric_history(t1["run_id"])
    assert list(hist["step"]) == list(range(1, t1["epochs"] + 1))
    assert hist["stage"].tolist() == sorted(hist["stage"].tolist())
    assert data.artifact_json(t1["run_id"], "genotype.json") == t1["genotype"].to_dict()
    assert isinstance(data.artifact_json(t1["run_id"], "history.json"), list)
    assert data.artifact_text(fake_study.search["t4"]["run_id"], "history.json") is None
    study, where = data.optuna_study()
    assert study is not None and where.endswith("optuna.db") and len(study.trials) == 4


def test_tracking_uri_comes_from_the_study_folder(fake_study) -> None:
    assert resolve_tracking_uri(None, fake_study.out_dir) == fake_study.uri
    data = load_study(fake_study.study, out_dir=fake_study.out_dir)
    assert data.tracking_uri == fake_study.uri
    assert resolve_tracking_uri("sqlite:///rel/m.db").startswith("sqlite:////")


def test_unknown_study_lists_the_existing_ones(fake_study) -> None:
    with pytest.raises(StudyNotFound) as e:
        load_study("nope", fake_study.uri, fake_study.out_dir)
    assert e.value.available == [fake_study.study] == list_studies(connect(fake_study.uri))
    assert f"Studies there: {fake_study.study}" in str(e.value)


def test_unreachable_stores(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    with pytest.raises(StoreUnreachable, match="no MLflow store at"):
        connect(f"sqlite:///{missing}")
    assert not missing.exists(), "reading must never create a store"
    with pytest.raises(StoreUnreachable, match="no MLflow tracking server answers"):
        connect(f"http://127.0.0.1:{_free_port()}", timeout_s=2)
    with pytest.raises(StoreUnreachable, match="not in a file store"):
        connect(str(tmp_path / "mlruns"))


@pytest.mark.parametrize("kind", ["missing_sqlite", "no_server", "unknown_study"])
def test_cli_errors_are_one_paragraph(kind: str, tmp_path: Path, fake_study, capsys) -> None:
    from analysis.report import main

    uri = {
        "missing_sqlite": f"sqlite:///{tmp_path / 'none.db'}",
        "no_server": f"http://127.0.0.1:{_free_port()}",
        "unknown_study": fake_study.uri,
    }[kind]
    assert main(["--study", "nope", "--mlflow-uri", uri, "--out", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    if kind == "unknown_study":
        assert f"Studies there: {fake_study.study}" in err[0]


def test_parse_param() -> None:
    assert parse_param("4") == 4 and parse_param("0.025") == 0.025
    assert parse_param("True") is True and parse_param("None") is None
    assert parse_param("xnor") == "xnor" and parse_param('["a", "b"]') == '["a", "b"]'


@pytest.mark.slow
@pytest.mark.platform
def test_loader_through_a_tracking_server(fake_study, tmp_path: Path) -> None:
    """The same study read through ``mlflow server`` (started here, in its own process group)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,  # the console script of this interpreter, activated or not
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            fake_study.uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not come up within 120 s")
        uri = f"http://127.0.0.1:{port}"
        data = load_study(fake_study.study, uri, fake_study.out_dir)
        local = load_study(fake_study.study, fake_study.uri, fake_study.out_dir)
        assert data.tracking_uri == uri
        assert sorted(data.runs["run_id"]) == sorted(local.runs["run_id"])
        assert data.artifact_json(fake_study.search["t1"]["run_id"], "genotype.json") is not None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
