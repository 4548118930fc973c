"""What a study run is: its name, the dataset it reads, and the identity that keeps two studies apart.

A study's MLflow parent run (and its Optuna study) is found again by name, so that a rerun, a resume
or a retraining-only run adds to the same record. Two runs under one name must therefore compute the
same thing: :func:`study_identity` is a digest of everything that changes a trial's results (the fixed
settings, the sampled space, the objectives, and the dataset's *content*), and a name that meets a
different identity is refused before anything is created
(:func:`bnas.platform.tracking.check_parent_identity`). Where the
study runs (the settings declared ``affects_results=False``: :data:`bnas.config.PLACEMENT_KEYS`,
the same rule as the checkpoint and the retraining records) and how much of it runs (trials,
concurrency, sampler, retraining stage) are left out: more trials of the same study add to it.

:func:`describe_dataset` is what the console header, the parent run's params and MLflow's dataset
tracking show: name, root, image size, class count, subsets and a content fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnas.config import PLACEMENT_KEYS
from bnas.errors import ConfigError
from bnas.platform.study import StudySpec

#: Study names become folder names, MLflow experiment names and Optuna study names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str, source: str | None = None, key: str = "--name") -> str:
    """A valid study name (letters, digits, ``_ . -``; first a letter or digit; at most 100
    characters), else ConfigError naming ``key`` (``--name``, or the study file's name) in ``source``."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{name!r} is not a usable study name: it names a folder, an MLflow experiment and an Optuna "
            f"study, so use letters, digits, '_', '.' and '-' (first a letter or digit, at most 100)",
            source,
            key,
        )
    return name


@dataclass(frozen=True)
class DatasetDescription:
    """The dataset a study reads, as shown in its header, parent run and report."""

    name: str
    root: str
    image_size: int
    num_classes: int | None
    train_subset: int | None
    test_subset: int | None
    fingerprint: str
    #: For datasets with an official release (CIFAR): how many files differ from it (0 = official).
    differing_files: int | None = None

    @property
    def label(self) -> str:
        """E.g. ``cifar10 (a copy that differs from the official release)``."""
        if self.differing_files is None:
            return self.name
        if self.differing_files == 0:
            return f"{self.name} (official files)"
        return f"{self.name} (a copy that differs from the official release in {self.differing_files} files)"

    def params(self) -> dict[str, Any]:
        """The parent run's ``dataset.*`` params."""
        return {
            "dataset.name": self.name,
            "dataset.root": self.root,
            "dataset.image_size": self.image_size,
            "dataset.num_classes": self.num_classes,
            "dataset.train_subset": self.train_subset,
            "dataset.test_subset": self.test_subset,
            "dataset.fingerprint": self.fingerprint,
            "dataset.official": None if self.differing_files is None else self.differing_files == 0,
        }

    def header(self) -> str:
        classes = f"{self.num_classes} classes" if self.num_classes else "classes unknown"
        sizes = (("train subset", self.train_subset), ("test subset", self.test_subset))
        subsets = ", ".join(f"{what} {n}" for what, n in sizes if n)
        return (
            f"dataset: {self.label} at {self.root}; {self.image_size}x{self.image_size} px, {classes}"
            + (f", {subsets}" if subsets else "")
            + f"; fingerprint {self.fingerprint}"
        )


def _fingerprint(root: Path, dataset: str) -> tuple[str, int | None]:
    """A digest of the dataset's content, and (CIFAR) how many files differ from the official MD5s.

    CIFAR: the MD5 of each of its few large files (about half a second for CIFAR-10). Other datasets
    (class folders of many small files): every file's relative path and size, which catches added,
    removed or resized images but not an image rewritten with the same byte count.
    """
    from bnas.data import DATASETS

    source = DATASETS.get(dataset)
    h = hashlib.sha256(dataset.encode())
    official: dict[str, str] | None = getattr(source, "md5", None)
    folder = getattr(source, "folder", None)
    if official is not None and folder is not None and (root / folder).is_dir():
        digests = source.file_digests(root)
        differ = 0
        for name in sorted(digests):
            digest = digests[name] or "missing"
            differ += digest != official[name]
            h.update(f"{name}\0{digest}\n".encode())
        return h.hexdigest()[:12], differ
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()[:12], None


def _num_classes(root: Path, dataset: str, image_size: int) -> int | None:
    from bnas.data import DATASETS

    source = DATASETS.get(dataset)
    info = source.static_info(image_size)
    if info is not None:
        return info.num_classes
    train = root / "train"  # class-folder layouts: one sub-folder per class
    return sum(1 for d in train.iterdir() if d.is_dir()) if train.is_dir() else None


def describe_dataset(spec: StudySpec, root: Path) -> DatasetDescription:
    """The dataset of the study's fixed settings at ``root`` (the effective root, files present)."""
    data = spec.base_config.data
    fingerprint, differ = _fingerprint(root, data.dataset)
    return DatasetDescription(
        name=data.dataset,
        root=str(root),
        image_size=int(data.image_size),
        num_classes=_num_classes(root, data.dataset, int(data.image_size)),
        train_subset=data.train_subset,
        test_subset=data.test_subset,
        fingerprint=fingerprint,
        differing_files=differ,
    )


def _without_placement(fixed: Mapping[str, Any]) -> dict[str, Any]:
    """``fixed`` less the placement settings: the rule of :meth:`ExperimentConfig.result_digest`."""
    out = json.loads(json.dumps(fixed, default=str))  # a deep copy of plain data
    for key in PLACEMENT_KEYS:
        out.pop(key, None)  # a dotted key at the top level
        *path, last = key.split(".")
        section = out
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(last, None)
    # A section left empty says nothing: `runtime: {amp: bf16}` is the same study as no `runtime`.
    return {k: v for k, v in out.items() if v != {}}


def identity_record(spec: StudySpec, dataset: DatasetDescription) -> dict[str, Any]:
    """What :func:`study_identity` digests (also logged, so that a refusal can say what differs)."""
    return {
        "fixed": _without_placement(spec.fixed),
        "space": [p.describe() for p in spec.space.params],
        "objectives": [f"{o.metric}:{o.mode}" for o in spec.objectives],
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
    }


def study_identity(spec: StudySpec, dataset: DatasetDescription) -> str:
    """12 hex digits naming what a study's trials compute (see the module docstring)."""
    blob = json.dumps(identity_record(spec, dataset), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
