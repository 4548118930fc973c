"""Dataset sources: where each registered dataset's files are, how they are checked and read.

Datasets are chosen by name through :data:`DATASETS`:

* ``cifar10`` / ``cifar100`` -- torchvision's "python version" layouts ``<root>/cifar-10-batches-py/`` and
  ``<root>/cifar-100-python/``, read straight from the pickles (much faster than torchvision's PIL-based
  ``CIFAR10`` dataset). The official MD5 sums are checked for information only: a copy that differs
  (such as the rebuilt copy in ``../shared/data``) is loaded with one :class:`DataIntegrityWarning`.
* ``folder`` -- ``<root>/train/<class>/*.png|jpg`` and ``<root>/test/<class>/...`` (like ImageFolder).

A source returns :class:`RawArrays` (uint8 ``N x 3 x H x W`` per split; a folder at ``image_size``), cached
in-process by path (search and retraining read the same files); :mod:`bnas.data.loading` resizes.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bnas.data.roots import how_to_fix
from bnas.errors import ConfigError
from bnas.registry import Registry

# [P]/[C] CIFAR images are 32x32; pixel lengths of the augmentation are given at this side.
NATIVE_CIFAR_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataIntegrityWarning(UserWarning):
    """The dataset files differ from the official release; they are loaded anyway."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the configuration says; the message says where it looked and how to fix it."""


class BadDatasetError(ValueError):
    """The files are there but unusable: an empty class, an unreadable image, mismatched class sets.

    The message names the folder or file and what would be valid (a user error: the CLIs exit 2)."""


#: Names accepted for the held-out split of a class-folder dataset, in order of preference
#: (ImageNet's layout calls it ``val/``).
TEST_SPLIT_NAMES = ("test", "val")


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
class RawArrays:
    """What a source reads from disk, before resizing (native resolution where it is uniform)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


class DatasetSource:
    """One registered dataset: checks/fetches the files, reads them, and knows its constants."""

    name: str = ""

    def ensure(self, root: Path, download: bool, origin: str) -> Path:
        """Return the effective root once the files are there; raise :class:`DatasetNotFoundError` if not."""
        raise NotImplementedError

    def read(self, root: Path, image_size: int) -> RawArrays:
        """Read both splits into uint8 tensors (``image_size`` is only a hint for non-uniform images)."""
        raise NotImplementedError

    def static_info(self, image_size: int) -> DatasetInfo | None:
        """The info without reading any file, when the constants are fixed (None: must load)."""
        return None

    def info_from(self, arrays: RawArrays, image_size: int) -> DatasetInfo:
        """The info of loaded data; by default the static one."""
        info = self.static_info(image_size)
        assert info is not None, f"{type(self).__name__} must override info_from"
        return info


DATASETS: Registry[DatasetSource] = Registry("dataset")


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file, read in 1 MiB blocks (integrity checks, dataset fingerprints)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: The only globals a CIFAR pickle names (NumPy arrays); unpickling anything else could run code.
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3 (bnas.data.cifar_writer)
})


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data and NumPy arrays only (a dataset folder may come from
    anywhere: a crafted ``data_batch_1`` must not run code when a run reads it)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle; the official files are Python 2 pickles whose keys come back as bytes."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"holds {e}, which a CIFAR file never holds, and is refused: loading it could run code; "
            "replace it with the official file",
            str(path),
        ) from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:  # truncated or garbage
        raise BadDatasetError(f"{path}: not a readable CIFAR batch file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise BadDatasetError(f"{path}: holds a {type(d).__name__}, not a CIFAR batch (a mapping)")
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
                # torchvision checks the archive's and then every file's official MD5 sum.
                self.tv_class(str(root), train=True, download=True)
            except Exception as e:  # no internet, disk full, corrupted archive: say what we tried
                raise DatasetNotFoundError(
                    f"{self.title}: download into {root} failed ({type(e).__name__}: {e}) from "
                    f"{getattr(self.tv_class, 'url', 'the official server')}. Without network, copy the "
                    f"dataset from a machine that has it ({self.folder}/ from the official archive) and "
                    "point at it. "
                    + how_to_fix(f", i.e. the folder that contains {self.folder}/")
                ) from e
            if not self._missing(root):
                return root
        raise DatasetNotFoundError(
            f"{self.title} not found: looked in {root / self.folder} (root {root}, taken from {origin}); "
            f"missing: {', '.join(missing)}. Expected layout: {self.layout()}. "
            + how_to_fix(f", i.e. the folder that contains {self.folder}/")
            + " Or set data.download: true on a machine with internet access to fetch the official archive."
        )

    def file_digests(self, root: Path) -> dict[str, str | None]:
        """The MD5 of each file of the official release under ``root`` (None where it is missing), in
        :attr:`md5`'s order: the integrity check here and the study's dataset fingerprint both read it."""
        base = root / self.folder
        return {f: file_md5(base / f) if (base / f).is_file() else None for f in self.md5}

    def _verify(self, root: Path) -> None:
        """Compare with the official MD5 sums; a mismatch is reported once and the files are used anyway."""
        differ = [f for f, d in self.file_digests(root).items() if d is not None and d != self.md5[f]]
        if differ:
            warnings.warn(
                f"{self.title} at {root / self.folder}: {len(differ)} file(s) ({', '.join(differ)}) "
                f"do not match the official MD5 sums; this copy differs from the official release "
                f"and is loaded anyway. Results measured on it are not exactly comparable to official "
                f"{self.title} numbers.",
                DataIntegrityWarning,
                stacklevel=3,
            )

    def read(self, root: Path, image_size: int) -> RawArrays:
        return _read_cifar_cached(self.name, str(root))

    def read_uncached(self, root: Path) -> RawArrays:
        self._verify(root)
        base = root / self.folder

        def batch(f: str) -> tuple[np.ndarray, np.ndarray]:
            """One batch file's images (N x 3072 bytes: the R, G and B planes of a 32x32 image) and
            labels, checked, so a damaged file is named rather than failing somewhere later."""
            p = _unpickle(base / f)
            try:
                data = np.asarray(p["data"], dtype=np.uint8)
                labels = np.asarray(p[self.label_key], dtype=np.int64)
            except (KeyError, TypeError, ValueError) as e:
                raise BadDatasetError(
                    f"{base / f}: not a CIFAR batch ({type(e).__name__}: {e}); expected 'data' "
                    f"(N x 3072 bytes) and '{self.label_key}' (N integers)"
                ) from None
            row = 3 * NATIVE_CIFAR_SIZE * NATIVE_CIFAR_SIZE
            if data.ndim != 2 or data.shape[1] != row or labels.shape != (len(data),):
                raise BadDatasetError(
                    f"{base / f}: data has shape {data.shape} and labels {labels.shape}; expected "
                    f"(N, {row}) and (N,)"
                )
            return data, labels

        def split(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            parts = [batch(f) for f in files]
            data = np.concatenate([d for d, _ in parts])
            labels = np.concatenate([y for _, y in parts])
            images = torch.from_numpy(
                np.ascontiguousarray(data.reshape(-1, 3, NATIVE_CIFAR_SIZE, NATIVE_CIFAR_SIZE))
            )
            return images, torch.from_numpy(labels)

        train_x, train_y = split(self.train_files)
        test_x, test_y = split(self.test_files)
        for which, y in (("training", train_y), ("test", test_y)):
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise BadDatasetError(
                    f"{self.title} at {base}: {which} labels lie in [{int(y.min())}, {int(y.max())}], "
                    f"expected [0, {self.num_classes - 1}]"
                )
        classes: tuple[str, ...] = tuple(f"class_{i}" for i in range(self.num_classes))
        if (base / self.meta_file).is_file():
            names = _unpickle(base / self.meta_file).get(self.meta_key, [])
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            classes = tuple(names) + classes[len(names) :]
        return RawArrays(train_x, train_y, test_x, test_y, classes[: self.num_classes])

    def static_info(self, image_size: int) -> DatasetInfo:
        return DatasetInfo(self.name, self.num_classes, 3, self.mean, self.std, image_size)


@functools.lru_cache(maxsize=2)
def _read_cifar_cached(name: str, root: str) -> RawArrays:
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
    layout = "<root>/train/<class>/*.png|jpg|jpeg and <root>/test/<class>/*.png|jpg|jpeg (or val/ for test/)"
    #: The network layout ``network: auto`` picks for this dataset (:mod:`bnas.networks`).
    default_network = "cifar"

    @staticmethod
    def test_dir(root: Path) -> Path:
        """``<root>/test``, else ``<root>/val`` (ImageNet's name), else ``<root>/test`` (reported missing)."""
        for name in TEST_SPLIT_NAMES:
            if (root / name).is_dir():
                return root / name
        return root / TEST_SPLIT_NAMES[0]

    @staticmethod
    def _files(split_dir: Path) -> dict[str, list[Path]]:
        return {
            # Regular files only: a FIFO or device named *.jpg would block or stream for ever.
            d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            for d in sorted(split_dir.iterdir())
            if d.is_dir()
        }

    def ensure(self, root: Path, download: bool, origin: str) -> Path:
        note = " (data.download does not apply to the folder dataset)" if download else ""
        for split in ("train", "test"):
            if not (root / split).is_dir() and not (split == "test" and self.test_dir(root).is_dir()):
                what = "train/" if split == "train" else "test/ (or val/)"
                raise DatasetNotFoundError(
                    f"{self.name} dataset: no {what} sub-folder in {root} (root taken from {origin}){note}. "
                    f"Expected layout: {self.layout}. "
                    + how_to_fix(", i.e. the folder that contains train/ and test/")
                )
        train = self._files(root / "train")
        if not train or not any(train.values()):
            raise DatasetNotFoundError(
                f"folder dataset: no images in {root / 'train'}; expected layout: {self.layout}. "
                + how_to_fix()
            )
        empty = [c for c, files in train.items() if not files]
        if empty:
            raise DatasetNotFoundError(
                f"folder dataset: class folder(s) {', '.join(empty)} under {root / 'train'} hold no "
                f"{'/'.join(IMAGE_SUFFIXES)} images; remove them or add images"
            )
        test = self._files(self.test_dir(root))
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise BadDatasetError(
                f"folder dataset: {self.test_dir(root)} has class folder(s) {', '.join(unknown)} that "
                f"{root / 'train'} lacks; the test classes must be a subset of the training classes"
            )
        empty = [c for c, files in test.items() if not files]
        if empty:
            raise BadDatasetError(
                f"folder dataset: class folder(s) {', '.join(empty)} under {self.test_dir(root)} hold no "
                f"{'/'.join(IMAGE_SUFFIXES)} images; remove them or add images"
            )
        return root

    def read(self, root: Path, image_size: int, on_bad: str = "stop") -> RawArrays:
        return _read_folder_cached(self.name, str(root), image_size, on_bad)

    def read_uncached(self, root: Path, image_size: int, on_bad: str = "stop") -> RawArrays:
        classes = tuple(self._files(root / "train"))
        index = {c: i for i, c in enumerate(classes)}

        def split(folder: Path) -> tuple[list[torch.Tensor], list[int]]:
            imgs, labels = [], []
            for cls, files in self._files(folder).items():
                for p in files:
                    try:
                        # At image_size once decoded: never the whole folder at full resolution.
                        imgs.append(_fit(decode_rgb(p, draft=2 * image_size), image_size))
                    except BadDatasetError as e:
                        if on_bad != "skip":
                            raise BadDatasetError(
                                f"{e}; fix or remove the file, or set data.on_bad_image: skip"
                            ) from None
                        warnings.warn(f"{e}; skipped (data.on_bad_image: skip)", DataIntegrityWarning,
                                      stacklevel=2)
                        continue
                    labels.append(index[cls])
            return imgs, labels

        (tr_imgs, tr_y), (te_imgs, te_y) = split(root / "train"), split(self.test_dir(root))
        if not tr_imgs:
            raise BadDatasetError(f"folder dataset: no readable training image under {root / 'train'}")
        def stack(imgs: list[torch.Tensor]) -> torch.Tensor:
            # Image by image, each freed once copied (torch.stack would hold list and copy at once).
            out = torch.empty((len(imgs), 3, image_size, image_size), dtype=torch.uint8)
            for i in range(len(imgs)):
                out[i] = imgs[i]
                imgs[i] = None  # type: ignore[call-overload]
            return out

        return RawArrays(
            stack(tr_imgs),
            torch.tensor(tr_y, dtype=torch.int64),
            stack(te_imgs),
            torch.tensor(te_y, dtype=torch.int64),
            classes,
        )

    def info_from(self, arrays: RawArrays, image_size: int) -> DatasetInfo:
        # No published constants: normalise with the statistics of the (resized) training images.
        mean, std = _channel_stats(arrays.train_images)
        return DatasetInfo(
            self.name, len(arrays.classes), arrays.train_images.shape[1], mean, std, image_size
        )


@functools.lru_cache(maxsize=2)
def _read_folder_cached(name: str, root: str, image_size: int, on_bad: str) -> RawArrays:
    source = DATASETS.get(name)
    assert isinstance(source, _FolderSource)
    return source.read_uncached(Path(root), image_size, on_bad)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 ``N x C x H x W`` batch at ``size x size`` (bilinear, antialiased, rounded)."""
    y = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _fit(img: torch.Tensor, size: int) -> torch.Tensor:
    """``img`` at ``size x size``: a square one by :func:`resize_uint8`, any other by :func:`_to_square`."""
    h, w = img.shape[-2:]
    return _to_square(img, size) if h != w else img if h == size else resize_uint8(img[None], size)[0]


def decode_rgb(path: Path | str, draft: int | None = None) -> torch.Tensor:
    """One image file as uint8 ``3 x H x W`` RGB (any mode converted; PIL decodes: torchvision.io's
    decoders are deprecated); ``draft``: a JPEG decodes at the smallest DCT scale whose sides stay >=
    ``draft``. Raises :class:`BadDatasetError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if draft is not None and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    # Truncated, not an image, or larger than PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS).
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadDatasetError(f"{path}: cannot be decoded as an image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _channel_stats(
    images: torch.Tensor, chunk_values: int = 1 << 22
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, in float64 over chunks of ~``chunk_values`` values."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    chunk = max(1, chunk_values // max(1, images[0].numel() if len(images) else 1))
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(torch.float64) / 255.0
        s += x.sum(dim=(0, 2, 3))
        sq += (x * x).sum(dim=(0, 2, 3))
    n = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = s / n
    std = (sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def clear_source_caches() -> None:
    """Forget every array read from disk (see :func:`bnas.data.loading.clear_cache`)."""
    _read_cifar_cached.cache_clear()
    _read_folder_cached.cache_clear()


# [C] Per-channel mean and std of the CIFAR-10 training set as in DARTS' utils.py (rounded to 4 places);
# [R] CIFAR-100's are the values commonly used in the CIFAR-100 literature.
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
