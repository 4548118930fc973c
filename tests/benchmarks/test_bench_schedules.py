"""benchmarks/bench_schedules.py: the schedules' settings, the summary, and the tiny scale for real."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_schedules.py"
_spec = importlib.util.spec_from_file_location("bench_schedules", BENCH)
bs = importlib.util.module_from_spec(_spec)
sys.modules["bench_schedules"] = bs  # dataclasses look their module up there
_spec.loader.exec_module(bs)  # stdlib + yaml only at import time: bnas is imported where data is made


def _bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _table(stdout: str) -> dict[str, dict[str, str]]:
    """The printed main table (the first Markdown table), as schedule -> column -> cell."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        if ln.startswith("| schedule |"):  # the phase table starts
            break
        cells = dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True))
        rows[cells["schedule"]] = cells
    return rows


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("name", sorted(bs.SCHEDULES))
@pytest.mark.parametrize("scale", sorted(bs.SCALES))
def test_settings_keep_each_schedules_shape(name: str, scale: str) -> None:
    sc = bs.SCALES[scale]
    s = bs.build_settings(bs.SCHEDULES[name], sc, 3, Path("/d"), sc.train_images, "cpu", 1, sc.epoch_factor)
    assert s["seed"] == 3 and s["data.root"] == "/d" and s["threads"] == 1
    if name.startswith("defaults"):  # the scale's sizes (and its epoch factor on the defaults), compile
        assert set(s) - set(sc.settings) - {"runtime.compile"} <= {
            "seed",
            "device",
            "threads",
            "data.dataset",
            "data.root",
            "data.train_subset",
            "data.val_fraction",
            "reduction.epochs_per_stage",
            "reduction.warmup_epochs",
        }
        assert ("reduction.epochs_per_stage" in s) == (sc.epoch_factor != 1)
        return
    assert 0 <= s["reduction.warmup_epochs"] <= s["reduction.epochs_per_stage"]
    if name.startswith("pcdarts"):
        assert s["reduction.strategy"] == "none" and s["reduction.stages"] == 1
        # PC-DARTS's batch of 256 [C], except where the scale cuts every schedule's batch (tiny).
        assert s["search.sampling_k"] == 4
        assert s["search.batch_size"] == sc.settings.get("search.batch_size", 256)
        assert s["binarization.method"] == name.split("_")[1]
    else:
        assert s["reduction.stages"] == 7 and s["binarization.method"] == "xnor"
        assert s["search.sampling_k"] == int(name[-1])
    # The scale's sizes win over a schedule's (PC-DARTS's 8 cells stay only at the gpu scale).
    assert {k: s[k] for k in sc.settings} == sc.settings
    nested = bs.nest(s)
    assert nested["search"]["sampling_k"] == s["search.sampling_k"] and nested["seed"] == 3


def _epochs(name: str, factor: float) -> tuple[int, int]:
    s = bs.scale_epochs(bs.SCHEDULES[name].overrides, factor)
    return s["reduction.epochs_per_stage"], s["reduction.warmup_epochs"]


def test_paper_epochs_and_tiny_shape() -> None:
    assert _epochs("pcdarts_fp", 1.0) == (50, 15) and _epochs("bnas_k2", 1.0) == (5, 3)
    assert _epochs("pcdarts_xnor", 0.2) == (10, 3)  # PC-DARTS 10 epochs, 3 warm-up
    assert _epochs("bnas_k4", 0.2) == (1, 1)  # 7 stages x 1 epoch, the first a warm-up
    assert _epochs("bnas_k2", 0.6) == (3, 2)
    assert bs.scale_epochs({"reduction.epochs_per_stage": 1}, 0.01)["reduction.epochs_per_stage"] == 1


def test_images_per_epoch_and_plan() -> None:
    s = {"data.val_fraction": 0.5, "search.batch_size": 128, "search.max_batches_per_epoch": None}
    assert bs.images_per_epoch(s, 512) == 256
    assert bs.images_per_epoch({**s, "search.max_batches_per_epoch": 1}, 512) == 128
    assert bs.images_per_epoch({**s, "search.max_batches_per_epoch": 1}, 48) == 24
    assert bs.plan(["a", "b"], 3, [0, 1]) == [
        (0, 0, "a"),
        (0, 0, "b"),
        (1, 1, "b"),
        (1, 1, "a"),
        (2, 0, "a"),
        (2, 0, "b"),
    ]


def _run(name: str, seed: int, search_s: float, acc: float, phases: bool) -> dict:
    run = {
        "schedule": name,
        "seed": seed,
        "search_time_s": search_s,
        "process_wall_s": search_s + 5,
        "derived_val_acc": acc,
        "epochs": 7,
        "stages": 7,
        "images_per_epoch": 256,
        "peak_rss_mib": 900.0,
        "device": "cpu",
        "stage_times": [{"peak_cuda_mib": None, "wall_s": search_s}],
    }
    if phases:
        run["phase_times_s"] = {p: search_s / 10 for p in bs.PHASES}
    return run


@pytest.mark.parametrize("phases", [False, True])
def test_summary_medians_ratios_and_phases(phases: bool, tmp_path: Path) -> None:
    names = ["pcdarts_fp", "pcdarts_xnor", "bnas_k2"]
    runs = [
        _run(n, r, t * (r + 1), 0.2 + 0.1 * r, phases)
        for r in range(2)
        for n, t in zip(names, (100.0, 110.0, 60.0), strict=True)
    ]
    rows = {r["schedule"]: r for r in bs.summarize(runs, names)}
    assert rows["bnas_k2"]["search_s"] == pytest.approx(90.0)  # median of 60 and 120
    assert rows["bnas_k2"]["vs_pcdarts_fp"] == pytest.approx(0.6)
    assert rows["pcdarts_xnor"]["vs_pcdarts_xnor"] == pytest.approx(1.0)
    assert rows["bnas_k2"]["derived_val_acc"] == pytest.approx(0.25)
    assert rows["bnas_k2"]["days_at_25k"] == pytest.approx(90.0 * 25000 / 256 / 86400)
    assert rows["bnas_k2"]["peak_cuda_mib"] is None
    assert (rows["bnas_k2"]["phases_s"]["subnet_train"] is not None) == phases
    report = bs.render(list(rows.values()), ["header"])
    assert "CPU-days" in report and "GPU-days @25k" not in report
    phase_lines = [ln for ln in report.splitlines() if ln.startswith("| bnas_k2 |")]
    assert ("| - |" in phase_lines[1]) != phases
    bs.write_outputs(tmp_path, list(rows.values()), runs, {"scale": "x"}, report)
    with (tmp_path / "schedules.csv").open() as fh:
        assert [r["schedule"] for r in csv.DictReader(fh)] == names
    assert json.loads((tmp_path / "results.json").read_text())["meta"] == {"scale": "x"}


def test_summary_without_references_prints_dashes() -> None:
    rows = bs.summarize([_run("bnas_k4", 0, 10.0, 0.5, False)], ["bnas_k4"])
    assert rows[0]["vs_pcdarts_fp"] is None
    assert "| 10.0 | 15.0 | - | - |" in bs.render(rows, [])


# ------------------------------------------------------------------------------------------ misuse
@pytest.mark.parametrize(
    "args, message",
    [
        (["--rounds", "1", "--seeds", "0", "1"], "at least the number of seeds"),
        (["--epoch-factor", "0"], "must be positive"),
        (["--schedules", "darts"], "invalid choice"),
    ],
)
def test_misuse_is_refused(args: list[str], message: str, tmp_path: Path) -> None:
    proc = _bench("--scale", "tiny", "--fake", "--out", str(tmp_path), *args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


def test_missing_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no CIFAR-10"):
        bs.prepare_data(tmp_path, str(tmp_path / "nowhere"), 48, fake=False)


# ------------------------------------------------------------------------------------------ for real
@pytest.mark.slow
def test_tiny_scale_for_real(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = _bench("--scale", "tiny", "--fake", "--rounds", "1", "--seeds", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = _table(proc.stdout)
    assert set(table) == set(bs.DEFAULT_SCHEDULES)
    for name, row in table.items():
        for col in ("search s (median)", "process s", "vs PC-DARTS fp", "vs PC-DARTS xnor"):
            v = float(row[col])
            assert math.isfinite(v) and v > 0, (name, col, v)
        assert 0.0 <= float(row["derived val acc (mean)"]) <= 1.0
    assert table["pcdarts_fp"]["vs PC-DARTS fp"] == "1.00"
    assert table["bnas_k2"]["epochs"] == "7" and table["pcdarts_xnor"]["epochs"] == "10"
    assert "scaled by 0.2" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 4 and {r["schedule"] for r in res["rows"]} == set(bs.DEFAULT_SCHEDULES)
    assert (out / "schedules.md").read_text().strip() in proc.stdout
    assert (out / "schedules.csv").is_file()
