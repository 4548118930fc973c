"""What a study prints at its end: figures at chance marked, and where to look, said truthfully."""

from __future__ import annotations

import math
from pathlib import Path

from bnas.platform.cluster import KEEP_CLUSTER_COMMAND, ClusterInfo
from bnas.platform.summary import format_summary, where_to_look


def _row(digest: str, test: float, std: float, seeds: int, at_chance: bool) -> dict:
    return {
        "digest": digest,
        "found_by": 1,
        "method": "xnor",
        "strategy": "ucb",
        "K": "2",
        "derived_val_acc": 0.26,
        "packed_bytes": 19112.0,
        "params": 19042.0,
        "test_acc": test,
        "test_std": std,
        "seeds": seeds,
        "test_at_chance": at_chance,
        "val_at_chance": False,
    }


def test_summary_marks_figures_at_chance_and_explains_the_mark() -> None:
    text = format_summary(
        [_row("aaa", 0.342, 0.009, 2, False), _row("bbb", 0.1000000034, 0.0, 2, True)], {"complete": 2}
    )
    lines = text.splitlines()
    assert "0.342±0.009 (n=2)" in lines[2] and "~" not in lines[2]
    assert "0.100±0.000 (n=2)~" in lines[3]
    assert lines[-1].startswith("~ = within noise of chance")
    plain = format_summary([_row("aaa", 0.342, math.nan, 1, False)], {"complete": 1})
    assert "within noise of chance" not in plain and "0.342 (n=1)" in plain


def test_summary_warns_about_degenerate_cells() -> None:
    from bnas.platform.summary import _degenerate

    assert _degenerate({"param_free_normal": 0.875, "param_free_reduce": 0.5}) == "normal 88%"
    assert _degenerate({"param_free_normal": 0.875, "param.search.degenerate_share": 0.9}) == ""
    assert _degenerate({}) == ""
    rows = [
        {**_row("aaa", 0.342, 0.009, 2, False), "degenerate": "normal 88%"},
        _row("bbb", 0.3, 0.0, 2, False),
    ]
    text = format_summary(rows, {"complete": 2})
    warning = [ln for ln in text.splitlines() if ln.startswith("warning: degenerate")]
    assert len(warning) == 1 and "aaa (normal 88%)" in warning[0] and "bbb" not in warning[0]


def test_where_to_look_opens_the_runs_view_and_says_when_the_dashboard_is_gone(tmp_path: Path) -> None:
    local = ClusterInfo("127.0.0.1:6379", "http://127.0.0.1:8265", False, {"CPU": 2.0}, started_here=True)
    during = where_to_look(local, "7", "sqlite:////x/mlflow.db", tmp_path / "optuna.db")
    assert "Ray dashboard: http://127.0.0.1:8265" in during
    assert "http://127.0.0.1:5000/#/experiments/7/runs" in during  # not MLflow 3's GenAI overview
    assert f"optuna-dashboard sqlite:///{tmp_path / 'optuna.db'}" in during
    after = where_to_look(local, "7", "http://host:5000", ended=True)
    assert "was at http://127.0.0.1:8265" in after and KEEP_CLUSTER_COMMAND in after
    assert "MLflow UI: http://host:5000/#/experiments/7/runs" in after
    joined = ClusterInfo("10.0.0.1:6379", "http://10.0.0.1:8265", False, {}, started_here=False)
    assert "Ray dashboard: http://10.0.0.1:8265" in where_to_look(joined, "7", "http://h:5000", ended=True)
