"""Which images a run uses: class-balanced orders, the fixed subsets and the seeded search split.

Subsets (``data.train_subset`` / ``data.test_subset``) are class-balanced and fixed (independent of the run
seed, so runs with different seeds see the same images); the search split is stratified and seeded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bnas.data.loading import dataset_labels
from bnas.errors import ConfigError

if TYPE_CHECKING:  # annotations only: bnas.config imports this package (DATASETS), not the reverse
    from bnas.config import DataConfig

# [D] The subsets must not depend on the run seed: runs with different seeds are compared on the same images.
SUBSET_SEED = 0


def balanced_order(labels: torch.Tensor, seed: int, proportional: bool = False) -> torch.Tensor:
    """A seeded permutation of ``range(len(labels))`` whose every prefix is class-balanced.

    Within each class the order is random. ``proportional=False`` interleaves the classes round-robin
    (a prefix of N holds N / num_classes of each class while every class still has images);
    ``proportional=True`` interleaves by the fraction of each class already taken, so a prefix holds the
    same share of every class (stratification for imbalanced data). Ties between classes follow a seeded
    random class order, so the remainder of N / num_classes does not always go to the first classes.
    """
    n = len(labels)
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    lab = labels[perm].to(torch.int64)
    num_classes = int(lab.max()) + 1
    # Rank of each element within its class, in the random order of ``perm``.
    by_class = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - starts[lab[by_class]]
    key = (rank.double() + 0.5) / counts[lab].double() if proportional else rank.double()
    priority = torch.randperm(num_classes, generator=g)
    # Lexicographic sort by (key, class priority): stable sort by the minor key first, then the major.
    idx = torch.argsort(priority[lab], stable=True)
    idx = idx[torch.argsort(key[idx], stable=True)]
    return perm[idx]


def _subset(
    labels: torch.Tensor, n: int | None, key: str, what: str, fraction: float | None = None
) -> torch.Tensor:
    """Sorted indices of a class-balanced subset of size ``n`` (all indices when ``n`` and ``fraction``
    are None); ``fraction`` takes that share of every class instead (stratified: the class proportions
    of the whole set are kept, as PC-DARTS' ImageNet search samples 10 % + 2.5 % of the training set)."""
    total = len(labels)
    if fraction is not None:
        n_frac = max(1, round(total * fraction))
        return balanced_order(labels, SUBSET_SEED, proportional=True)[:n_frac].sort().values
    if n is None:
        return torch.arange(total)
    if n > total:
        raise ConfigError(f"{n} exceeds the {total} {what} images available; use at most {total} or null",
                          key=key)
    return balanced_order(labels, SUBSET_SEED)[:n].sort().values


def train_indices(cfg: DataConfig) -> torch.Tensor:
    """Indices of the training images a run uses (``data.train_subset``, class-balanced, or
    ``data.train_fraction``, stratified; both fixed)."""
    return _subset(
        dataset_labels(cfg, "train"), cfg.train_subset, "data.train_subset", f"{cfg.dataset} training",
        cfg.train_fraction,
    )


def test_indices(cfg: DataConfig) -> torch.Tensor:
    """Indices of the test images a run uses (``data.test_subset``, class-balanced, fixed)."""
    return _subset(dataset_labels(cfg, "test"), cfg.test_subset, "data.test_subset", f"{cfg.dataset} test")


test_indices.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


def search_split(cfg: DataConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): the (subset of the) training set split for the search, stratified by class.

    ``val_fraction`` of every class is held out for the architecture step. Indices refer to the full
    training set, are sorted, disjoint, and depend only on the data, the subset and ``seed``.
    """
    base = train_indices(cfg)
    n = len(base)
    if n < 2:
        raise ValueError(f"the search split needs at least 2 training images, the run has {n}")
    n_val = min(n - 1, max(1, round(n * cfg.val_fraction)))
    labels = dataset_labels(cfg, "train")[base]
    order = balanced_order(labels, seed, proportional=True)
    val = base[order[:n_val]].sort().values
    train = base[order[n_val:]].sort().values
    return train, val
