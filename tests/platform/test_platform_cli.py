"""run.py on bad input: one ``error: ...`` paragraph, exit status 2, and nothing written.

Most cases run ``run.main`` in-process (no Ray start needed: they fail before it); the GPU case
needs a cluster to ask: a subprocess whose run.py starts a local one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from platform_helpers import free_port, isolate_run_env, load_run_main, run_cli, smoke_args

from bnas.platform.tracking import StudyTracker, TrackerConfig


@pytest.fixture(scope="module")
def run_main():
    return load_run_main("bnas_run_py")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """run.main sets Ray's environment variables; give them back afterwards (run in ``tmp_path``)."""
    isolate_run_env(monkeypatch, tmp_path)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def _error(run_main, capsys, argv: list[str]) -> str:
    rc = run_main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one paragraph
    return err


def _args(tmp_path: Path, data_root: Path, *extra: str) -> list[str]:
    return smoke_args(tmp_path / "study", f"sqlite:///{tmp_path / 'mlflow.db'}", data_root, *extra)


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "study").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_list_shows_the_studies(run_main, capsys, clean_env) -> None:
    assert run_main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "bnas_smoke" in out and "bnas_cifar" in out and "2-core CPU" in out


def test_unknown_study(run_main, capsys, clean_env) -> None:
    err = _error(run_main, capsys, ["--study", "bnas_smok"])
    assert "bnas_smoke" in err and "bnas_cifar" in err


def test_malformed_yaml_names_file_and_line(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path
) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("description: x\nfixed:\n  search: {layers: 3\ntrials: 2\n")
    err = _error(
        run_main,
        capsys,
        [
            "--study",
            str(bad),
            "--out",
            str(tmp_path / "study"),
            "--mlflow-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
    )
    assert str(bad) in err and "malformed YAML at line" in err
    _nothing_written(tmp_path)


@pytest.mark.parametrize(
    "override, words",
    [
        ("trials=lots", ["trials", "expected int"]),
        ("fixed.search.chanels=8", ["fixed.search.chanels", "unknown key"]),
        ("space.search.sampling_k={choice: [3]}", ["sampling_k': 3", "not divisible"]),
    ],
)
def test_bad_settings(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path, override: str, words: list[str]
) -> None:
    err = _error(run_main, capsys, _args(tmp_path, fake_cifar_root, "--set", override))
    assert "bnas_smoke.yaml" in err
    for w in words:
        assert w in err
    _nothing_written(tmp_path)


def test_missing_dataset(run_main, capsys, clean_env, tmp_path: Path) -> None:
    err = _error(run_main, capsys, _args(tmp_path, tmp_path / "no_data_here"))
    assert "CIFAR-10 not found" in err and "--data-root" in err
    _nothing_written(tmp_path)


def test_unreachable_cluster(run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path) -> None:
    err = _error(run_main, capsys, _args(tmp_path, fake_cifar_root, "--address", f"127.0.0.1:{free_port()}"))
    assert "no Ray cluster answers" in err
    _nothing_written(tmp_path)


@pytest.mark.parametrize(
    "uri, words",
    [
        ("http://127.0.0.1:{port}", ["no MLflow tracking server answers"]),
        ("file:///tmp/mlruns", ["file store"]),
        ("sqlite:////no/such/folder/mlflow.db", ["does not exist"]),
    ],
)
def test_unusable_tracking_uri(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path, uri: str, words: list[str]
) -> None:
    argv = _args(tmp_path, fake_cifar_root)
    argv[argv.index("--mlflow-uri") + 1] = uri.format(port=free_port())
    err = _error(run_main, capsys, argv)
    for w in words:
        assert w in err
    assert not (tmp_path / "study").exists()


def test_retrain_stage_needs_a_finished_search(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path
) -> None:
    err = _error(run_main, capsys, _args(tmp_path, fake_cifar_root, "--stage", "retrain"))
    assert "no finished search" in err
    _nothing_written(tmp_path)


def test_resume_must_use_the_recorded_tracking_store(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path
) -> None:
    (tmp_path / "study").mkdir()
    StudyTracker(TrackerConfig(f"sqlite:///{tmp_path / 'first.db'}", "bnas_smoke", str(tmp_path / "study")))
    capsys.readouterr()
    err = _error(run_main, capsys, _args(tmp_path, fake_cifar_root, "--resume"))
    assert "first.db" in err


@pytest.mark.platform
def test_gpu_asked_where_none_exists(tmp_path: Path, fake_cifar_root: Path) -> None:
    """A real run on this GPU-less machine is refused before any Ray process starts: the preflight reads
    the resources a local cluster would have (cluster.check_cluster), as --check does."""
    res = run_cli(
        _args(tmp_path, fake_cifar_root, "--no-dashboard", "--set", "resources.gpu=1"),
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "error: " in res.stderr and "resources.gpu" in res.stderr and "has no GPU" in res.stderr
    _nothing_written(tmp_path)


def test_resume_must_use_the_same_study_settings(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path
) -> None:
    (tmp_path / "study").mkdir()
    state = {"search": ["search-1"], "retrain": [], "study_digest": {"search-1": "0123456789ab"}}
    (tmp_path / "study" / "study_state.json").write_text(json.dumps(state))
    err = _error(run_main, capsys, _args(tmp_path, fake_cifar_root, "--resume"))
    assert "other study settings" in err
