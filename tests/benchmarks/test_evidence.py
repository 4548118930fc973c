"""The evidence protocol (benchmarks/evidence.py) at miniature size: every row of the real grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cpu_profile_in_miniature(cifar_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "evidence"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "evidence.py"),
            "--profile",
            "cpu",
            "--miniature",
            "--jobs",
            "0",
            "--data-root",
            str(cifar_root),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    # Search grid: 3 methods x 3 strategies, with the ratio to PC-DARTS (none) of the same method.
    grid = {(s["method"], s["strategy"]) for s in res["searches"]}
    assert grid == {(m, s) for m in ("xnor", "pcnn", "fp") for s in ("performance", "alpha", "none")}
    for s in res["searches"]:
        if s["strategy"] == "none":
            assert s["time_vs_pcdarts"] == 1.0
        assert s["search_time_s"] > 0 and s["peak_rss_mib"] > 0
    # Retraining grid: 9 derived + 3 random x 3 methods + 2 references x 3 methods, 2 seeds each.
    rows = res["rows"]
    assert len(rows) == 9 + 9 + 6
    assert len(res["retrain_runs"]) == 2 * len(rows)
    assert all(r["n_seeds"] == 2 for r in rows)
    assert sum(r["label"].startswith("random/") for r in rows) == 9
    # Random and reference rows retrain one genotype in every method: binary is smaller than fp.
    for r in rows:
        fp = next(x for x in rows if x["label"] == r["label"] and x["method"] == "fp")
        if r["method"] == "fp":
            assert r["gap_to_fp"] == 0.0 and r["size_vs_fp"] == 1.0
        elif not r["label"].startswith("derived/"):
            assert r["digest"] == fp["digest"] and r["packed_bytes"] < fp["packed_bytes"]
    for r in res["retrain_runs"]:
        assert 0.0 <= r["test_acc"] <= 1.0
    md = (out / "results.md").read_text()
    assert "CIFAR-10 (rebuilt copy)" in md and "| xnor | performance |" in md
    for png in ("accuracy_vs_size.png", "search_time.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
