"""A dataset in memory at the configured resolution, cached per process, and its model-facing info.

Images are held as one ``uint8`` tensor ``N x 3 x S x S`` per split, resized once here (never per item)
and augmented per item on tensors later (:mod:`bnas.data.transforms`). Loaded data is cached in-process,
keyed by dataset name, path and size, because the search and the retraining of one run load the same data.

Class folders too large for memory are streamed instead (:mod:`bnas.data.streaming`); :func:`get_info`
and :func:`dataset_labels` serve both paths, so the splits never decode an image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bnas.data.roots import resolve_root, root_origin
from bnas.data.sources import (
    DATASETS,
    DatasetInfo,
    RawArrays,
    _FolderSource,
    clear_source_caches,
    resize_uint8,
)
from bnas.data.streaming import clear_index_cache, folder_index, stream_info, uses_streaming

if TYPE_CHECKING:  # annotations only: bnas.config imports this package (DATASETS), not the reverse
    from bnas.config import DataConfig


@dataclass(frozen=True)
class LoadedData:
    """A whole dataset in memory at the configured resolution. Shared via the cache: never modify in place."""

    train_images: torch.Tensor  # uint8, N x C x S x S
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    info: DatasetInfo
    root: Path


def _resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a whole uint8 batch once (bilinear, antialiased) so that no item is resized per step."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        out[i : i + chunk] = resize_uint8(images[i : i + chunk], size)
    return out


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str, image_size: int, on_bad: str) -> LoadedData:
    source = DATASETS.get(name)
    if isinstance(source, _FolderSource):  # files that may be unreadable: skip or stop per data.on_bad_image
        arrays = source.read(Path(root), image_size, on_bad)
    else:
        arrays = source.read(Path(root), image_size)
    arrays = RawArrays(
        _resize(arrays.train_images, image_size),
        arrays.train_labels,
        _resize(arrays.test_images, image_size),
        arrays.test_labels,
        arrays.classes,
    )
    info = source.info_from(arrays, image_size)
    return LoadedData(
        arrays.train_images,
        arrays.train_labels,
        arrays.test_images,
        arrays.test_labels,
        arrays.classes,
        info,
        Path(root),
    )


def load_dataset(cfg: DataConfig) -> LoadedData:
    """The whole dataset at ``cfg.image_size`` (cached in-process by dataset name, path and size).

    Raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) when the files are missing and
    ``cfg.download`` is false, and :class:`~bnas.registry.UnknownNameError` for an unknown dataset name.
    """
    source = DATASETS.get(cfg.dataset)
    root = source.ensure(resolve_root(cfg), cfg.download, root_origin(cfg))
    return _load_cached(cfg.dataset, str(root), int(cfg.image_size), cfg.on_bad_image)


def dataset_labels(cfg: DataConfig, split: str) -> torch.Tensor:
    """The labels of ``split`` (``train`` or ``test``) in image order, from the file index when the
    dataset is streamed (no image decoded), else from the loaded data."""
    if uses_streaming(cfg):
        index = folder_index(cfg)
        return index.train_labels if split == "train" else index.test_labels
    data = load_dataset(cfg)
    return data.train_labels if split == "train" else data.test_labels


def clear_cache() -> None:
    """Forget every loaded dataset and scanned folder (tests; or to free memory)."""
    _load_cached.cache_clear()
    clear_source_caches()
    clear_index_cache()


def get_info(cfg: DataConfig) -> DatasetInfo:
    """Classes, channels and normalisation of ``cfg.dataset``.

    CIFAR's constants need no file; an in-memory ``folder`` loads its data (cached) to compute mean and
    std, a streamed one estimates them from a sample (``imagenet``: published constants).
    """
    source = DATASETS.get(cfg.dataset)
    if isinstance(source, _FolderSource):  # the class count (and maybe the statistics) need the files
        return stream_info(cfg) if uses_streaming(cfg) else load_dataset(cfg).info
    info = source.static_info(int(cfg.image_size))
    return info if info is not None else load_dataset(cfg).info
