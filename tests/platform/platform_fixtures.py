"""Fixtures for the platform tests: a Ray head of our own, and one real smoke study per session.

Imported by tests/conftest.py at collection time, so this module imports neither Ray nor MLflow:
Ray starts (as a subprocess) only when a test asks for ``ray_head`` or ``smoke_study``, and such tests
carry the ``platform`` marker (``pytest -m "not platform"`` starts no Ray at all).

``smoke_study`` runs ``python run.py --study bnas_smoke`` (shrunk with ``--set``: 139 s measured on
a shared, busy 2-core CPU) once per test session, against a Ray head started here, with a real
Optuna storage and a real MLflow SQLite store in a temporary folder, on the session's fake CIFAR-10
(tests/conftest.py: 200/100 images whose colour and stripes depend on the class, so the retrainings
learn above chance, see test_smoke_outcome.py; reading it costs nothing in every trial). Other tests
(the analysis ones too) reuse it read-only.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from platform_helpers import (
    SMOKE_TEST_SETTINGS,
    SmokeStudy,
    cli_env,
    end_group,
    free_port,
    run_cli,
    smoke_args,
)

#: address -> pid of the ``ray start --block`` process of each head started here.
HEAD_PIDS: dict[str, int] = {}


@pytest.fixture(scope="session")
def ray_head() -> str:
    """A Ray head on loopback in its own temp dir and process group (so that neither a colleague's
    ``ray.init()`` nor ``ray stop`` ever meets it); ended with its process group afterwards. It is
    started as the study summary tells users to keep a cluster (``KEEP_CLUSTER_COMMAND``: a
    single-machine cluster), so every study joined to it tests that command."""
    from bnas.platform.cluster import KEEP_CLUSTER_COMMAND

    assignment, _, command = KEEP_CLUSTER_COMMAND.partition(" ray ")
    variable, _, value = assignment.partition("=")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="bnasray", dir="/tmp")  # short: Ray's socket paths must fit
    cmd = [
        sys.executable,  # Ray's console script of this interpreter, whether its venv is activated or not
        "-m",
        "ray.scripts.scripts",
        *shlex.split(command),  # start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1
        "--port",
        str(port),
        "--include-dashboard=false",
        "--num-cpus",
        "2",
        "--temp-dir",
        temp_dir,
        "--block",
    ]
    log = open(Path(temp_dir) / "ray_start.log", "w")
    env = {**cli_env(), variable: value}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    HEAD_PIDS[address] = proc.pid
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited: {(Path(temp_dir) / 'ray_start.log').read_text()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("the Ray head did not come up within 90 s")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` then stops what it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        end_group(proc, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory, ray_head: str, fake_cifar_root: Path) -> SmokeStudy:
    """bnas_smoke, search + retraining, run once per session through ``--address`` (see module doc)."""
    work = tmp_path_factory.mktemp("smoke_study")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    args = smoke_args(
        work / "study", uri, fake_cifar_root, "--address", ray_head, "--quiet", settings=SMOKE_TEST_SETTINGS
    )
    t0 = time.perf_counter()
    res = run_cli(args, cwd=work, timeout=600)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, (
        f"run.py failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    )
    return SmokeStudy(work / "study", uri, "bnas/bnas_smoke", res.stdout + res.stderr, wall)
