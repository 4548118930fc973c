"""benchmarks/bench_fast_path.py and benchmarks/schedule_probe.py at miniature size on the CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_fast_path_benchmark_at_tiny_size(
    tmp_path: Path, fake_cifar_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("bench_fast_path", monkeypatch)
    out = tmp_path / "fast_path.json"
    assert (
        bench.main(
            [
                "--device",
                "cpu",
                "--size",
                "tiny",
                "--variants",
                "fp32,fast",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--data-root",
                str(fake_cifar_root),
                "--work",
                str(tmp_path / "work"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    rows = {(r["part"], r["variant"]): r for r in data["rows"]}
    assert set(rows) == {("search", "fp32"), ("search", "fast"), ("retrain", "fp32"), ("retrain", "fast")}
    assert all(r["img_per_s"] > 0 and r["step_s"] > 0 and r["peak_cuda_mib"] is None for r in rows.values())
    plain = rows["search", "fp32"]["fast_path"]
    assert plain["amp"] == "off" and not any(v for k, v in plain.items() if k != "amp")
    assert rows["search", "fast"]["fast_path"]["data_on_device"]
    assert rows["retrain", "fast"]["fast_path"]["amp"] == "bf16"
    assert data["meta"]["variants"]["fast"]["channels_last"] == "on"
    assert "x fp32" in capsys.readouterr().out


def test_fast_path_benchmark_refuses_unknown_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load("bench_fast_path", monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--variants", "fp32,turbo"])


def test_schedule_probe_counts_the_paper_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = _load("schedule_probe", monkeypatch)
    bs = sys.modules["bench_schedules"]
    full = bs.build_settings(bs.SCHEDULES["bnas_k2"], bs.SCALES["gpu"], 0, Path(), None, "cuda", None, 1.0)
    ops = probe.stage_ops(full)
    assert ops == [8, 7, 6, 5, 4, 3, 2]
    c = probe._counts(full, 50_000, ops)
    assert c["train_b"] == math.ceil(25_000 / 128) and c["subnets"] == [12, 12, 9, 9, 6, 6, 3]
    pc = bs.build_settings(bs.SCHEDULES["pcdarts_fp"], bs.SCALES["gpu"], 0, Path(), None, "cuda", None, 1.0)
    assert probe.stage_ops(pc) == [8] and probe._counts(pc, 50_000, [8])["subnets"] == [0]
    # one second per step: PC-DARTS = 50 epochs x 98 steps, less the arch part of the 15 warm-up epochs
    u = {"step": 1.0, "arch_frac": 0.5, "v": 0.0, "st": 0.0, "se": 0.0, "d": 0.0, "ckpt": 0.0}
    est = probe.extrapolate(pc, u, 50_000)
    assert est["flat_s"] == est["linear_s"] == pytest.approx(98 * (50 - 15 * 0.5))
    est = probe.extrapolate(full, u, 50_000)
    assert est["linear_s"] < est["flat_s"] == pytest.approx(196 * (35 - 3 * 0.5))


@pytest.mark.slow
def test_schedule_probe_runs_one_stage_at_the_tiny_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = _load("schedule_probe", monkeypatch)
    assert (
        probe.main(
            [
                "--scale",
                "tiny",
                "--fake",
                "--device",
                "cpu",
                "--schedules",
                "bnas_k2",
                "--batches",
                "1",
                "--subnet-batches",
                "1",
                "--set",
                "threads=1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "probe.json").read_text())["schedules"]["bnas_k2"]
    assert res["stage1"]["stage"] == 1 and res["unit_costs_s"]["step"] > 0
    assert 0 < res["estimate"]["linear_s"] <= res["estimate"]["flat_s"]
