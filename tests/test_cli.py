"""The core command line: ``python -m bnas {retrain,summary,settings,search}``."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bnas.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SIZE_KEYS = {"params", "binary_params", "fp_params", "packed_bytes", "fp32_bytes"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bnas", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_summary_prints_one_json_object() -> None:
    p = _run(
        "summary", "--genotype", "bnas_xnor", "--channels", "8", "--layers", "5", "--binarization", "xnor"
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)  # exactly one JSON document on stdout
    assert SIZE_KEYS <= set(report)
    assert report["params"] == report["binary_params"] + report["fp_params"]
    assert report["packed_bytes"] < report["fp32_bytes"]


def test_bad_genotype_name_exits_2_with_a_message() -> None:
    p = _run("summary", "--genotype", "bnas_xnr", "--channels", "8", "--layers", "5")
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and "bnas_xnor, pc_darts, darts_v2" in p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_summary_fp_and_aux_free(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["summary", "--genotype", "darts_v2", "--channels", "8", "--layers", "5", "--binarization", "fp"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["binary_params"] == 0 and report["packed_bytes"] == report["fp32_bytes"]
    assert report["genotype_digest"] == "75f8a6657311"


@pytest.mark.parametrize(
    "argv,match",
    [
        (["summary", "--genotype", "bnas_xnor", "--binarization", "ternary"], "unknown binarization method"),
        (["summary", "--genotype", "bnas_xnor", "--layers", "2"], "--layers: must be >= 3"),
        (["summary", "--genotype", "{bad json"], "malformed JSON"),
        (["retrain", "--genotype", "bnas_xnor", "--out", "x", "--set", "retrain.lrr=1"], "did you mean 'lr'"),
        (
            ["retrain", "--genotype", "bnas_xnor", "--out", "x", "--binarization", "xnr"],
            "binarization.method",
        ),
        (
            ["retrain", "--genotype", "bnas_xnor", "--out", "x", "--epochs", "-1"],
            "retrain.epochs: must be >= 1",
        ),
        (["retrain", "--genotype", "bnas_xnor", "--out", "x", "--config", "missing.yaml"], "no such file"),
        (["retrain", "--genotype", "nope.json", "--out", "x"], "neither a reference genotype"),
    ],
)
def test_user_errors_exit_2(argv: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_missing_dataset_says_how_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "retrain",
        "--genotype",
        "bnas_xnor",
        "--data-root",
        str(tmp_path / "nothing"),
        "--out",
        str(tmp_path),
    ]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 not found") and "--data-root" in err


def test_retrain_smoke(fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [
        "retrain", "--genotype", "pc_darts", "--binarization", "xnor", "--channels", "4", "--layers", "3",
        "--epochs", "1", "--train-subset", "32", "--test-subset", "20", "--image-size", "16",
        "--data-root", str(fake_cifar_root), "--device", "cpu", "--out", str(out),
        "--set", "retrain.batch_size=16", "--set", "retrain.init_channels=99",  # the flag wins over --set
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    final = json.loads(captured.out)
    assert SIZE_KEYS | {"test_acc", "genotype_digest"} <= set(final) and final["epochs"] == 1
    assert "epoch 1/1" in captured.err and "eta" in captured.err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["retrain"]["init_channels"] == 4 and cfg["retrain"]["batch_size"] == 16
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "metrics.jsonl", "final.json", "model.bnas"}


def test_settings_prints_the_provenance_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("search.sampling_k "))
    assert row.split()[1:3] == ["[R]", "2"]
    assert len(lines) > 50


def test_search_delegates_to_bnas_search(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("bnas.search")
    fake.main = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "bnas.search", fake)
    assert main(["search", "--config", "x.yaml", "--quiet"]) == 7
    assert calls == [["--config", "x.yaml", "--quiet"]]
