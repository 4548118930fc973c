"""What a study prints at its end: where to look, and the leaderboard of its derived architectures.

The rows are :func:`bnas.platform.leaderboard.leaderboard`'s, the same aggregation as
``analysis.report``'s leaderboard (one row per genotype x retraining binarization, retrained rows
ranked by mean test accuracy over seeds, the rest by ``derived_val_acc``), cut to the first ``limit``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bnas.platform.cluster import KEEP_CLUSTER_COMMAND, ClusterInfo
from bnas.platform.leaderboard import leaderboard
from bnas.platform.mlflow_ui import runs_view_hint, runs_view_lines, runs_view_url
from bnas.platform.tracking import StudyTracker
from bnas.platform.tracking_schema import PARAM_COLUMN, RETRAIN, SEARCH, Metric, is_number, run_record


def summarize(
    tracker: StudyTracker, limit: int = 10, num_classes: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The first ``limit`` leaderboard rows of the study in console form, and how many search runs
    ended in each state. With ``num_classes``, rows at chance are flagged (and ranked last)."""
    searches = [run_record(r) for r in tracker.runs(SEARCH)]
    board = leaderboard(searches + [run_record(r) for r in tracker.runs(RETRAIN)], num_classes)
    rows = []
    for row in board[:limit]:
        producer = row["producer"] or {}
        rows.append(
            {
                "digest": row["genotype_digest"],
                "search_run": row["search_run_id"],
                "trial": row["trial_id"] or "",
                "found_by": row["n_trials"],
                "method": row["binarization"],
                "strategy": str(producer.get(PARAM_COLUMN + "reduction.strategy", "")),
                "K": str(producer.get(PARAM_COLUMN + "search.sampling_k", "")),
                "derived_val_acc": row[Metric.DERIVED_VAL_ACC],
                "packed_bytes": row[Metric.PACKED_BYTES],
                "params": row[Metric.PARAMS],
                "test_acc": row["test_acc_mean"],
                "test_std": row["test_acc_std"],
                "seeds": row["n_seeds"],
                "test_at_chance": row["test_near_chance"],
                "val_at_chance": row["val_near_chance"],
                "degenerate": _degenerate(producer),
            }
        )
    counts = Counter(r["state"] or "?" for r in searches)
    return rows, dict(counts)


def _degenerate(producer: dict[str, Any]) -> str:
    """``"normal 88%"``-style note for the producing search's derived cells at or above its
    ``search.degenerate_share`` parameter-free share (the search warned about them too), else ``""``."""
    from bnas.config import SearchConfig

    share = producer.get(PARAM_COLUMN + "search.degenerate_share")
    share = share if is_number(share) else SearchConfig().degenerate_share
    cells = []
    for cell in ("normal", "reduce"):
        v = producer.get(f"param_free_{cell}")
        if is_number(v) and v >= share:
            cells.append(f"{cell} {v:.0%}")
    return ", ".join(cells)


def format_summary(rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    head = "search trials: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none")
    if not rows:
        return f"summary ({head}): no complete search trial yet"
    lines = [
        f"summary ({head}); per genotype and retraining binarization, best first: found = search "
        "trials that derived it, val = its search run's derived_val_acc (shared weights), test = mean "
        "retraining test accuracy over seeds",
        f"{'genotype':<13} {'found':>5} {'method':<12} {'strategy':<12} {'K':>2} {'val':>7} "
        f"{'test (seeds)':>21} {'packed B':>10} {'params':>8}",
    ]
    for r in rows:
        test = "-"
        if r["seeds"]:
            std = f"±{r['test_std']:.3f}" if r["seeds"] > 1 else ""
            test = f"{r['test_acc']:.3f}{std} (n={r['seeds']})" + ("~" if r.get("test_at_chance") else "")
        val = f"{r['derived_val_acc']:.3f}" + ("~" if r.get("val_at_chance") else "")
        lines.append(
            f"{r['digest']:<13} {r['found_by']:>5} {r['method']:<12} {r['strategy']:<12} {r['K']:>2} "
            f"{val:>7} {test:>21} {r['packed_bytes']:>10.0f} {r['params']:>8.0f}"
        )
    degenerate = [f"{r['digest']} ({r['degenerate']})" for r in rows if r.get("degenerate")]
    if degenerate:
        lines.append(
            "warning: degenerate derived cells, mostly parameter-free ops (skip, pools): "
            + "; ".join(degenerate)
            + ". The search found no weighted op worth keeping there; search.max_param_free caps them"
        )
    if any(r.get("test_at_chance") or r.get("val_at_chance") for r in rows):
        lines.append(
            "~ = within noise of chance (1/classes, 2 standard errors of guessing on that many images or "
            "2 seed standard deviations): not told apart from guessing, ranked after the rest, unordered "
            "in meaning; train longer (retrain.* overrides) for figures that rank"
        )
    return "\n".join(lines)


def where_to_look(
    cluster: ClusterInfo, experiment_id: str, uri: str, optuna_db: Path | None = None, ended: bool = False
) -> str:
    """The Ray dashboard, the MLflow UI (its runs view in the model-training layout, the trial runs
    listed flat: :mod:`bnas.platform.mlflow_ui`; MLflow 3's default page of an experiment is the GenAI
    overview, empty here) and optuna-dashboard of this study. ``ended``: the study is over, and a
    cluster started here goes with it, dashboard included."""
    lines = []
    if cluster.dashboard_url and ended and cluster.started_here:
        lines.append(
            f"Ray dashboard: was at {cluster.dashboard_url} while the study ran; it stops with the local "
            f"cluster. To keep one up, on this machine only: `{KEEP_CLUSTER_COMMAND}`, then run the "
            "study with --address 127.0.0.1:6379"
        )
    elif cluster.dashboard_url:
        auth = (
            " (token authentication is on: paste the token from ~/.ray/auth_token, which "
            "`ray get-auth-token` prints)"
            if cluster.token_auth
            else ""
        )
        lines.append(f"Ray dashboard: {cluster.dashboard_url}{auth}")
    else:
        lines.append("Ray dashboard: not running (start without --no-dashboard, or use the cluster's own)")
    if uri.startswith(("http://", "https://")):
        base = uri
        lines.append(f"MLflow UI: {runs_view_url(uri, experiment_id)}")
    else:
        base = "http://127.0.0.1:5000"
        lines.append(
            f"MLflow UI: run `mlflow server --backend-store-uri {uri} --host 127.0.0.1 --port 5000`, "
            f"then open {runs_view_url(base, experiment_id)}"
        )
    lines += [*runs_view_lines(base, experiment_id), runs_view_hint()]
    if optuna_db is not None:
        lines.append(f"Optuna dashboard: run `optuna-dashboard sqlite:///{optuna_db}` (port 8080)")
    return "\n".join(lines)
