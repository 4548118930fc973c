"""Torch-free catalogues of the names the configuration accepts, and the facts it needs about them.

The configuration (:mod:`bnas.config`) checks names and rules without importing torch, torchvision or a
network class: it reads these catalogues. Each registry that builds the real objects
(:data:`bnas.binarization.BINARIZATIONS`, :data:`bnas.reduction.REDUCTIONS`, :data:`bnas.data.DATASETS`,
:data:`bnas.networks.NETWORKS`) registers exactly these names, in this order (tests/test_catalog.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class Catalogue:
    """A fixed, ordered list of names of one kind; a ``choices=`` object of the settings layer (its
    complaint reads like a registry's: ``unknown name 'x'; valid: a, b``)."""

    def __init__(self, kind: str, names: tuple[str, ...]) -> None:
        self.kind, self._names = kind, names

    def names(self) -> list[str]:
        return list(self._names)

    def check(self, name: object) -> str | None:
        if isinstance(name, str) and name in self._names:
            return None
        return f"unknown name {name!r}; valid: {', '.join(self._names)}"

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)


BINARIZATIONS = Catalogue("binarization method", ("xnor", "xnor_channel", "pcnn", "fp"))
REDUCTIONS = Catalogue("reduction strategy", ("performance", "alpha", "none", "ucb"))
DATASETS = Catalogue("dataset", ("cifar10", "cifar100", "folder", "imagenet"))
NETWORKS = Catalogue("network", ("cifar", "imagenet"))

#: Datasets whose class count is fixed by their format (CIFAR); class folders are counted when read.
FIXED_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100}
#: The network layout ``network: auto`` takes for a dataset (``cifar`` where not listed).
DEFAULT_NETWORK: dict[str, str] = {"imagenet": "imagenet"}


class NetworkChoice:
    """The ``network`` setting's valid values: ``auto`` or a layout name (a ``choices=`` object)."""

    def check(self, value: Any) -> str | None:
        if value == "auto":
            return None
        problem = NETWORKS.check(value)
        return None if problem is None else f"{problem} (or auto: from the dataset)"


def resolve_network(network: str, dataset: str) -> str:
    """The layout name for the ``network`` setting: itself, or for ``auto`` the dataset's default."""
    if network != "auto":
        problem = NETWORKS.check(network)
        if problem is not None:
            from bnas.registry import UnknownNameError

            raise UnknownNameError(NETWORKS.kind, network, NETWORKS.names())
        return network
    return DEFAULT_NETWORK.get(dataset, "cifar")
