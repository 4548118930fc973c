"""benchmarks/hardening_probes.py: a probe runs for real and its table is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import hardening_probes as hp  # noqa: E402


def test_probes_are_named_once_and_say_what_they_expect() -> None:
    names = [p.name for p in hp.PROBES]
    assert len(names) == len(set(names))
    assert {p.expected for p in hp.PROBES} <= {"refused", "handled"}


def test_one_probe_runs_and_writes_its_results(tmp_path: Path) -> None:
    assert hp.main(["--only", "export --image-size 0", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["rc"], r["held"], r["traceback"]) for r in rows] == [(2, True, False)]
    assert "1 of 1 as expected" in (tmp_path / "probes.md").read_text()
