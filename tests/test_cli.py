"""The core command line: ``python -m bnas {retrain,summary,settings,search}``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bnas.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SIZE_KEYS = {"params", "binary_params", "fp_params", "packed_bytes", "fp32_bytes"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bnas", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_summary_prints_one_json_object() -> None:
    p = _run(
        "summary", "--genotype", "bnas_xnor", "--channels", "8", "--layers", "5", "--binarization", "xnor"
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)  # exactly one JSON document on stdout
    assert SIZE_KEYS <= set(report)
    assert report["params"] == report["binary_params"] + report["fp_params"]
    assert report["packed_bytes"] < report["fp32_bytes"]


@pytest.mark.slow
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
        (
            ["summary", "--genotype", "bnas_xnor", "--binarization", "ternary"],
            "--binarization: unknown name 'ternary'",
        ),
        (["summary", "--genotype", "bnas_xnor", "--layers", "2"], "--layers: must lie in [3, 100]"),
        (["summary", "--genotype", "bnas_xnor", "--channels", "0"], "--channels: must lie in [1, 1024]"),
        (
            ["summary", "--genotype", "bnas_xnor", "--network", "imagenet", "--channels", "35"],
            "--channels=35 must be even",
        ),
        (["summary", "--genotype", "bnas_xnor", "--num-classes", "0"], "--num-classes: must be >= 1"),
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
    assert row.split()[1:3] == ["[D]", "4"]
    assert len(lines) > 50


def _micro_search_yaml(tmp_path: Path) -> Path:
    """3 ops -> 2 stages of 1 epoch on 8x8 images: a whole search in a few seconds."""
    import yaml

    cfg = {
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "data": {"image_size": 8, "train_subset": 64},
        "search": {"layers": 3, "init_channels": 4, "batch_size": 16, "max_batches_per_epoch": 2,
                   "ops": ["skip_connect", "max_pool_3x3", "sep_conv_3x3"]},
        "reduction": {"strategy": "alpha", "epochs_per_stage": 1, "warmup_epochs": 0},
    }  # fmt: skip
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_search_on_another_runs_folder_exits_2_and_no_resume_starts_over(
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnas.training import RunFolder

    out = tmp_path / "out"
    RunFolder(out, {"seed": 7}).save_checkpoint({"version": 2})  # a checkpoint of some other run
    argv = ["search", "--config", str(_micro_search_yaml(tmp_path)), "--data-root", str(fake_cifar_root),
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {out}: checkpoint.pt is the checkpoint of a different run")
    assert captured.err.count("\n") == 1 and "--no-resume" in captured.err and captured.out == ""

    assert main([*argv, "--no-resume"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["digest"] == json.loads((out / "final.json").read_text())["genotype_digest"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    # The finished folder resumes (nothing left to train) and gives the same genotype again.
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["digest"] == result["digest"]


@pytest.mark.slow
def test_search_mismatch_from_a_shell_prints_no_traceback(tmp_path: Path) -> None:
    from bnas.training import RunFolder

    RunFolder(tmp_path, {"seed": 7}).save_checkpoint({"version": 2})
    p = _run("search", "--config", str(ROOT / "configs" / "search_tiny.yaml"), "--out", str(tmp_path))
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert "seed: 7 in the checkpoint, 0 now" in p.stderr


def test_data_root_precedence_flag_then_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["retrain", "--genotype", "bnas_xnor", "--out", str(tmp_path / "o"), "--device", "cpu"]
    env = {"BNAS_DATA_ROOT": str(tmp_path / "from_env")}
    assert main(argv, environ=env) == 2
    assert f"looked in {tmp_path / 'from_env'}" in capsys.readouterr().err
    assert main([*argv, "--data-root", str(tmp_path / "from_flag")], environ=env) == 2
    assert f"looked in {tmp_path / 'from_flag'}" in capsys.readouterr().err
