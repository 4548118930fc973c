"""The in-memory image dataset and the seeded loaders of the search and of the retraining.

Every random stream of a run (shuffle order and augmentation, per loader) is derived from the run seed,
so the same seed gives the same batches for any ``num_workers``; :func:`reseed_loader` makes each pass a
function of two seeds alone, which is what lets a resumed run repeat an uninterrupted one exactly.

Class folders too large for memory are streamed (:class:`~bnas.data.streaming.StreamingImageDataset`,
decoded in the workers) with the same seeds and index sets; ``transforms`` picks the augmentation
family of the network layout (``cifar`` or ``imagenet``, :func:`~bnas.data.transforms.make_transforms`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from bnas.data.device_loader import DataPlacement, DeviceLoader, device_loader, uint8_bytes
from bnas.data.loading import get_info, load_dataset
from bnas.data.sources import DatasetInfo
from bnas.data.splits import search_split, test_indices, train_indices
from bnas.data.streaming import StreamingImageDataset, folder_index, uses_streaming
from bnas.data.transforms import EvalTransform, TrainTransform, make_transforms

if TYPE_CHECKING:  # annotations only: bnas.config imports this package (DATASETS), not the reverse
    from bnas.config import DataConfig


class ImageTensorDataset(Dataset):
    """Items ``(transform(images[indices[i]]), label)`` over an in-memory uint8 tensor.

    Augmentation randomness comes from a per-dataset ``torch.Generator`` seeded with ``seed``; in
    DataLoader workers :func:`_seed_worker` reseeds it from the worker seed, which the loader derives
    from its own seeded generator, so runs are reproducible for any ``num_workers``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        self.images, self.labels = images, labels
        self.indices = torch.arange(len(labels)) if indices is None else indices.to(torch.int64)
        self.transform = transform
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self._gen: torch.Generator | None = None  # created lazily, so the dataset pickles for spawn

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed)
        j = int(self.indices[i])
        img = self.images[j]
        x = self.transform(img, self._gen) if self.transform is not None else img
        return x, int(self.labels[j])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_gen"] = None
        return state


def _seed_worker(worker_id: int) -> None:
    """Give each worker its own augmentation stream (otherwise all workers would repeat the same one)."""
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):  # in-memory or streamed
        info.dataset.reseed(info.seed % 2**63)


def _derive(seed: int, stream: int) -> int:
    """Independent-looking seeds for the different random streams of one run."""
    return (int(seed) * 1_000_003 + stream * 7_919 + 12_345) % 2**63


def _run_transforms(
    cfg: DataConfig, info: DatasetInfo, kind: str, streamed: bool, cutout: int = 0, autoaugment: bool = False
) -> tuple[Any, Any]:
    """(train, eval) transforms of family ``kind`` with the data section's ImageNet settings."""
    return make_transforms(
        kind, info, cfg.image_size, streamed, cutout=cutout, autoaugment=autoaugment,
        crop_scale_min=cfg.crop_scale_min, jitter=cfg.color_jitter, hue=cfg.hue_jitter,
        eval_crop=cfg.eval_crop,
    )


def _streamed(
    cfg: DataConfig, split: str, indices: torch.Tensor, transform: Any, seed: int
) -> StreamingImageDataset:
    """The streamed dataset over ``indices`` of ``split`` (``train`` or ``test``)."""
    index = folder_index(cfg)
    files, labels = (
        (index.train_files, index.train_labels) if split == "train" else (index.test_files, index.test_labels)
    )
    return StreamingImageDataset(index.root, files, labels, indices, transform, seed, cfg.on_bad_image)


def _loader(
    dataset: ImageTensorDataset | StreamingImageDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    cfg: DataConfig,
    device: torch.device | str | None,
) -> DataLoader:
    pin = device is not None and torch.device(device).type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=False,
        num_workers=cfg.num_workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker if cfg.num_workers > 0 else None,
    )


def reseed_loader(loader: DataLoader, order_seed: int, augment_seed: int) -> None:
    """Make the next pass over ``loader`` a function of the two seeds alone: the shuffle order (the
    loader's generator, which its RandomSampler shares) and the augmentation (the dataset's stream).
    Reseeding before every epoch is what makes resumed runs repeat uninterrupted ones exactly."""
    if loader.generator is not None:
        loader.generator.manual_seed(order_seed)
    if hasattr(loader.dataset, "reseed"):
        loader.dataset.reseed(augment_seed)


#: The (augmentation, order) seed streams of the search's two splits (see :func:`_derive`).
_SEARCH_STREAMS = {"train": (1, 3), "val": (2, 4)}


def _search_loader(
    split: str,
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    device: torch.device | None,
    placement: DataPlacement | None,
    transforms: str = "cifar",
) -> tuple[DataLoader | DeviceLoader, DatasetInfo]:
    """One split (``train`` or ``val``) of the search split, with that split's own seed streams.

    Whether the images go to the device is decided for the whole search split (both halves), so
    every loader of a search lands in the same place whichever split it serves.
    """
    train_idx, val_idx = search_split(cfg, seed)
    idx = train_idx if split == "train" else val_idx
    aug_stream, order_stream = _SEARCH_STREAMS[split]
    if uses_streaming(cfg):
        info = get_info(cfg)
        aug, _ = _run_transforms(cfg, info, transforms, streamed=True)
        ds_s = _streamed(cfg, "train", idx, aug, _derive(seed, aug_stream))
        return _loader(ds_s, batch_size, True, _derive(seed, order_stream), cfg, device), info
    data = load_dataset(cfg)
    aug = (
        TrainTransform.for_size(data.info, cfg.image_size)
        if transforms == "cifar"
        else _run_transforms(cfg, data.info, transforms, streamed=False)[0]
    )
    # The device loader batches the CIFAR augmentation only; other families stay on the CPU loader.
    if transforms == "cifar" and placement is not None and placement.on_device(
        device, uint8_bytes(data.train_images, [train_idx, val_idx])
    ):
        x, y = data.train_images, data.train_labels
        loader = device_loader(
            x, y, idx, aug, device, batch_size, True, _derive(seed, aug_stream), _derive(seed, order_stream)
        )
        return loader, data.info
    ds = ImageTensorDataset(data.train_images, data.train_labels, idx, aug, _derive(seed, aug_stream))
    return _loader(ds, batch_size, True, _derive(seed, order_stream), cfg, device), data.info


def search_loaders(
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    device: torch.device | None = None,
    placement: DataPlacement | None = None,
    transforms: str = "cifar",
) -> tuple[DataLoader | DeviceLoader, DataLoader | DeviceLoader, DatasetInfo]:
    """(train, val, info) over the search split; both augmented with crop + flip (no cutout), as in DARTS
    (``transforms="imagenet"``: random resized crop, flip and colour jitter, as PC-DARTS on ImageNet).

    With a ``placement`` that puts the images on ``device``, both are :class:`DeviceLoader` objects
    (same seeds, batches built on the device; see :mod:`bnas.data.device_loader`).
    """
    train, info = _search_loader("train", cfg, batch_size, seed, device, placement, transforms)
    val, _ = _search_loader("val", cfg, batch_size, seed, device, placement, transforms)
    return train, val, info


def search_train_loader(
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    device: torch.device | None = None,
    placement: DataPlacement | None = None,
    transforms: str = "cifar",
) -> DataLoader | DeviceLoader:
    """The train half of the search split alone, at another batch size (the sampled sub-networks'):
    the same loader :func:`search_loaders` would return first, without building the validation one."""
    return _search_loader("train", cfg, batch_size, seed, device, placement, transforms)[0]


def retrain_loaders(
    cfg: DataConfig,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    cutout: int = 0,
    autoaugment: bool = False,
    device: torch.device | None = None,
    placement: DataPlacement | None = None,
    transforms: str = "cifar",
) -> tuple[DataLoader | DeviceLoader, DataLoader | DeviceLoader, DatasetInfo]:
    """(train, test, info): the whole (subset) training set augmented, the (subset) test set normalised.

    ``cutout`` is the hole side at 32x32 (scaled with ``cfg.image_size``); 0 turns it off. With a
    ``placement`` that puts the images on ``device`` (never with AutoAugment), both are
    :class:`DeviceLoader` objects. ``transforms="imagenet"``: the ImageNet family (no Cutout or
    AutoAugment; resize + centre crop for the streamed test set), always on the CPU loader.
    """
    if uses_streaming(cfg) or transforms != "cifar":
        return _retrain_loaders_cpu(cfg, batch_size, eval_batch_size, seed, cutout, autoaugment, device,
                                    transforms)
    data = load_dataset(cfg)
    aug = TrainTransform.for_size(data.info, cfg.image_size, cutout=cutout, autoaugment=autoaugment)
    train_idx, test_idx = train_indices(cfg), test_indices(cfg)
    if placement is not None:
        nbytes = uint8_bytes(data.train_images, [train_idx]) + uint8_bytes(data.test_images, [test_idx])
        if placement.on_device(device, nbytes, autoaugment):
            norm = EvalTransform(data.info.mean, data.info.std)
            return (
                device_loader(data.train_images, data.train_labels, train_idx, aug, device, batch_size, True,
                              _derive(seed, 5), _derive(seed, 6)),
                device_loader(data.test_images, data.test_labels, test_idx, norm, device, eval_batch_size,
                              False, 0, _derive(seed, 7)),
                data.info,
            )
    train_ds = ImageTensorDataset(data.train_images, data.train_labels, train_idx, aug, _derive(seed, 5))
    test_ds = ImageTensorDataset(
        data.test_images, data.test_labels, test_idx, EvalTransform(data.info.mean, data.info.std)
    )
    return (
        _loader(train_ds, batch_size, True, _derive(seed, 6), cfg, device),
        _loader(test_ds, eval_batch_size, False, _derive(seed, 7), cfg, device),
        data.info,
    )


def _retrain_loaders_cpu(
    cfg: DataConfig,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    cutout: int,
    autoaugment: bool,
    device: torch.device | None,
    transforms: str,
) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """:func:`retrain_loaders` for streamed data or the ImageNet family: CPU loaders, same seed streams."""
    streamed = uses_streaming(cfg)
    info = get_info(cfg)
    aug, norm = _run_transforms(cfg, info, transforms, streamed, cutout, autoaugment)
    train_idx, test_idx = train_indices(cfg), test_indices(cfg)
    if streamed:
        train_ds: Any = _streamed(cfg, "train", train_idx, aug, _derive(seed, 5))
        test_ds: Any = _streamed(cfg, "test", test_idx, norm, 0)
    else:
        data = load_dataset(cfg)
        train_ds = ImageTensorDataset(data.train_images, data.train_labels, train_idx, aug, _derive(seed, 5))
        test_ds = ImageTensorDataset(data.test_images, data.test_labels, test_idx, norm)
    return (
        _loader(train_ds, batch_size, True, _derive(seed, 6), cfg, device),
        _loader(test_ds, eval_batch_size, False, _derive(seed, 7), cfg, device),
        info,
    )
