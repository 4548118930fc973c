"""benchmarks/bench_step.py at miniature size: the table, the ratios, the JSON line, the profile."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--layers",
    "3",
    "--channels",
    "4",
    "--batch",
    "2",
    "--image-size",
    "8",
    "--steps",
    "2",
    "--warmup",
    "0",
    "--threads",
    "1",
    "--ops",
    "5",
]


def _bench(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("bench_step", REPO / "benchmarks" / "bench_step.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_step", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_table_ratios_and_profile(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _bench(monkeypatch)
    assert (
        bench.main(
            [
                *TINY,
                "--variants",
                "fp:2,xnor:2,pcnn:4",
                "--arch-step",
                "--json",
                "--profile",
                "xnor:2",
                "--profile-steps",
                "1",
                "--top",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = json.loads(next(line for line in out.splitlines() if line.startswith("{")))["results"]
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"fp:2", "xnor:2", "pcnn:4"}
    assert by["fp:2"]["ratio_to_fp"] == pytest.approx({"median": 1.0, "min": 1.0, "paired": 1.0}, rel=1e-12)
    assert by["xnor:2"]["ratio_to_fp"]["paired"] > 0
    assert by["pcnn:4"]["ratio_to_fp"]["median"] is None  # no fp at K=4 in this run
    assert "profile of xnor:2" in out and "Self CPU" in out


def test_misuse(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench(monkeypatch)
    with pytest.raises(SystemExit, match="METHOD:K"):
        bench.main([*TINY, "--variants", "xnor"])
    with pytest.raises(SystemExit, match="not one of the variants"):
        bench.main([*TINY, "--variants", "fp:2", "--profile", "xnor:2"])
    with pytest.raises(Exception, match="xnor_channel"):  # unknown method: the registry's list
        bench.main([*TINY, "--variants", "xnr:2"])


def test_per_edge_variant_and_results_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _bench(monkeypatch)
    out = tmp_path / "step"
    assert bench.main([*TINY, "--variants", "pcdarts:2,xnor:2,xnor:2:per-edge", "--out", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["meta"]["commit"]) == 40 and saved["meta"]["wall_s"] > 0
    assert saved["meta"]["command"].startswith("python benchmarks/bench_step.py")
    rows = {r["variant"]: r for r in saved["results"]}
    assert set(rows) == {"pcdarts:2", "xnor:2", "xnor:2:per-edge"}
    assert rows["xnor:2:per-edge"]["reference"] == "pcdarts:2"
    report = (out / "step.md").read_text()
    assert report.startswith("# Super-network step\ncommit ") and "xnor:2:per-edge" in report
    with pytest.raises(SystemExit, match="per-edge"):
        bench.main([*TINY, "--variants", "xnor:2:loop"])
    with pytest.raises(SystemExit, match="per-edge"):
        bench.main([*TINY, "--variants", "pcdarts:2:per-edge"])
