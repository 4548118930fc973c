"""analysis.report: tables checked against the runs in the store, pictures, HTML, logging to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from report_checks import assert_png, assert_report_consistent

from analysis.loader import load_study
from analysis.report import build_report, main
from analysis.tables import leaderboard, optuna_view, pareto_mask, pareto_points, search_cost
from bnas.platform.tracking import StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import SEARCH


def test_report_on_the_unit_study(fake_study, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    rep = build_report(fake_study.study, fake_study.uri, fake_study.out_dir, tmp_path / "rep", log=None)
    data = load_study(fake_study.study, fake_study.uri, fake_study.out_dir)
    assert_report_consistent(rep, data)
    board = rep.frames["leaderboard"].set_index(["genotype_digest", "binarization"])
    t1, t2 = fake_study.search["t1"], fake_study.search["t2"]
    # t1's genotype: two seeds (0.30, 0.34), found by trials t1 and t3; produced by t1 (the linked run).
    row = board.loc[(t1["digest"], "xnor")]
    assert row["test_acc_mean"] == pytest.approx(0.32) and row["test_acc_std"] == pytest.approx(
        0.0282843, rel=1e-4
    )
    assert row["n_trials"] == 2 and row["trial_id"] == "t1" and row["seeds"] == "0,1"
    assert row["setting.reduction.strategy"] == "performance" and row["space.search.lr"] == pytest.approx(
        0.02
    )
    assert rep.frames["leaderboard"].iloc[0]["binarization"] == "fp"  # the full-precision control: 0.45
    ref = board.loc[("a59f38dbd85b", "xnor")]
    assert ref["source"] == "reference" and ref["genotype_name"] == "bnas_xnor"
    pts = rep.frames["pareto"].set_index("label")
    assert pts.loc[f"{t2['digest'][:8]} (fp)", "category"] == "full precision"
    assert pts.loc["bnas_xnor", "category"] == "reference"
    assert not pts.loc[t1["digest"][:8], "pareto"]  # dominated by t2's (smaller and more accurate)
    # The best architecture is the best binary one: t2's; its cells and reduction history are drawn.
    for name in (
        "best_normal_cell",
        "best_reduce_cell",
        "reduction_history_normal",
        "reduction_history_reduce",
        "pareto",
        "search_curves",
        "search_cost",
        "optuna_history",
        "optuna_importances",
    ):
        assert name in rep.pictures, name
    assert f"genotype {t2['digest']} from trial t2" in rep.html.read_text()
    cost = rep.frames["search_cost"].set_index("trial_id")
    assert cost.loc["t1", "search_time_s"] == pytest.approx(t1["final"]["search_time_s"])
    assert cost["gpu_days"].isna().all()  # CPU: no GPU-day figure, no comparison
    assert "not compared" in rep.html.read_text()
    assert time.perf_counter() - t0 < 60


def test_pareto_mask_cases() -> None:
    assert pareto_mask([], []) == []
    assert pareto_mask([0.5], [10]) == [True]
    # (acc, size): b dominates c; a and b trade off; d ties b exactly (neither dominates the other).
    acc = [0.9, 0.8, 0.7, 0.8]
    size = [100, 50, 60, 50]
    assert pareto_mask(acc, size) == [True, True, False, True]


def test_tables_without_retraining_rank_by_derived_accuracy(fake_study) -> None:
    data = load_study(fake_study.study, fake_study.uri, fake_study.out_dir)
    board = leaderboard(data.runs[data.runs["kind"] == "search"])
    assert set(board["genotype_digest"]) == {
        fake_study.search["t1"]["digest"],
        fake_study.search["t2"]["digest"],
    }
    assert board["derived_val_acc"].is_monotonic_decreasing and board["n_seeds"].eq(0).all()
    pts, desc = pareto_points(board)
    assert "derived_val_acc" in desc and len(pts) == 2
    table, summary = search_cost(data.runs)
    assert summary["trials"] == 5 and summary["complete"] == 3 and "no GPU" in summary["note"]


def test_gpu_cost_is_compared_with_the_paper() -> None:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    runs = pd.DataFrame(
        {
            "kind": ["search", "search"],
            "state": ["complete", "complete"],
            "trial_id": ["a", "b"],
            "device": ["cuda", "cuda"],
            "search_time_s": [4320.0, 8640.0],
            "wall_s": [4400.0, 8700.0],
            "start_time": [t, t],
            "end_time": [t + pd.Timedelta(seconds=8700)] * 2,
        }
    )
    table, summary = search_cost(runs)
    assert table["gpu_days"].tolist() == pytest.approx([0.05, 0.1])
    assert summary["gpu_days_per_search"] == pytest.approx(0.075)
    assert "0.09 GPU-days" in summary["note"]


def _store_with_running_trial(tmp: Path) -> tuple[str, Path]:
    """A study whose only search trial has reported one epoch (through the platform's writer)."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp / "out"
    out.mkdir()
    tracker = StudyTracker(TrackerConfig(uri, "early", str(out)))
    tracker.open_search_run("x", {"device": "cpu"}, {})
    tracker.log_epoch(SEARCH, "x", {"val_acc": 0.1, "stage": 1}, 1)
    return uri, out


def test_study_without_finished_trials_reports_what_there_is(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow puts a new store's artifacts (the report) under ./mlruns
    uri, out = _store_with_running_trial(tmp_path)
    assert main(["--study", "early", "--mlflow-uri", uri, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no search trial has finished yet (1 running)" in text
    assert "no Optuna storage" in text
    assert "logged as artifacts report/ of run" in text
    html = (out / "report" / "report.html").read_text()
    assert "No finished search trial yet." in html
    for png in (out / "report").glob("*.png"):
        assert_png(png)
    assert {p.name for p in (out / "report").glob("*.png")} >= {"search_curves.png", "pareto.png"}


def test_optuna_with_too_few_trials_says_so(tmp_path: Path) -> None:
    import optuna

    s = optuna.create_study(study_name="few", storage=f"sqlite:///{tmp_path / 'o.db'}", direction="maximize")
    s.add_trial(
        optuna.trial.create_trial(
            params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}, value=0.5
        )
    )
    view = optuna_view(s)
    assert view["importances"] == {} and "at least 2 complete trials" in view["note"]


def test_console_summary_and_report_rank_alike(fake_study) -> None:
    """run.py's closing summary and the report's leaderboard are one aggregation: same rows, same order."""
    from bnas.platform.summary import format_summary, summarize

    data = load_study(fake_study.study, fake_study.uri, fake_study.out_dir)
    board = leaderboard(data.runs)
    tracker = StudyTracker(TrackerConfig(fake_study.uri, fake_study.study, str(fake_study.out_dir)))
    rows, counts = summarize(tracker, limit=100)
    assert [(r["digest"], r["method"]) for r in rows] == list(
        zip(board["genotype_digest"], board["binarization"])
    )
    assert [r["seeds"] for r in rows] == board["n_seeds"].tolist()
    assert counts == {"complete": 3, "pruned": 1, "failed": 1}
    text = format_summary(rows, counts)
    assert text.startswith("summary (search trials: 3 complete, 1 failed, 1 pruned)")
    assert len(text.splitlines()) == 2 + len(board)


def test_analysis_keeps_no_copy_of_the_schema() -> None:
    """Tag keys, the study folder's file names and environment writes live outside ``analysis/``
    (string constants only; docstrings may name them)."""
    import ast

    root = Path(__file__).resolve().parents[2] / "analysis"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = node.value
                assert not text.startswith(("bnas.", "tags.", "bnas/")), (path.name, text)
                assert "mlflow_runs.json" not in text and "optuna.db" not in text, (path.name, text)
            if isinstance(node, ast.Attribute) and node.attr == "environ":
                raise AssertionError(f"{path.name} touches os.environ")


class _Tampered:
    """A store whose artifacts were edited after the run: genotype.json is not a genotype, history.json
    is not JSON."""

    def artifact_json(self, run_id: str, name: str):
        if name == "history.json":
            raise ValueError("Expecting value: line 1 column 1 (char 0)")
        return {"normal": "not a cell"} if name == "genotype.json" else None


def test_tampered_artifacts_become_notes_not_tracebacks() -> None:
    from analysis.report import _artifact, _degenerate

    notes: list[str] = []
    assert _artifact(_Tampered(), "r1", "history.json", notes) is None
    assert _artifact(_Tampered(), "r1", "diagnostics.json", notes) is None
    assert notes[0].startswith("run r1: history.json is not valid JSON") and "no diagnostics.json" in notes[1]
    assert _degenerate(_Tampered(), "r1") == "?"  # a genotype that does not parse: flagged unknown
