"""Shared fixtures: a tiny fake CIFAR-10 for every machine, and a real copy where one is available.

The real copy is found by ``$BNAS_TEST_DATA_ROOT`` (a folder holding ``cifar-10-batches-py/``), else
``../shared/data`` next to the checkout (this project's machines). ``BNAS_TEST_DATA_ROOT=none`` hides
both: the suite then runs as on a fresh clone, on the fake dataset alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from bnas.testing import make_fake_cifar

# The rebuilt CIFAR-10 copy lives next to the repository, never inside it (see ../shared/data/README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Points the tests at a real CIFAR-10 (a separate name from BNAS_DATA_ROOT, which the CLIs read).
TEST_DATA_ENV = "BNAS_TEST_DATA_ROOT"


def real_cifar_root(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The real CIFAR-10 the tests may use: ``$BNAS_TEST_DATA_ROOT`` when set (any value that is not a
    folder with ``cifar-10-batches-py/``, such as ``none``, means "no real data"), else ../shared/data."""
    raw = environ.get(TEST_DATA_ENV)
    root = Path(raw).expanduser() if raw is not None else SHARED_DATA
    return root.resolve() if raw != "" and (root / "cifar-10-batches-py").is_dir() else None


@pytest.fixture(scope="session")
def fake_cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200/100-image CIFAR-10 in torchvision's layout, written once per test session."""
    return make_fake_cifar(tmp_path_factory.mktemp("fake_cifar"))


@pytest.fixture(scope="session")
def cifar_root(fake_cifar_root: Path) -> Path:
    """The real CIFAR-10 (:func:`real_cifar_root`) when there is one, else the fake one (a fresh clone)."""
    return real_cifar_root() or fake_cifar_root


@pytest.fixture(scope="session")
def real_cifar() -> Path:
    """The real CIFAR-10 copy (:func:`real_cifar_root`); the test is skipped where there is none."""
    root = real_cifar_root()
    if root is None:
        pytest.skip(f"no real CIFAR-10 copy (set {TEST_DATA_ENV}, or place one at {SHARED_DATA})")
    return root


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny test tensors run fastest on one thread, and two OpenMP threads thrash on a busy 2-core box."""
    import torch

    torch.set_num_threads(1)


# The platform's session fixtures (a Ray head of our own, one real smoke study) live beside the
# platform tests; they are registered here so the analysis tests reuse the same smoke study.
sys.path.insert(0, str(Path(__file__).resolve().parent / "platform"))
from platform_fixtures import ray_head, smoke_study  # noqa: E402, F401  (pytest fixtures)

_NOT_CORE = ("platform", "analysis", "benchmarks")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of the core (not under tests/platform, tests/analysis, tests/benchmarks) ``core``:
    the fast tier is ``python -m pytest -q -m "core and not slow"`` (no Ray, no MLflow, no study)."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(tests_dir)
        if rel.parts[0] not in _NOT_CORE:
            item.add_marker(pytest.mark.core)
