"""Writing CIFAR-10 in torchvision's ``cifar-10-batches-py`` layout, e.g. a class-balanced subset.

The official files are Python 2 pickles; :func:`dump_py2_pickle` writes the same format, so what is
written here reads back exactly like the official release (with torchvision too). Fake datasets for tests
are built on these writers in :mod:`bnas.testing`.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bnas.data.roots import resolve_root, root_origin
from bnas.data.sources import DATASETS, NATIVE_CIFAR_SIZE
from bnas.data.splits import test_indices, train_indices

if TYPE_CHECKING:  # annotations only: bnas.config imports this package (DATASETS), not the reverse
    from bnas.config import DataConfig

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


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


def dump_py2_pickle(obj: dict[str, Any], path: Path) -> None:
    """Pickle a CIFAR-style dict like the official files: protocol 2, keys and strings as Python 2 ``str``."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))


def write_cifar10(root: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, label_names: Sequence[str] = CIFAR10_NAMES) -> Path:
    """Write N x 3072 uint8 images and labels in torchvision's ``cifar-10-batches-py`` layout."""
    root = Path(root)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    n_train = len(y_train)
    parts = np.array_split(np.arange(n_train), 5)
    for b, idx in enumerate(parts, start=1):
        dump_py2_pickle(
            {
                "batch_label": f"training batch {b} of 5",
                "labels": [int(v) for v in y_train[idx]],
                "data": x_train[idx],
                "filenames": [f"img_{i:06d}.png" for i in idx],
            },
            base / f"data_batch_{b}",
        )
    dump_py2_pickle(
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in y_test],
            "data": x_test,
            "filenames": [f"img_test_{i:06d}.png" for i in range(len(y_test))],
        },
        base / "test_batch",
    )
    dump_py2_pickle(
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
    root = source.ensure(resolve_root(cfg), cfg.download, root_origin(cfg))
    arrays = source.read(root, NATIVE_CIFAR_SIZE)  # native 32x32, shared with the loading cache
    tr, te = train_indices(cfg), test_indices(cfg)
    flat = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731
    return write_cifar10(Path(dst), flat(arrays.train_images[tr]), arrays.train_labels[tr].numpy(),
                         flat(arrays.test_images[te]), arrays.test_labels[te].numpy(), arrays.classes)
