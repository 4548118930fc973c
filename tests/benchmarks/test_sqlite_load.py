"""benchmarks/sqlite_load.py at miniature size: concurrent writers on the SQLite stores, all counted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.platform  # real MLflow and Optuna stores, written by several processes at once
def test_sqlite_load_counts_every_write(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sqlite_load.py"), "--writers", "2", "--metrics", "12",
         "--out", str(tmp_path / "stores")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    mlflow_lines = [line for line in lines if line.startswith("mlflow writer")]
    optuna_lines = [line for line in lines if line.startswith("optuna writer")]
    assert len(mlflow_lines) == len(optuna_lines) == 2, res.stdout
    for line in mlflow_lines:
        found = re.findall(r"(\d+) written, (\d+) failed, store holds (\d+)", line)
        written, failed, held = map(int, found[0])
        assert written + failed == 12 and held == written, line
    assert re.search(r"optuna storage holds (\d+) trials", res.stdout), res.stdout
    held = int(re.search(r"optuna storage holds (\d+) trials", res.stdout).group(1))
    written = sum(int(re.search(r"(\d+) written", line).group(1)) for line in optuna_lines)
    assert held == written, res.stdout
