"""The torch-free catalogues name exactly what the registries build, and configuration stays torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bnas import catalog

REPO = Path(__file__).resolve().parents[1]


def test_every_registry_registers_exactly_its_catalogue() -> None:
    from bnas.binarization import BINARIZATIONS
    from bnas.data import DATASETS
    from bnas.networks import NETWORKS
    from bnas.reduction import REDUCTIONS

    for registry, names in (
        (BINARIZATIONS, catalog.BINARIZATIONS),
        (REDUCTIONS, catalog.REDUCTIONS),
        (DATASETS, catalog.DATASETS),
        (NETWORKS, catalog.NETWORKS),
    ):
        assert registry.names() == names.names(), registry.kind


def test_the_catalogues_facts_match_the_registries() -> None:
    from bnas.data import DATASETS

    for name in catalog.DATASETS:
        info = DATASETS.get(name).static_info(32)
        if name in catalog.FIXED_CLASSES:  # CIFAR: fixed by the format
            assert catalog.FIXED_CLASSES[name] == info.num_classes, name
        else:  # class folders: counted when read (imagenet's 1000 is nominal, a folder may hold fewer)
            assert name in ("folder", "imagenet"), name
        assert catalog.resolve_network("auto", name) == getattr(
            DATASETS.get(name), "default_network", "cifar"
        )


def test_a_catalogue_complains_like_a_registry() -> None:
    from bnas.reduction import REDUCTIONS

    assert catalog.REDUCTIONS.check("greedy") == REDUCTIONS.check("greedy")
    assert catalog.REDUCTIONS.check("ucb") is None and catalog.NetworkChoice().check("auto") is None
    with pytest.raises(KeyError, match="unknown network 'resnet'"):
        catalog.resolve_network("resnet", "cifar10")


def test_configuration_imports_no_torch() -> None:
    code = "import bnas.config, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
