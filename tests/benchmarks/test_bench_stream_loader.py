"""benchmarks/bench_stream_loader.py at miniature size: both tables and the JSON line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # child processes: about 20 s alone, more on a busy machine
def test_memory_and_throughput_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_stream_loader", REPO / "benchmarks" / "bench_stream_loader.py"
    )
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_stream_loader", bench)
    spec.loader.exec_module(bench)
    assert (
        bench.main(
            [
                "--counts",
                "20",
                "--side",
                "16",
                "--throughput-images",
                "20",
                "--photo",
                "24",
                "40",
                "--image-size",
                "16",
                "--workers",
                "0",
                "--work",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    res = json.loads(out.strip().splitlines()[-1])
    assert {(r["count"], r["storage"]) for r in res["memory"]} == {(20, "stream"), (20, "memory")}
    assert all(r["images"] == 20 for r in res["memory"])
    assert [r["workers"] for r in res["throughput"]] == [0] and res["throughput"][0]["images"] == 20
    assert "images/s" in out
