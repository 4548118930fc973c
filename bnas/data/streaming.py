"""Class-folder datasets read lazily: an index of file names, each image decoded per item in the workers.

The in-memory path (:mod:`bnas.data.loading`) decodes every image once into one uint8 tensor: fastest for
CIFAR and small folders, but ImageNet at 224 px would need about 190 GB. The streaming path keeps only
the index in memory -- the file names as one fixed-width byte array (no Python object per file, so
forked DataLoader workers do not copy it page by page through reference counts) and an int64 label
per file -- and decodes each image in :meth:`StreamingImageDataset.__getitem__`, in the DataLoader's
worker processes. Resident memory is then flat in the number of images (``benchmarks/bench_stream_loader.py``
measures it), at the price of decoding every image in every epoch.

Which path a run takes is :func:`uses_streaming`: ``data.storage`` = ``memory`` or ``stream`` forces it;
``auto`` streams a class-folder dataset when its decoded images at ``data.image_size`` would take more
than ``data.memory_budget_mib``. CIFAR's pickles are always read into memory.

Layout: ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (``val/`` accepted for ``test/``, as in
ImageNet); the file listing and its order are :class:`~bnas.data.sources._FolderSource`'s, so both paths
number the images identically and the same seed selects the same images. The ``imagenet`` dataset is
this layout with ImageNet's published normalisation and the ImageNet network by default.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bnas.data.roots import resolve_root, root_origin
from bnas.data.sources import (
    DATASETS,
    BadDatasetError,
    DataIntegrityWarning,
    DatasetInfo,
    _channel_stats,
    _FolderSource,
    _to_square,
    decode_rgb,
)

if TYPE_CHECKING:  # annotations only: bnas.config imports this package (DATASETS), not the reverse
    from bnas.config import DataConfig

#: [D] Streamed folders without published constants are normalised with the statistics of this many
#: training images (a fixed random sample), decoded once at the run's size: an estimate of the
#: mean and std that costs a fraction of a second instead of a pass over the whole dataset.
STATS_SAMPLE = 256
#: [D] With ``data.on_bad_image: skip``, an unreadable file is replaced by the next item; give up (and
#: raise) after this many unreadable files in a row, which means the folder, not a file, is broken.
MAX_CONSECUTIVE_BAD = 32


@dataclass(frozen=True)
class FolderIndex:
    """The files of a class-folder dataset: names relative to ``root`` and labels, per split.

    ``train_files`` / ``test_files`` are fixed-width byte strings (numpy ``S`` arrays: one flat buffer);
    labels index :attr:`classes` (the sorted training class folders).
    """

    root: Path
    classes: tuple[str, ...]
    train_files: np.ndarray
    train_labels: torch.Tensor
    test_files: np.ndarray
    test_labels: torch.Tensor
    test_split: str

    def counts(self, split: str) -> dict[str, int]:
        """Images per class of ``split`` (``train`` or ``test``), every training class listed."""
        labels = self.train_labels if split == "train" else self.test_labels
        n = torch.bincount(labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, n, strict=True))

    def decoded_bytes(self, image_size: int) -> int:
        """What the in-memory path would hold: every image of both splits as uint8 at ``image_size``."""
        return (len(self.train_files) + len(self.test_files)) * 3 * image_size * image_size


def _scan(root: Path, source: _FolderSource) -> FolderIndex:
    classes = tuple(source._files(root / "train"))
    index = {c: i for i, c in enumerate(classes)}
    test_dir = source.test_dir(root)

    def split(folder: Path) -> tuple[np.ndarray, torch.Tensor]:
        names: list[bytes] = []
        labels: list[int] = []
        for cls, files in source._files(folder).items():
            for p in files:
                names.append(str(p.relative_to(root)).encode("utf-8", "surrogateescape"))
                labels.append(index[cls])
        # dtype "S": one contiguous block of fixed-width names; at least one byte wide when empty.
        files = np.array(names, dtype=bytes) if names else np.zeros(0, "S1")
        return files, torch.tensor(labels, dtype=torch.int64)

    train_files, train_labels = split(root / "train")
    test_files, test_labels = split(test_dir)
    return FolderIndex(root, classes, train_files, train_labels, test_files, test_labels, test_dir.name)


@functools.lru_cache(maxsize=4)
def _index_cached(name: str, root: str) -> FolderIndex:
    source = DATASETS.get(name)
    assert isinstance(source, _FolderSource)
    return _scan(Path(root), source)


def folder_index(cfg: DataConfig) -> FolderIndex:
    """The file index of ``cfg``'s class-folder dataset (checked by the source's ``ensure``; cached).

    Raises :class:`~bnas.data.sources.DatasetNotFoundError` for a missing folder or an empty training
    class, :class:`~bnas.data.sources.BadDatasetError` for test classes the training set lacks or empty
    test classes, :class:`~bnas.errors.ConfigError` when the dataset is not a class-folder one.
    """
    source = DATASETS.get(cfg.dataset)
    if not isinstance(source, _FolderSource):
        from bnas.errors import ConfigError

        raise ConfigError(
            f"{cfg.dataset!r} is not a class-folder dataset; streaming applies to folder and imagenet",
            key="data.storage",
        )
    return _checked_index(cfg.dataset, str(resolve_root(cfg)), cfg.download, root_origin(cfg))


@functools.lru_cache(maxsize=4)
def _checked_index(name: str, root: str, download: bool, origin: str) -> FolderIndex:
    """The layout check and the scan, once per folder: listing ImageNet's 1.3 M files takes seconds,
    and a run asks for the index many times (storage choice, labels, splits, loaders, info)."""
    checked = DATASETS.get(name).ensure(Path(root), download, origin)
    return _index_cached(name, str(checked))


def is_class_folder(dataset: str) -> bool:
    """Whether the registered dataset ``dataset`` is read from class folders (``folder``, ``imagenet``)."""
    return isinstance(DATASETS.get(dataset), _FolderSource)


def uses_streaming(cfg: DataConfig) -> bool:
    """Whether ``cfg``'s images are decoded per item (True) or held in memory (False); see the module doc."""
    if cfg.storage == "memory":
        return False
    if not isinstance(DATASETS.get(cfg.dataset), _FolderSource):
        return False  # CIFAR: always in memory (a config rule refuses storage: stream for it)
    if cfg.storage == "stream":
        return True
    return folder_index(cfg).decoded_bytes(cfg.image_size) > cfg.memory_budget_mib * 2**20


def clear_index_cache() -> None:
    """Forget every scanned folder (tests; or after files were added)."""
    _index_cached.cache_clear()
    _checked_index.cache_clear()
    _stream_info_cached.cache_clear()


# ------------------------------------------------------------------------------------------ decoding
def _decode_or_none(path: Path, on_bad: str) -> torch.Tensor | None:
    """The image, or None when it is unreadable and ``on_bad`` is ``skip`` (warned once per file)."""
    try:
        return decode_rgb(path)
    except BadDatasetError as e:
        if on_bad != "skip":
            raise BadDatasetError(f"{e}; fix or remove the file, or set data.on_bad_image: skip") from None
        warnings.warn(f"{e}; replaced by the next image (data.on_bad_image: skip)", DataIntegrityWarning,
                      stacklevel=3)
        return None


class StreamingImageDataset(Dataset):
    """Items ``(transform(decode(files[indices[i]])), label)``, decoded when asked for (in the workers).

    Same seeding contract as :class:`~bnas.data.loaders.ImageTensorDataset`: augmentation draws from a
    per-dataset generator seeded with ``seed`` (reseeded per worker and per epoch by the loaders). An
    unreadable file raises :class:`~bnas.data.sources.BadDatasetError` naming it (``on_bad="stop"``) or
    is replaced by the next item of ``indices`` (``on_bad="skip"``), so batches keep their size.
    """

    def __init__(
        self,
        root: Path,
        files: np.ndarray,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
        seed: int = 0,
        on_bad: str = "stop",
    ) -> None:
        self.root, self.files, self.labels = Path(root), files, labels
        self.indices = torch.arange(len(labels)) if indices is None else indices.to(torch.int64)
        self.transform, self.on_bad = transform, on_bad
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self._gen: torch.Generator | None = None  # created lazily, so the dataset pickles for spawn

    def __len__(self) -> int:
        return len(self.indices)

    def path(self, j: int) -> Path:
        """The file of image ``j`` (an index into the whole split, not into ``indices``)."""
        return self.root / self.files[j].decode("utf-8", "surrogateescape")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed)
        for step in range(min(len(self.indices), MAX_CONSECUTIVE_BAD)):
            j = int(self.indices[(i + step) % len(self.indices)])
            img = _decode_or_none(self.path(j), self.on_bad)
            if img is not None:
                x = self.transform(img, self._gen) if self.transform is not None else img
                return x, int(self.labels[j])
        raise BadDatasetError(
            f"{MAX_CONSECUTIVE_BAD} unreadable images in a row from {self.path(int(self.indices[i]))} on "
            f"under {self.root}: the folder, not one file, looks broken"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_gen"] = None
        return state


# ------------------------------------------------------------------------------------------ info
@functools.lru_cache(maxsize=4)
def _stream_info_cached(name: str, root: str, image_size: int, on_bad: str) -> DatasetInfo:
    source = DATASETS.get(name)
    index = _index_cached(name, root)
    fixed = source.static_info(image_size)
    if fixed is not None:  # published constants (imagenet): only the class count comes from the index
        return DatasetInfo(name, len(index.classes), 3, fixed.mean, fixed.std, image_size)
    # A fixed random sample (seed 0: the statistics do not depend on the run seed).
    n = len(index.train_labels)
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].sort().values
    imgs = [_decode_or_none(Path(root) / index.train_files[int(j)].decode("utf-8", "surrogateescape"), on_bad)
            for j in sample]
    stack = torch.stack([_to_square(t, image_size) for t in imgs if t is not None])
    mean, std = _channel_stats(stack)
    return DatasetInfo(name, len(index.classes), 3, mean, std, image_size)


def stream_info(cfg: DataConfig) -> DatasetInfo:
    """Classes and normalisation of a streamed folder: published constants where the dataset has them
    (``imagenet``), else the statistics of a fixed sample of :data:`STATS_SAMPLE` training images."""
    index = folder_index(cfg)
    return _stream_info_cached(cfg.dataset, str(index.root), int(cfg.image_size), cfg.on_bad_image)


def describe_classes(cfg: DataConfig, limit: int = 12) -> str:
    """One line of per-class image counts of both splits (the first ``limit`` classes, then min/max)."""
    index = folder_index(cfg)
    train, test = index.counts("train"), index.counts("test")
    parts = [f"{c} {train[c]}/{test[c]}" for c in list(train)[:limit]]
    more = len(train) - limit
    tail = f", ... ({more} more)" if more > 0 else ""
    lo, hi = min(train.values()), max(train.values())
    used = [
        f"{what} {n}" for what, n in (("train_subset", cfg.train_subset), ("test_subset", cfg.test_subset)) if n
    ]
    in_force = f"; in use: {', '.join(used)} (data.*)" if used else ""
    return (
        f"{len(train)} classes, {sum(train.values())} train / {sum(test.values())} {index.test_split} images "
        f"on disk (per class train/test: {', '.join(parts)}{tail}; train min {lo}, max {hi}){in_force}"
    )


# ------------------------------------------------------------------------------------------ imagenet
class _ImageNetSource(_FolderSource):
    """ImageNet (ILSVRC-2012) in the class-folder layout (``train/<wnid>/*.JPEG``, ``val/<wnid>/*``).

    Normalised with torchvision's ImageNet mean and std [C] (also DARTS' and PC-DARTS' ImageNet scripts);
    ``network: auto`` builds the ImageNet network for it. Any folder in this layout can be named
    ``imagenet`` to get these constants without computing statistics.
    """

    name = "imagenet"
    default_network = "imagenet"
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def static_info(self, image_size: int) -> DatasetInfo | None:
        # The class count comes from the folder (stream_info); 1000 for ILSVRC-2012.
        return DatasetInfo(self.name, 1000, 3, self.mean, self.std, image_size)

    def info_from(self, arrays: Any, image_size: int) -> DatasetInfo:
        return DatasetInfo(self.name, len(arrays.classes), 3, self.mean, self.std, image_size)


DATASETS.add("imagenet", _ImageNetSource())
