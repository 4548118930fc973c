"""Checks shared by the analysis tests: a report against the runs of its store."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000, path


def assert_report_consistent(rep, data) -> None:
    """The checks that hold for any study: against the runs in the store, pictures, HTML, logging."""
    runs = data.runs
    board = rep.frames["leaderboard"]
    # Row counts: one row per (digest, retraining binarization) of the finished runs.
    search = runs[
        (runs["kind"] == "search") & (runs["state"] == "complete") & runs["genotype_digest"].notna()
    ]
    retrain = runs[(runs["kind"] == "retrain") & (runs["state"] == "complete")]
    keys = {
        (d, str(m)) for d, m in zip(retrain["genotype_digest"], retrain.get("param.binarization.method", []))
    }
    retrained = {d for d, _ in keys}
    keys |= {
        (d, str(m))
        for d, m in zip(search["genotype_digest"], search["param.binarization.method"])
        if d not in retrained
    }
    assert len(board) == len(keys)
    assert set(zip(board["genotype_digest"], board["binarization"])) == keys
    assert board["rank"].tolist() == list(range(1, len(board) + 1))
    assert pd.read_csv(rep.tables["leaderboard"]).shape[0] == len(board)
    # Each row's accuracy is the mean over its retraining runs; the first row is really the best.
    for _, row in board.iterrows():
        mine = retrain[
            (retrain["genotype_digest"] == row["genotype_digest"])
            & (retrain["param.binarization.method"].astype(str) == row["binarization"])
        ]
        assert row["n_seeds"] == len(mine)
        if len(mine):
            assert row["test_acc_mean"] == pytest.approx(mine["test_acc"].mean())
        else:
            assert math.isnan(row["test_acc_mean"])
    # Rows at chance (flagged where the dataset's class count is known) rank after the rest.
    ranked = board
    if "test_near_chance" in board and len(board):
        at_chance = board["test_near_chance"] | (board["n_seeds"].eq(0) & board["val_near_chance"])
        assert at_chance.tolist() == sorted(at_chance.tolist()), "a row at chance ranks above one that is not"
        ranked = board[~at_chance] if (~at_chance).any() else board
    if ranked["n_seeds"].gt(0).any():
        assert ranked.iloc[0]["test_acc_mean"] == pytest.approx(ranked["test_acc_mean"].max())
    elif len(ranked):
        assert ranked.iloc[0]["derived_val_acc"] == pytest.approx(ranked["derived_val_acc"].max())
    # The Pareto set is exactly the non-dominated points.
    pts = rep.frames["pareto"]
    for i, p in pts.iterrows():
        dominated = any(
            q["acc"] >= p["acc"]
            and q["packed_bytes"] <= p["packed_bytes"]
            and (q["acc"] > p["acc"] or q["packed_bytes"] < p["packed_bytes"])
            for j, q in pts.iterrows()
            if j != i
        )
        assert p["pareto"] == (not dominated)
    # Search cost: one row per search run.
    assert len(rep.frames["search_cost"]) == int((runs["kind"] == "search").sum())
    # Proxy vs retrained accuracy: one point per retrained search trial (its binarization), the
    # correlation with its n, and the "cannot judge" sentence below MIN_GENOTYPES.
    from analysis.proxy import MIN_GENOTYPES

    points, proxy = rep.frames["proxy_correlation"], rep.proxy
    searched = retrain[retrain["search_run_id"].isin(search["run_id"])]
    assert set(points["search_run_id"]) == set(searched["search_run_id"])
    for _, pt in points.iterrows():
        mine = searched[searched["search_run_id"] == pt["search_run_id"]]
        s_row = search[search["run_id"] == pt["search_run_id"]].iloc[0]
        mine = mine[mine["param.binarization.method"] == s_row["param.binarization.method"]]
        assert pt["test_acc"] == pytest.approx(mine["test_acc"].mean()) and pt["n_seeds"] == len(mine)
    assert proxy["n_genotypes"] == len(points) and proxy["derived_val_acc"]["n"] <= len(points)
    assert proxy["judged"] == (len(points) >= MIN_GENOTYPES)
    assert ("cannot be judged" in proxy["verdict"]) == (not proxy["judged"])
    assert "proxy_correlation" in rep.pictures
    # Pictures, HTML, CSVs.
    for path in rep.pictures.values():
        assert_png(path)
    html = rep.html.read_text()
    assert html.count("src='data:image/png;base64,") == len(rep.pictures)
    assert "src='http" not in html and 'src="http' not in html
    for path in rep.tables.values():
        assert path.is_file() and path.suffix == ".csv"
    # Logged to the parent run.
    assert rep.logged_to == data.parent_run_id
    logged = {a.path for a in data.client.list_artifacts(data.parent_run_id, "report")}
    assert "report/report.html" in logged
    assert {f"report/{p.name}" for p in rep.pictures.values()} <= logged
