"""Test data: tiny fake datasets in the exact on-disk layouts of every registered dataset.

For tests, CI and examples only; nothing in the library imports this module. Each writer puts a small
dataset under a folder and returns the folder to use as ``data.root``. :data:`FAKE_DATASETS` maps every
name of :data:`bnas.data.DATASETS` to its writer, so tests can be parametrized over the registry.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnas.data.cifar_writer import dump_py2_pickle, write_cifar10
from bnas.data.sources import NATIVE_CIFAR_SIZE

__all__ = [
    "FAKE_DATASETS",
    "FOLDER_CLASSES",
    "make_fake_cifar",
    "make_fake_cifar100",
    "make_fake_folder",
    "make_fake_imagenet",
    "make_image_folder",
    "write_image",
    "write_png",
]

FOLDER_CLASSES = ("ant", "bee", "cow")


def billion_laughs_yaml() -> str:
    """A "billion laughs" YAML text: nine aliases per level, nine levels (a few hundred bytes that
    expand to 9**9 values)."""
    levels = zip("abcdefgh", "bcdefghi", strict=True)
    return "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in levels
    )


def rewrite_packed_header(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """The packed file (``bnas.export``) with its JSON header edited by ``edit``, payload untouched."""
    data = path.read_bytes()
    (n,) = struct.unpack("<I", data[8:12])
    header = json.loads(data[12 : 12 + n])
    edit(header)
    blob = json.dumps(header).encode()
    path.write_bytes(data[:8] + struct.pack("<I", len(blob)) + blob + data[12 + n :])


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
        dump_py2_pickle(
            {
                "filenames": [f"fake_{split}_{i:06d}.png" for i in range(n)],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": [int(v) for v in y],
                "coarse_labels": [int(v) // 5 for v in y],
                "data": _fake_images(y, num_classes, rng),
            },
            base / split,
        )
    dump_py2_pickle(
        {
            "fine_label_names": [f"class_{i}" for i in range(100)],
            "coarse_label_names": [f"super_{i}" for i in range(20)],
        },
        base / "meta",
    )
    return root


def write_png(img: torch.Tensor, path: Path) -> None:
    """Save a uint8 C x H x W tensor as PNG with PIL (torchvision.io's encoders are deprecated)."""
    from PIL import Image  # a torchvision dependency

    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)


def make_fake_folder(root: Path, per_class: int = 8, n_test: int = 3, size: int = 12, seed: int = 0) -> Path:
    """A tiny class-folder dataset of PNGs (classes :data:`FOLDER_CLASSES`), each class a different
    dominant colour channel: ``<root>/train/<class>/<i>.png`` and ``<root>/test/<class>/<i>.png``."""
    root = Path(root)
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", per_class), ("test", n_test)):
        for c, name in enumerate(FOLDER_CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = torch.randint(0, 80, (3, size, size), generator=g, dtype=torch.uint8)
                img[c] += 150
                write_png(img, d / f"{i}.png")
    return root


def write_image(img: torch.Tensor, path: Path, quality: int = 90) -> None:
    """Save a uint8 C x H x W tensor (C = 1: grayscale) in the format of ``path``'s suffix (PIL)."""
    from PIL import Image

    arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr, mode="L" if img.shape[0] == 1 else "RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=quality)
    else:
        im.save(path)


def make_image_folder(
    root: Path,
    classes: tuple[str, ...] = FOLDER_CLASSES,
    per_class: int = 6,
    n_test: int = 2,
    sizes: tuple[tuple[int, int], ...] = ((40, 48), (48, 40), (33, 57)),
    formats: tuple[str, ...] = (".jpg", ".png"),
    grayscale_every: int = 4,
    test_name: str = "test",
    seed: int = 0,
) -> Path:
    """A class-folder dataset of JPEG and PNG files of odd, mixed sizes, some of them grayscale.

    Image ``i`` of a class has size ``sizes[i % len(sizes)]`` (height, width), format
    ``formats[i % len(formats)]`` and is single-channel when ``i % grayscale_every == grayscale_every - 1``.
    Class ``c``'s images are brightest in colour channel ``c % 3`` (learnable). ``test_name`` may be
    ``val`` (the ImageNet layout). Returns ``root``.
    """
    root = Path(root)
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", per_class), (test_name, n_test)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = sizes[i % len(sizes)]
                img = torch.randint(0, 80, (3, h, w), generator=g, dtype=torch.uint8)
                img[c % 3] += 150
                if grayscale_every and i % grayscale_every == grayscale_every - 1:
                    img = img.float().mean(0, keepdim=True).round().to(torch.uint8)
                write_image(img, d / f"{i:04d}{formats[i % len(formats)]}")
    return root


def make_fake_imagenet(root: Path, per_class: int = 6, n_test: int = 2, seed: int = 0) -> Path:
    """A tiny ImageNet-layout folder: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, odd sizes."""
    wnids = ("n01440764", "n01443537", "n01484850")
    return make_image_folder(root, wnids, per_class, n_test, formats=(".JPEG",), test_name="val", seed=seed)


# One writer per registered dataset: a new DATASETS entry must add its writer here (a test checks it).
FAKE_DATASETS: dict[str, Callable[[Path], Path]] = {
    "cifar10": make_fake_cifar,
    "cifar100": make_fake_cifar100,
    "folder": make_fake_folder,
    "imagenet": make_fake_imagenet,
}
