"""Datasets, class-balanced subsets, the search split and the data loaders.

Images are held in memory as one ``uint8`` tensor ``N x 3 x H x W`` per split (CIFAR is read straight from
its pickles, which is much faster than torchvision's PIL-based ``CIFAR10`` dataset) and augmented per item
on tensors. Loaded arrays are cached in-process, keyed by path, because the search and the retraining of
one run both load the same data.

Datasets are chosen by name through :data:`DATASETS`:

* ``cifar10`` / ``cifar100`` -- torchvision's "python version" layouts ``<root>/cifar-10-batches-py/`` and
  ``<root>/cifar-100-python/``. The official MD5 sums are checked for information only: a copy that
  differs (such as the rebuilt copy in ``../shared/data``) is loaded with one :class:`DataIntegrityWarning`.
* ``folder`` -- ``<root>/train/<class>/*.png|jpg`` and ``<root>/test/<class>/...`` (like ImageFolder).

Subsets (``data.train_subset`` / ``data.test_subset``) are class-balanced and fixed (independent of the run
seed, so runs with different seeds see the same images); the search split is stratified and seeded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bnas.config import ConfigError, DataConfig
from bnas.registry import Registry

__all__ = [
    "DATASETS",
    "DataIntegrityWarning",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSource",
    "EvalTransform",
    "ImageTensorDataset",
    "LoadedData",
    "TrainTransform",
    "balanced_order",
    "clear_cache",
    "get_info",
    "load_dataset",
    "make_fake_cifar",
    "make_fake_cifar100",
    "resolve_root",
    "retrain_loaders",
    "search_loaders",
    "search_split",
    "test_indices",
    "train_indices",
]

ENV_ROOT = "BNAS_DATA_ROOT"
DEFAULT_ROOT = "data"
# The subsets must not depend on the run seed: runs with different seeds are compared on the same images.
SUBSET_SEED = 0
# DARTS pads 4 px and cuts 16 px holes at 32x32; both scale with the input side.
NATIVE_CIFAR_SIZE = 32
CROP_PADDING_AT_32 = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataIntegrityWarning(UserWarning):
    """The dataset files differ from the official release; they are loaded anyway."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the configuration says; the message says where it looked and how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its input: classes, channels and the normalisation constants."""

    name: str
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int = NATIVE_CIFAR_SIZE


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


@dataclass(frozen=True)
class _Arrays:
    """What a source reads from disk, before resizing (native resolution where it is uniform)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Root resolution and sources
# --------------------------------------------------------------------------------------------


def resolve_root(cfg: DataConfig) -> Path:
    """``cfg.root`` if set, else ``$BNAS_DATA_ROOT``, else ``./data``; always absolute.

    Absolute because Ray trial processes run in their own working directories, where a relative path
    would point somewhere else.
    """
    raw = cfg.root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    return Path(raw).expanduser().resolve()


def _root_origin(cfg: DataConfig) -> str:
    """Where :func:`resolve_root` took the path from, for error messages."""
    if cfg.root:
        return "data.root"
    if os.environ.get(ENV_ROOT):
        return f"${ENV_ROOT}"
    return f"the default ./{DEFAULT_ROOT} (neither data.root nor ${ENV_ROOT} is set)"


def _how_to_fix(extra: str = "") -> str:
    return (
        f"To fix: set data.root in the config (or --data-root on the command line, or the environment "
        f"variable {ENV_ROOT}) to the folder that holds the dataset{extra}."
    )


class DatasetSource:
    """One registered dataset: checks/fetches the files, reads them, and knows its constants."""

    name: str = ""

    def ensure(self, root: Path, download: bool, origin: str) -> Path:
        """Return the effective root once the files are there; raise :class:`DatasetNotFoundError` if not."""
        raise NotImplementedError

    def read(self, root: Path, image_size: int) -> _Arrays:
        """Read both splits into uint8 tensors (``image_size`` is only a hint for non-uniform images)."""
        raise NotImplementedError

    def static_info(self, image_size: int) -> DatasetInfo | None:
        """The info without reading any file, when the constants are fixed (None: must load)."""
        return None

    def info_from(self, arrays: _Arrays, image_size: int) -> DatasetInfo:
        """The info of loaded data; by default the static one."""
        info = self.static_info(image_size)
        assert info is not None, f"{type(self).__name__} must override info_from"
        return info


DATASETS: Registry[DatasetSource] = Registry("dataset")


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle; the official files are Python 2 pickles whose keys come back as bytes."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


class _CifarSource(DatasetSource):
    """CIFAR-10/100 in torchvision's "python version" layout, read straight from the pickles."""

    def __init__(
        self,
        name: str,
        title: str,
        torchvision_class: str,
        num_classes: int,
        label_key: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        import torchvision.datasets as tvd

        self.name, self.title, self.num_classes, self.label_key = name, title, num_classes, label_key
        self.mean, self.std = mean, std
        # The official file names and MD5 sums come from torchvision, the single source of truth.
        self.tv_class = getattr(tvd, torchvision_class)
        self.folder: str = self.tv_class.base_folder
        self.train_files = [f for f, _ in self.tv_class.train_list]
        self.test_files = [f for f, _ in self.tv_class.test_list]
        self.meta_file: str = self.tv_class.meta["filename"]
        self.meta_key: str = self.tv_class.meta["key"]
        self.md5 = dict(self.tv_class.train_list + self.tv_class.test_list)
        self.md5[self.meta_file] = self.tv_class.meta["md5"]

    def _missing(self, root: Path) -> list[str]:
        return [f for f in self.train_files + self.test_files if not (root / self.folder / f).is_file()]

    def layout(self) -> str:
        files = ", ".join(self.train_files + self.test_files + [self.meta_file])
        return f"<root>/{self.folder}/{{{files}}} (torchvision's 'python version' pickles)"

    def ensure(self, root: Path, download: bool, origin: str) -> Path:
        # Users often point at the inner folder itself; accept that too.
        if root.name == self.folder and not self._missing(root.parent):
            return root.parent
        missing = self._missing(root)
        if not missing:
            return root
        if download:
            try:
                self.tv_class(str(root), train=True, download=True)
            except Exception as e:  # no internet, disk full, ...: say what we tried
                raise DatasetNotFoundError(
                    f"{self.title}: download into {root} failed ({type(e).__name__}: {e}). "
                    + _how_to_fix(f", i.e. the folder that contains {self.folder}/")
                ) from e
            if not self._missing(root):
                return root
        raise DatasetNotFoundError(
            f"{self.title} not found: looked in {root / self.folder} (root {root}, taken from {origin}); "
            f"missing: {', '.join(missing)}. Expected layout: {self.layout()}. "
            + _how_to_fix(f", i.e. the folder that contains {self.folder}/")
            + " Or set data.download: true on a machine with internet access to fetch the official archive."
        )

    def _verify(self, root: Path) -> None:
        """Compare with the official MD5 sums; a mismatch is reported once and the files are used anyway."""
        differ = [
            f
            for f, md5 in self.md5.items()
            if (root / self.folder / f).is_file() and _md5(root / self.folder / f) != md5
        ]
        if differ:
            warnings.warn(
                f"{self.title} at {root / self.folder}: {len(differ)} file(s) ({', '.join(differ)}) "
                f"do not match the official MD5 sums; this copy differs from the official release "
                f"and is loaded anyway. Results measured on it are not exactly comparable to official "
                f"{self.title} numbers.",
                DataIntegrityWarning,
                stacklevel=3,
            )

    def read(self, root: Path, image_size: int) -> _Arrays:
        return _read_cifar_cached(self.name, str(root))

    def read_uncached(self, root: Path) -> _Arrays:
        self._verify(root)
        base = root / self.folder

        def split(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            parts = [_unpickle(base / f) for f in files]
            data = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts])
            labels = np.concatenate([np.asarray(p[self.label_key], dtype=np.int64) for p in parts])
            # Rows are 3072 bytes: the R, G and B planes of a 32x32 image, one after another.
            images = torch.from_numpy(
                np.ascontiguousarray(data.reshape(-1, 3, NATIVE_CIFAR_SIZE, NATIVE_CIFAR_SIZE))
            )
            return images, torch.from_numpy(labels)

        train_x, train_y = split(self.train_files)
        test_x, test_y = split(self.test_files)
        for which, y in (("training", train_y), ("test", test_y)):
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"{self.title} at {base}: {which} labels lie in [{int(y.min())}, {int(y.max())}], "
                    f"expected [0, {self.num_classes - 1}]"
                )
        classes: tuple[str, ...] = tuple(f"class_{i}" for i in range(self.num_classes))
        if (base / self.meta_file).is_file():
            names = _unpickle(base / self.meta_file).get(self.meta_key, [])
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            classes = tuple(names) + classes[len(names) :]
        return _Arrays(train_x, train_y, test_x, test_y, classes[: self.num_classes])

    def static_info(self, image_size: int) -> DatasetInfo:
        return DatasetInfo(self.name, self.num_classes, 3, self.mean, self.std, image_size)


@functools.lru_cache(maxsize=2)
def _read_cifar_cached(name: str, root: str) -> _Arrays:
    """Native-resolution CIFAR arrays, cached by path (the search and the retraining share them)."""
    source = DATASETS.get(name)
    assert isinstance(source, _CifarSource)
    return source.read_uncached(Path(root))


def _to_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop: keeps the aspect ratio of odd-sized images."""
    import torchvision.transforms.v2.functional as TF

    return TF.center_crop(TF.resize(img, [size], antialias=True), [size, size])


class _FolderSource(DatasetSource):
    """``<root>/train/<class>/*.png|jpg`` and ``<root>/test/<class>/...``; class names are the sub-folders."""

    name = "folder"
    layout = "<root>/train/<class>/*.png|jpg|jpeg and <root>/test/<class>/*.png|jpg|jpeg"

    @staticmethod
    def _files(split_dir: Path) -> dict[str, list[Path]]:
        return {
            d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for d in sorted(split_dir.iterdir())
            if d.is_dir()
        }

    def ensure(self, root: Path, download: bool, origin: str) -> Path:
        note = " (data.download does not apply to the folder dataset)" if download else ""
        for split in ("train", "test"):
            if not (root / split).is_dir():
                raise DatasetNotFoundError(
                    f"folder dataset: no {split}/ sub-folder in {root} (root taken from {origin}){note}. "
                    f"Expected layout: {self.layout}. "
                    + _how_to_fix(", i.e. the folder that contains train/ and test/")
                )
        train = self._files(root / "train")
        if not train or not any(train.values()):
            raise DatasetNotFoundError(
                f"folder dataset: no images in {root / 'train'}; expected layout: {self.layout}. "
                + _how_to_fix()
            )
        empty = [c for c, files in train.items() if not files]
        if empty:
            raise DatasetNotFoundError(
                f"folder dataset: class folder(s) {', '.join(empty)} under {root / 'train'} hold no "
                f"{'/'.join(IMAGE_SUFFIXES)} images; remove them or add images"
            )
        unknown = sorted(set(self._files(root / "test")) - set(train))
        if unknown:
            raise ValueError(
                f"folder dataset: {root / 'test'} has class folder(s) {', '.join(unknown)} that "
                f"{root / 'train'} lacks; the test classes must be a subset of the training classes"
            )
        return root

    def read(self, root: Path, image_size: int) -> _Arrays:
        return _read_folder_cached(str(root), image_size)

    def read_uncached(self, root: Path, image_size: int) -> _Arrays:
        from PIL import Image  # a torchvision dependency; torchvision.io's decoders are deprecated

        classes = tuple(self._files(root / "train"))
        index = {c: i for i, c in enumerate(classes)}

        def split(name: str) -> tuple[list[torch.Tensor], list[int]]:
            imgs, labels = [], []
            for cls, files in self._files(root / name).items():
                for p in files:
                    # Grayscale, palette and RGBA files all become 3-channel RGB, so every image stacks.
                    with Image.open(p) as im:
                        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
                    imgs.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
                    labels.append(index[cls])
            return imgs, labels

        (tr_imgs, tr_y), (te_imgs, te_y) = split("train"), split("test")
        shapes = {tuple(t.shape[-2:]) for t in tr_imgs + te_imgs}
        if len(shapes) != 1 or len({*next(iter(shapes))}) != 1:
            # Mixed or non-square sizes: bring each image to the configured side now, once.
            tr_imgs = [_to_square(t, image_size) for t in tr_imgs]
            te_imgs = [_to_square(t, image_size) for t in te_imgs]
        side = tr_imgs[0].shape[-1]

        def stack(imgs: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(imgs) if imgs else torch.empty((0, 3, side, side), dtype=torch.uint8)

        return _Arrays(
            stack(tr_imgs),
            torch.tensor(tr_y, dtype=torch.int64),
            stack(te_imgs),
            torch.tensor(te_y, dtype=torch.int64),
            classes,
        )

    def info_from(self, arrays: _Arrays, image_size: int) -> DatasetInfo:
        # No published constants: normalise with the statistics of the (resized) training images.
        mean, std = _channel_stats(arrays.train_images)
        return DatasetInfo(
            self.name, len(arrays.classes), arrays.train_images.shape[1], mean, std, image_size
        )


@functools.lru_cache(maxsize=2)
def _read_folder_cached(root: str, image_size: int) -> _Arrays:
    source = DATASETS.get("folder")
    assert isinstance(source, _FolderSource)
    return source.read_uncached(Path(root), image_size)


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, accumulated in float64 over chunks (bounded memory)."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(torch.float64) / 255.0
        s += x.sum(dim=(0, 2, 3))
        sq += (x * x).sum(dim=(0, 2, 3))
    n = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = s / n
    std = (sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


DATASETS.add(
    "cifar10",
    _CifarSource(
        "cifar10", "CIFAR-10", "CIFAR10", 10, "labels", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
)
DATASETS.add(
    "cifar100",
    _CifarSource(
        "cifar100",
        "CIFAR-100",
        "CIFAR100",
        100,
        "fine_labels",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
)
DATASETS.add("folder", _FolderSource())


# --------------------------------------------------------------------------------------------
# Loading, resizing, caching
# --------------------------------------------------------------------------------------------


def _resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a whole uint8 batch once (bilinear, antialiased) so that no item is resized per step."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str, image_size: int) -> LoadedData:
    source = DATASETS.get(name)
    arrays = source.read(Path(root), image_size)
    arrays = _Arrays(
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
    root = source.ensure(resolve_root(cfg), cfg.download, _root_origin(cfg))
    return _load_cached(cfg.dataset, str(root), int(cfg.image_size))


def clear_cache() -> None:
    """Forget every loaded dataset (tests; or to free memory)."""
    _load_cached.cache_clear()
    _read_cifar_cached.cache_clear()
    _read_folder_cached.cache_clear()


def get_info(cfg: DataConfig) -> DatasetInfo:
    """Classes, channels and normalisation of ``cfg.dataset``.

    CIFAR's constants need no file; ``folder`` loads its data (cached) to compute mean and std.
    """
    source = DATASETS.get(cfg.dataset)
    info = source.static_info(int(cfg.image_size))
    return info if info is not None else load_dataset(cfg).info


# --------------------------------------------------------------------------------------------
# Subsets and the search split
# --------------------------------------------------------------------------------------------


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


def _subset(labels: torch.Tensor, n: int | None, key: str, what: str) -> torch.Tensor:
    """Sorted indices of a class-balanced subset of size ``n`` (all indices when ``n`` is None)."""
    total = len(labels)
    if n is None:
        return torch.arange(total)
    if n > total:
        raise ConfigError(f"{n} exceeds the {total} {what} images available; use at most {total} or null",
                          key=key)
    return balanced_order(labels, SUBSET_SEED)[:n].sort().values


def train_indices(cfg: DataConfig) -> torch.Tensor:
    """Indices of the training images a run uses (``data.train_subset``, class-balanced, fixed)."""
    data = load_dataset(cfg)
    return _subset(data.train_labels, cfg.train_subset, "data.train_subset", f"{cfg.dataset} training")


def test_indices(cfg: DataConfig) -> torch.Tensor:
    """Indices of the test images a run uses (``data.test_subset``, class-balanced, fixed)."""
    data = load_dataset(cfg)
    return _subset(data.test_labels, cfg.test_subset, "data.test_subset", f"{cfg.dataset} test")


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
    labels = load_dataset(cfg).train_labels[base]
    order = balanced_order(labels, seed, proportional=True)
    val = base[order[:n_val]].sort().values
    train = base[order[n_val:]].sort().values
    return train, val


# --------------------------------------------------------------------------------------------
# Augmentation and the dataset
# --------------------------------------------------------------------------------------------


def _scaled(pixels_at_32: int, image_size: int) -> int:
    """A pixel length given for 32x32 inputs, scaled to ``image_size``; at least 1 unless it is 0."""
    return 0 if pixels_at_32 <= 0 else max(1, round(pixels_at_32 * image_size / NATIVE_CIFAR_SIZE))


class EvalTransform:
    """uint8 C x H x W -> normalised float32. Evaluation does nothing else."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        # Folding the 1/255 into the constants saves one pass over the image.
        self.mean255 = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        self.std255 = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        # Out of place first: the input may be a view of the shared, cached image tensor.
        return (img.float() - self.mean255).div_(self.std255)


class TrainTransform(EvalTransform):
    """Training augmentation on uint8 tensors, seeded through the generator passed per call.

    Order as in the DARTS family: random crop with zero padding, horizontal flip, optional AutoAugment
    (CIFAR-10 policy, on uint8), normalisation, optional Cutout (one square hole zeroed after
    normalisation; DARTS semantics: centre uniform over the image, the hole clipped at the border).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int = CROP_PADDING_AT_32,
        flip: bool = True,
        cutout: int = 0,
        autoaugment: bool = False,
    ) -> None:
        super().__init__(mean, std)
        self.padding, self.flip, self.cutout = int(padding), bool(flip), int(cutout)
        self.autoaugment = None
        if autoaugment:
            from torchvision.transforms import AutoAugment, AutoAugmentPolicy

            self.autoaugment = AutoAugment(AutoAugmentPolicy.CIFAR10)

    @classmethod
    def for_size(
        cls, info: DatasetInfo, image_size: int, cutout: int = 0, autoaugment: bool = False
    ) -> TrainTransform:
        """The standard augmentation; the 32x32 pixel lengths (padding 4, ``cutout``) scaled to the size."""
        return cls(
            info.mean,
            info.std,
            padding=_scaled(CROP_PADDING_AT_32, image_size),
            cutout=_scaled(cutout, image_size),
            autoaugment=autoaugment,
        )

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        _, h, w = img.shape
        # One draw per item for crop offsets, flip and the cutout centre (cheap on a slow CPU).
        r = torch.rand(5, generator=gen).tolist()
        p = self.padding
        if p:
            top, left = int(r[0] * (2 * p + 1)), int(r[1] * (2 * p + 1))
            img = F.pad(img, (p, p, p, p))[:, top : top + h, left : left + w]
        if self.flip and r[2] < 0.5:
            img = img.flip(-1)
        if self.autoaugment is not None:
            # AutoAugment draws from the global RNG; fork it so the result follows ``gen`` and the
            # caller's global random state is left untouched.
            aa_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(aa_seed)
                img = self.autoaugment(img.contiguous())
        x = super().__call__(img)
        if self.cutout:
            cy, cx, half = int(r[3] * h), int(r[4] * w), self.cutout // 2
            x[:, max(0, cy - half) : min(h, cy + half), max(0, cx - half) : min(w, cx + half)] = 0.0
        return x


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
    if info is not None and isinstance(info.dataset, ImageTensorDataset):
        info.dataset.reseed(info.seed % 2**63)


def _derive(seed: int, stream: int) -> int:
    """Independent-looking seeds for the different random streams of one run."""
    return (int(seed) * 1_000_003 + stream * 7_919 + 12_345) % 2**63


def _loader(
    dataset: ImageTensorDataset,
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


def search_loaders(
    cfg: DataConfig, batch_size: int, seed: int, device: torch.device | None = None
) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """(train, val, info) over the search split; both augmented with crop + flip (no cutout), as in DARTS."""
    data = load_dataset(cfg)
    train_idx, val_idx = search_split(cfg, seed)
    aug = TrainTransform.for_size(data.info, cfg.image_size)
    train_ds = ImageTensorDataset(data.train_images, data.train_labels, train_idx, aug, _derive(seed, 1))
    val_ds = ImageTensorDataset(data.train_images, data.train_labels, val_idx, aug, _derive(seed, 2))
    return (
        _loader(train_ds, batch_size, True, _derive(seed, 3), cfg, device),
        _loader(val_ds, batch_size, True, _derive(seed, 4), cfg, device),
        data.info,
    )


def retrain_loaders(
    cfg: DataConfig,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    cutout: int = 0,
    autoaugment: bool = False,
    device: torch.device | None = None,
) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """(train, test, info): the whole (subset) training set augmented, the (subset) test set normalised.

    ``cutout`` is the hole side at 32x32 (scaled with ``cfg.image_size``); 0 turns it off.
    """
    data = load_dataset(cfg)
    aug = TrainTransform.for_size(data.info, cfg.image_size, cutout=cutout, autoaugment=autoaugment)
    train_ds = ImageTensorDataset(
        data.train_images, data.train_labels, train_indices(cfg), aug, _derive(seed, 5)
    )
    test_ds = ImageTensorDataset(
        data.test_images, data.test_labels, test_indices(cfg), EvalTransform(data.info.mean, data.info.std)
    )
    return (
        _loader(train_ds, batch_size, True, _derive(seed, 6), cfg, device),
        _loader(test_ds, eval_batch_size, False, _derive(seed, 7), cfg, device),
        data.info,
    )


# --------------------------------------------------------------------------------------------
# A tiny fake CIFAR for tests and CI
# --------------------------------------------------------------------------------------------

_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _Py2Str(bytes):
    """Bytes pickled as a Python 2 ``str``, like the keys of the official CIFAR pickles."""


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]  # the pure-Python pickler has a dispatch table
    """Writes :class:`_Py2Str` with the (SHORT_)BINSTRING opcodes, which Python 3 reads back as ``bytes``
    with ``encoding='bytes'`` and as ``str`` with ``encoding='latin1'`` (what torchvision uses)."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2str(self, obj: _Py2Str) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2str


def _py2(obj: Any) -> Any:
    """Turn the str keys and strings of a CIFAR-style dict into Python 2 strings."""
    if isinstance(obj, str):
        return _Py2Str(obj.encode("latin1"))
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    return obj


def _dump_py2(obj: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))


def _fake_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """32x32 RGB images whose colour and stripe pattern depend on the class, plus noise (N x 3072 uint8)."""
    n = len(labels)
    # Class colours spread over the hue circle; stripes with class-dependent orientation and frequency.
    hue = labels / max(1, num_classes)
    colour = 0.5 + 0.35 * np.stack([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)], axis=1)  # N x 3
    yy, xx = np.mgrid[0:NATIVE_CIFAR_SIZE, 0:NATIVE_CIFAR_SIZE] / NATIVE_CIFAR_SIZE
    angle = np.pi * (labels % 4) / 4
    freq = 2 + labels % 3
    phase = rng.uniform(0, 2 * np.pi, size=n)
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    stripes = 0.15 * np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])  # N x H x W
    img = colour[:, :, None, None] + stripes[:, None] + rng.normal(0, 0.08, size=(n, 3, 32, 32))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8).reshape(n, -1)


def _fake_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def make_fake_cifar(
    root: Path, n_train: int = 200, n_test: int = 100, num_classes: int = 10, seed: int = 0
) -> Path:
    """Write a tiny CIFAR-10 in torchvision's exact ``cifar-10-batches-py`` layout; return ``root``.

    Python 2 style pickles like the official ones (keys ``b'data'``, ``b'labels'`` with
    ``encoding='bytes'``), five training batches, ``test_batch`` and ``batches.meta``. Labels are
    balanced over ``num_classes`` (at most 10; the dataset still declares 10 classes) and the images have a
    class-dependent colour and stripe pattern, so a small network can beat chance quickly.
    """
    if not 1 <= num_classes <= 10:
        raise ValueError(f"make_fake_cifar: num_classes must lie in [1, 10] for CIFAR-10, got {num_classes}")
    rng = np.random.default_rng(seed)
    y_train, y_test = _fake_labels(n_train, num_classes, rng), _fake_labels(n_test, num_classes, rng)
    x_train, x_test = _fake_images(y_train, num_classes, rng), _fake_images(y_test, num_classes, rng)
    return write_cifar10(root, x_train, y_train, x_test, y_test)


def write_cifar10(root: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, label_names: Sequence[str] = _CIFAR10_NAMES) -> Path:
    """Write N x 3072 uint8 images and labels in torchvision's ``cifar-10-batches-py`` layout."""
    root = Path(root)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    n_train = len(y_train)
    parts = np.array_split(np.arange(n_train), 5)
    for b, idx in enumerate(parts, start=1):
        _dump_py2(
            {
                "batch_label": f"training batch {b} of 5",
                "labels": [int(v) for v in y_train[idx]],
                "data": x_train[idx],
                "filenames": [f"img_{i:06d}.png" for i in idx],
            },
            base / f"data_batch_{b}",
        )
    _dump_py2(
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in y_test],
            "data": x_test,
            "filenames": [f"img_test_{i:06d}.png" for i in range(len(y_test))],
        },
        base / "test_batch",
    )
    _dump_py2(
        {"num_cases_per_batch": max(1, n_train // 5), "label_names": list(label_names), "num_vis": 3072},
        base / "batches.meta",
    )
    return root


def write_cifar10_subset(cfg: DataConfig, dst: Path) -> Path:
    """Copy the class-balanced ``train_subset`` / ``test_subset`` of a CIFAR-10 folder to ``dst``.

    For benchmarks: processes that read a few thousand images instead of 60,000 load in a blink and
    their peak memory is the model's, not the pickles'. Write it to a temporary folder, never into the
    repository (the shared copy must not be duplicated there).
    """
    if cfg.dataset != "cifar10":
        raise ValueError(f"write_cifar10_subset handles cifar10, not {cfg.dataset!r}")
    source = DATASETS.get(cfg.dataset)
    root = source.ensure(resolve_root(cfg), cfg.download, _root_origin(cfg))
    arrays = _read_cifar_cached(cfg.dataset, str(root))
    tr, te = train_indices(cfg), test_indices(cfg)
    flat = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731
    return write_cifar10(Path(dst), flat(arrays.train_images[tr]), arrays.train_labels[tr].numpy(),
                         flat(arrays.test_images[te]), arrays.test_labels[te].numpy(), arrays.classes)


def make_fake_cifar100(
    root: Path, n_train: int = 200, n_test: int = 100, num_classes: int = 100, seed: int = 0
) -> Path:
    """Like :func:`make_fake_cifar`, in the ``cifar-100-python`` layout (``train``, ``test``, ``meta``)."""
    if not 1 <= num_classes <= 100:
        raise ValueError(f"make_fake_cifar100: num_classes must lie in [1, 100], got {num_classes}")
    root = Path(root)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        y = _fake_labels(n, num_classes, rng)
        _dump_py2(
            {
                "filenames": [f"fake_{split}_{i:06d}.png" for i in range(n)],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": [int(v) for v in y],
                "coarse_labels": [int(v) // 5 for v in y],
                "data": _fake_images(y, num_classes, rng),
            },
            base / split,
        )
    _dump_py2(
        {
            "fine_label_names": [f"class_{i}" for i in range(100)],
            "coarse_label_names": [f"super_{i}" for i in range(20)],
        },
        base / "meta",
    )
    return root
