"""What a study prints at its end: where to look, and the leaderboard of its derived architectures.

The rows are :func:`bnas.platform.tracking_schema.leaderboard`'s, the same aggregation as
``analysis.report``'s leaderboard (one row per genotype x retraining binarization, retrained rows
ranked by mean test accuracy over seeds, the rest by ``derived_val_acc``), cut to the first ``limit``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bnas.platform.cluster import ClusterInfo
from bnas.platform.tracking import StudyTracker
from bnas.platform.tracking_schema import PARAM_COLUMN, RETRAIN, SEARCH, Metric, leaderboard, run_record


def summarize(tracker: StudyTracker, limit: int = 10) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The first ``limit`` leaderboard rows of the study in console form, and how many search runs
    ended in each state."""
    searches = [run_record(r) for r in tracker.runs(SEARCH)]
    board = leaderboard(searches + [run_record(r) for r in tracker.runs(RETRAIN)])
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
                "seeds": row["n_seeds"],
            }
        )
    counts = Counter(r["state"] or "?" for r in searches)
    return rows, dict(counts)


def format_summary(rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    head = "search trials: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none")
    if not rows:
        return f"summary ({head}): no complete search trial yet"
    lines = [
        f"summary ({head}); per genotype and retraining binarization, best first: found = search "
        "trials that derived it, val = its search run's derived_val_acc (shared weights), test = mean "
        "retraining test accuracy over seeds",
        f"{'genotype':<13} {'found':>5} {'method':<12} {'strategy':<12} {'K':>2} {'val':>6} {'test':>12} "
        f"{'packed B':>10} {'params':>8}",
    ]
    for r in rows:
        test = f"{r['test_acc']:.3f} (n={r['seeds']})" if r["seeds"] else "-"
        lines.append(
            f"{r['digest']:<13} {r['found_by']:>5} {r['method']:<12} {r['strategy']:<12} {r['K']:>2} "
            f"{r['derived_val_acc']:>6.3f} {test:>12} {r['packed_bytes']:>10.0f} {r['params']:>8.0f}"
        )
    return "\n".join(lines)


def where_to_look(cluster: ClusterInfo, experiment_id: str, uri: str) -> str:
    """The Ray dashboard and the MLflow UI of this study (or how to start the UI on a local store)."""
    lines = []
    if cluster.dashboard_url:
        auth = (
            " (token authentication is on: paste the token from ~/.ray/auth_token, which "
            "`ray get-auth-token` prints)"
            if cluster.token_auth
            else ""
        )
        lines.append(f"Ray dashboard: {cluster.dashboard_url}{auth}")
    else:
        lines.append("Ray dashboard: not running (start without --no-dashboard, or use the cluster's own)")
    exp = f"#/experiments/{experiment_id}"
    if uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI: {uri.rstrip('/')}/{exp}")
    else:
        lines.append(
            f"MLflow UI: run `mlflow server --backend-store-uri {uri} --host 127.0.0.1 --port 5000`, "
            f"then open http://127.0.0.1:5000/{exp}"
        )
    return "\n".join(lines)
