"""A first run that just works: ``python run.py --study bnas_smoke`` with no data flag fetches CIFAR-10
into ``./data`` (torchvision, checksums checked), and says how to point at a copy where it cannot.

``run.py --check`` in-process (preflight: dataset, store, identity; no Ray), against the loopback file
server of tests/test_download.py serving a fake archive in the official layout.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torchvision.datasets as tvd
from platform_helpers import load_run_main
from test_download import ARCHIVE, _point_torchvision_at, served  # noqa: F401  (served: a fixture)

pytestmark = [pytest.mark.platform, pytest.mark.filterwarnings("ignore::bnas.data.DataIntegrityWarning")]


@pytest.fixture(scope="module")
def run_main():
    return load_run_main("bnas_run_py_first")


@pytest.fixture
def fresh_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A new user's working folder: no data, no data root in the environment."""
    monkeypatch.chdir(tmp_path)
    for var in (
        "BNAS_DATA_ROOT",
        "RAY_ADDRESS",
        "MLFLOW_TRACKING_URI",
        "RAY_AIR_NEW_OUTPUT",
        "MLFLOW_LOGGING_LEVEL",
        "RAY_USAGE_STATS_ENABLED",
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_no_data_flag_downloads_cifar_into_dot_data(
    run_main,
    capsys,
    fresh_folder: Path,
    served,  # noqa: F811  (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no root named anywhere, a run fetches CIFAR-10 into ./data; --check never downloads: it
    names the missing dataset and creates nothing."""
    url, www, files = served
    _point_torchvision_at(monkeypatch, f"{url}/{ARCHIVE}", www, files)
    argv = ["--study", "bnas_smoke", "--mlflow-uri", f"sqlite:///{fresh_folder / 'm.db'}"]
    argv += ["--set", "fixed.data.train_subset=64", "--set", "fixed.data.test_subset=10"]
    assert run_main([*argv, "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 not found") and "--check never downloads" in err, err
    assert sorted(p.name for p in fresh_folder.iterdir()) == []  # no ./data, no store
    # A run's steps before Ray: loading the study (download on: no root was named), then the dataset.
    from bnas.platform.orchestrate import check_dataset

    load, parse = run_main.__globals__["_load_study"], run_main.__globals__["parse_args"]
    spec = load(parse(argv))
    assert spec.base_config.data.download
    check_dataset(spec)
    assert (fresh_folder / "data" / "cifar-10-batches-py" / "data_batch_1").is_file()


def test_named_root_is_never_downloaded_into(run_main, capsys, fresh_folder: Path) -> None:
    """A mistyped --data-root is an error naming the folder, not a download into it."""
    rc = run_main(["--study", "bnas_smoke", "--check", "--data-root", str(fresh_folder / "typo")])
    err = capsys.readouterr().err
    assert rc == 2 and "not found" in err and str(fresh_folder / "typo") in err, err
    assert not (fresh_folder / "typo").exists()


def test_offline_first_run_says_how_to_point_at_a_copy(
    run_main, capsys, fresh_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port nobody listens on: what an offline machine answers
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(tvd.CIFAR10, "url", f"http://127.0.0.1:{port}/{ARCHIVE}")
    # A run (not --check, which never downloads) fails in its preflight, before Ray starts.
    rc = run_main(["--study", "bnas_smoke", "--quiet", "--mlflow-uri", f"sqlite:///{fresh_folder / 'm.db'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: CIFAR-10: download into ") and err.count("\n") == 1, err
    assert "Without network" in err and "--data-root" in err and "$BNAS_DATA_ROOT" in err
