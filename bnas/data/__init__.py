"""Datasets, class-balanced subsets, the search split, augmentation and the data loaders.

One concept per module:

* :mod:`~bnas.data.roots` -- where the data lives: the one precedence for the dataset folder
  (:func:`resolve_data_root`, for entry points) and :func:`resolve_root` (library: ``data.root`` only).
* :mod:`~bnas.data.sources` -- the :data:`DATASETS` registry (CIFAR-10/100, image folders): layout,
  integrity check, reading from disk.
* :mod:`~bnas.data.loading` -- a dataset in memory at the configured size, cached per process.
* :mod:`~bnas.data.streaming` -- class folders too large for memory: a file index, images decoded per
  item in the loader workers; the ``imagenet`` dataset.
* :mod:`~bnas.data.splits` -- the fixed class-balanced subsets and the seeded search split.
* :mod:`~bnas.data.transforms` -- evaluation normalisation and training augmentation (CIFAR and ImageNet
  families).
* :mod:`~bnas.data.loaders` -- the tensor dataset and the seeded search / retraining loaders.
* :mod:`~bnas.data.device_loader` -- the images held on the accelerator, augmented there in batches.
* :mod:`~bnas.data.cifar_writer` -- writing CIFAR-10 files (a subset of real data, for benchmarks).

Fake datasets for tests are written by :mod:`bnas.testing`. Nothing here reads the environment or
imports :mod:`bnas.config` (which imports :data:`DATASETS`).
"""

from bnas.data.cifar_writer import write_cifar10, write_cifar10_subset
from bnas.data.device_loader import DataPlacement, DeviceAugment, DeviceLoader
from bnas.data.loaders import (
    ImageTensorDataset,
    reseed_loader,
    retrain_loaders,
    search_loaders,
    search_train_loader,
)
from bnas.data.loading import LoadedData, clear_cache, dataset_labels, get_info, load_dataset
from bnas.data.roots import DEFAULT_ROOT, ENV_ROOT, resolve_data_root, resolve_root
from bnas.data.sources import (
    DATASETS,
    BadDatasetError,
    DataIntegrityWarning,
    DatasetInfo,
    DatasetNotFoundError,
    DatasetSource,
)
from bnas.data.splits import balanced_order, search_split, test_indices, train_indices
from bnas.data.streaming import (
    FolderIndex,
    StreamingImageDataset,
    describe_classes,
    folder_index,
    is_class_folder,
    uses_streaming,
)
from bnas.data.transforms import (
    EvalTransform,
    ImageNetEvalTransform,
    ImageNetTrainTransform,
    TrainTransform,
    make_transforms,
)

__all__ = [
    "DATASETS",
    "BadDatasetError",
    "DEFAULT_ROOT",
    "ENV_ROOT",
    "DataIntegrityWarning",
    "DataPlacement",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSource",
    "DeviceAugment",
    "DeviceLoader",
    "EvalTransform",
    "FolderIndex",
    "ImageNetEvalTransform",
    "ImageNetTrainTransform",
    "ImageTensorDataset",
    "LoadedData",
    "StreamingImageDataset",
    "TrainTransform",
    "balanced_order",
    "clear_cache",
    "dataset_labels",
    "describe_classes",
    "folder_index",
    "is_class_folder",
    "get_info",
    "load_dataset",
    "make_transforms",
    "reseed_loader",
    "resolve_data_root",
    "resolve_root",
    "retrain_loaders",
    "search_loaders",
    "search_train_loader",
    "search_split",
    "test_indices",
    "train_indices",
    "uses_streaming",
    "write_cifar10",
    "write_cifar10_subset",
]
