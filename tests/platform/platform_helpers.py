"""Helpers of the platform tests: run.py as a subprocess, process groups, the smoke-study record."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_PY = REPO / "run.py"


def load_run_main(module_name: str):
    """``run.main`` from a fresh import of run.py under ``module_name`` (run.py is a script, not a
    package module; each test file imports its own copy)."""
    spec = importlib.util.spec_from_file_location(module_name, RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


#: ``--set`` items that shrink bnas_smoke to a test: 3 trials of 2 reduction stages (3 ops per edge),
#: images that the fake 200/100-image CIFAR of tests/conftest.py also has, top-2 x 2 seeds retrained
#: for 30 SGD steps (10 epochs of 3 batches: enough to learn the fake classes' colours, see
#: test_smoke_outcome.py; 12 steps left every retraining at exactly chance).
SMOKE_TEST_SETTINGS = [
    "trials=3",
    "fixed.search.ops=[skip_connect,sep_conv_3x3,max_pool_3x3]",
    "fixed.data.train_subset=192",
    "fixed.data.test_subset=100",
    "retrain.top_k=2",
    "retrain.seeds=[0,1]",
    "retrain.overrides.data.train_subset=192",
    "retrain.overrides.data.test_subset=100",
    "retrain.overrides.retrain.epochs=10",
]


def smoke_args(out: Path, uri: str, data_root: Path, *extra: str, settings: Sequence[str] = ()) -> list[str]:
    """run.py arguments for bnas_smoke in the folder ``out`` with the store ``uri``, plus ``--set``s."""
    args = [
        "--study",
        "bnas_smoke",
        "--out",
        str(out),
        "--mlflow-uri",
        uri,
        "--data-root",
        str(data_root),
        *extra,
    ]
    for item in settings:
        args += ["--set", item]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict[str, str]:
    """The environment for run.py subprocesses: no inherited cluster or data root, no usage stats."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "BNAS_DATA_ROOT", "MLFLOW_TRACKING_URI")
    }
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN_PY), *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """run.py in its own process group, so everything it spawns can be ended with it."""
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, str(RUN_PY), *args],
            cwd=cwd,
            env=cli_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def end_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group ``proc`` leads (only processes this test started)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class SmokeStudy:
    """A finished smoke study: its folder, MLflow store and what the run printed."""

    out_dir: Path
    tracking_uri: str
    experiment_name: str
    stdout: str
    wall_s: float

    @property
    def optuna_storage(self) -> str:
        return f"sqlite:///{self.out_dir / 'optuna.db'}"


#: Environment variables run.py's main sets or reads (Ray, MLflow, the data root).
RUN_PY_ENV = (
    "RAY_USAGE_STATS_ENABLED",
    "RAY_AUTH_MODE",
    "RAY_ADDRESS",
    "BNAS_DATA_ROOT",
    "MLFLOW_TRACKING_URI",
    "RAY_AIR_NEW_OUTPUT",
    "MLFLOW_LOGGING_LEVEL",
)


def isolate_run_env(monkeypatch, tmp_path: Path) -> None:
    """An in-process run.main that gives its environment variables back afterwards and runs in
    ``tmp_path`` (MLflow's default artifact folder is ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    for var in RUN_PY_ENV:
        monkeypatch.delenv(var, raising=False)


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (created) with ``options`` (``size=2m``, ``ro,size=1m``...), for
    a full or read-only file system; the test is skipped where mounting is not allowed."""
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
