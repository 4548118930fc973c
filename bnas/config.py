"""Configuration as data: typed sections loaded from YAML, validated before any work starts.

Every paper constant is a setting with its default and a source mark (see docs/method.md):
``[P]`` the paper states it, ``[C]`` the authors' released code, ``[R]`` recalled from the paper's
text but not re-checked (uncertain), ``[D]`` a design decision of this project. The mark, the valid
range and the choices are declared with each setting (:func:`bnas.settings.setting`); the mark shows
in :func:`describe_settings` (``python -m bnas settings``).

Validation happens when a section is constructed, so no invalid configuration object exists: direct
construction and ``dataclasses.replace`` raise :class:`ConfigError` naming the key; a file reports
all its problems at once, one line each naming the file, the dotted key, the value and what would be
valid. Names of swappable components (binarization method, reduction strategy, dataset, network) are
checked against torch-free catalogues (:mod:`bnas.catalog`): importing the configuration imports no
torch. The sections are in :mod:`bnas.sections`, the YAML reader in :mod:`bnas.yaml_files`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bnas import settings
from bnas.catalog import FIXED_CLASSES, NetworkChoice, resolve_network
from bnas.errors import ConfigError
from bnas.sections import (  # noqa: F401  (re-exported: the sections live there)
    ALL_OPS,
    BinarizationConfig,
    DataConfig,
    ReductionConfig,
    RetrainConfig,
    RuntimeConfig,
    SearchConfig,
)
from bnas.settings import OneOf, Section, flatten, rule, setting  # noqa: F401  (re-exported)
from bnas.yaml_files import (  # noqa: F401  (re-exported)
    apply_overrides,
    parse_overrides,
    parse_yaml_text,
    read_yaml,
)

__all__ = [
    "ALL_OPS",
    "BinarizationConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ReductionConfig",
    "RetrainConfig",
    "RuntimeConfig",
    "SearchConfig",
    "apply_overrides",
    "config_from_dict",
    "describe_settings",
    "flatten",
    "load_config",
    "parse_overrides",
    "parse_yaml_text",
    "phase_problems",
    "read_yaml",
    "require_phase",
    "setting",
]


@dataclass
class ExperimentConfig(Section):
    """One search and/or retraining: everything a run of the core needs."""

    seed: int = setting(0, "[D]", "seed for weights, data split and sampling", ge=0, le=2**32 - 1)
    device: str = setting("auto", "[D]", "auto, cpu, cuda or cuda:N", affects_results=False)
    threads: int | None = setting(
        None,
        "[D]",
        "CPU threads for torch; null = torch's default. Tiny CPU runs are fastest with 1",
        ge=1,
        affects_results=False,
    )
    network: str = setting(
        "auto",
        "[D]",
        "network layout of the search and the retraining: cifar or imagenet (DARTS "
        "NetworkImageNet: stems stride 8); auto = from the dataset (imagenet for imagenet, else cifar)",
        choices=NetworkChoice(),
    )
    data: DataConfig = field(default_factory=DataConfig)
    binarization: BinarizationConfig = field(default_factory=BinarizationConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def network_layout(self) -> str:
        """The resolved ``network``: ``cifar`` or ``imagenet`` (``auto`` follows the dataset)."""
        return resolve_network(self.network, self.data.dataset)

    @rule("network", "data.dataset", "data.image_size", "search.init_channels", "retrain.init_channels")
    def _imagenet_shapes(self) -> str | None:
        # The ImageNet stems stride 8 and halve C first (DARTS NetworkImageNet).
        if self.network_layout() != "imagenet":
            return None
        if self.data.image_size < 32:
            return f"imagenet needs data.image_size >= 32 (the stems stride 8), got {self.data.image_size}"
        odd = [
            f"{k}={v}"
            for k, v in (
                ("search.init_channels", self.search.init_channels),
                ("retrain.init_channels", self.retrain.init_channels),
            )
            if v % 2
        ]
        if odd:
            return f"imagenet halves C in its stem: {', '.join(odd)} must be even"
        return None

    @rule("device")
    def _device_name(self) -> str | None:
        dev = self.device
        if dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()):
            return None
        return f"{dev!r} is not valid; use auto, cpu, cuda or cuda:N"

    @rule("reduction.stages", "search.ops", "search.none_op", "reduction.strategy")
    def _stages_leave_an_op(self) -> str | None:
        # Every stage removes one op per edge (method.md section 6); `none` removes nothing.
        n_ops, stages = len(self.search.candidate_ops()), self.reduction.stages
        if stages is not None and self.reduction.strategy != "none" and stages > n_ops - 1:
            return (
                f"{stages} stages would remove more than the {n_ops - 1} ops that can go "
                f"from {n_ops} per edge"
            )
        return None

    @rule("search.ops", "search.none_op", "reduction.stages", "reduction.strategy")
    def _ops_for_the_stages(self) -> str | None:
        # With stages null, the search runs max(ops - 1, 1) stages and each removes one op per edge
        # (bnas.search): a single op leaves a reducing strategy nothing to remove, and the trial would
        # fail only once it runs. (An explicit reduction.stages is checked by _stages_leave_an_op.)
        n_ops = len(self.search.candidate_ops())
        if self.reduction.stages is None and self.reduction.strategy != "none" and n_ops < 2:
            return (
                f"{self.search.candidate_ops()} leaves the {self.reduction.strategy!r} strategy nothing to "
                "remove "
                "(each stage removes one operation per edge); list at least 2 operations, or use "
                "reduction.strategy: none"
            )
        return None

    @rule("data.train_subset", "data.dataset", "data.image_size")
    def _a_subset_holds_every_class(self) -> str | None:
        # The class-balanced subset (bnas.data.splits) gives every class at least one image. Only the
        # CIFAR formats fix their class count; a class-folder dataset (folder, imagenet) may hold fewer
        # classes than its nominal count, known once the folder is read (bnas.catalog.FIXED_CLASSES).
        classes = FIXED_CLASSES.get(self.data.dataset)
        n = self.data.train_subset
        if n is not None and classes is not None and n < classes:
            return (
                f"{n} images cannot hold one of each of the {classes} classes of "
                f"{self.data.dataset}; use at least {classes} (or null for all)"
            )
        return None

    @rule("runtime.data_on_device", "retrain.autoaugment")
    def _device_data_without_autoaugment(self) -> str | None:
        # AutoAugment is a per-image PIL-style policy that runs on the CPU loader only (bnas.data).
        if self.retrain.autoaugment and self.runtime.data_on_device in ("on", True):
            return (
                "on cannot be combined with retrain.autoaugment: true (AutoAugment runs on the CPU "
                "loader only); use auto (falls back to the CPU loader) or off"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. ``{"search.sampling_k": 2, ...}`` (for trackers)."""
        return flatten(self.to_dict())

    def result_identity(self) -> dict[str, Any]:
        """Flat settings that change what a run computes: the checkpoint identity rule.

        Settings declared ``affects_results=False`` are left out -- device, threads and where the
        data lives (root, download, loader workers): a run may resume on another machine or after
        the data moved.
        """
        return settings.result_identity(self)

    def digest(self) -> str:
        """First 12 hex digits of SHA-256 of all the settings as sorted JSON (placement included)."""
        return _sha12(self.to_dict())

    def result_digest(self) -> str:
        """First 12 hex digits of SHA-256 of :meth:`result_identity` as sorted JSON.

        The one identity rule: a checkpoint, a study and a retraining record are "the same run"
        when this digest is; placement settings (:data:`PLACEMENT_KEYS`) never enter it.
        """
        return _sha12(self.result_identity())


def _sha12(data: Any) -> str:
    """First 12 hex digits of SHA-256 of ``data`` as sorted JSON (non-JSON values as their str)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: Dotted keys of the settings declared ``affects_results=False`` (where and how fast a run computes:
#: device, threads, data location, loader workers, checkpoint cadence, runtime speed-ups). Every
#: identity -- checkpoint, study, retraining record -- leaves exactly these out.
PLACEMENT_KEYS: frozenset[str] = frozenset(settings.nonresult_keys(ExperimentConfig))


def phase_problems(cfg: ExperimentConfig, phase: Literal["search", "retrain"]) -> list[tuple[str, str]]:
    """What makes ``cfg`` useless for one phase although every setting is valid on its own.

    One configuration serves both phases, each with its own batch size, so these are not rules of
    the settings (a retraining config need not fit the search's batch): the search checks its own
    before any work (:class:`bnas.search.Search`), retraining its own (:func:`bnas.retrain.retrain`),
    and a study every trial's settings for both. A training split smaller than one batch gives one
    short batch per epoch: the batch size (and the learning rate tuned for it) would mean nothing.
    """
    n = cfg.data.train_subset
    if n is None:
        return []
    if phase == "search":
        # bnas.data.splits: val_fraction of the subset is held out for the architecture step.
        n_train = n - min(n - 1, max(1, round(n * cfg.data.val_fraction)))
        batch = cfg.search.batch_size
        if n_train < batch:
            need = math.ceil(batch / (1 - cfg.data.val_fraction))
            return [
                (
                    "data.train_subset",
                    f"{n} images leave {n_train} for the search's weight step, fewer than one batch "
                    f"(search.batch_size={batch}); use at least {need} images or a smaller search.batch_size",
                )
            ]
    elif n < cfg.retrain.batch_size:
        return [
            (
                "data.train_subset",
                f"{n} images are fewer than one retraining batch (retrain.batch_size="
                f"{cfg.retrain.batch_size}); use at least {cfg.retrain.batch_size} images or a smaller "
                "retrain.batch_size",
            )
        ]
    return []


def require_phase(
    cfg: ExperimentConfig, phase: Literal["search", "retrain"], source: str | None = None
) -> None:
    """Raise :class:`ConfigError` with :func:`phase_problems`, if any."""
    problems = phase_problems(cfg, phase)
    if problems:
        raise ConfigError.collect(problems, source)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def config_from_dict(data: dict[str, Any] | None, source: str | None = None) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig`; ``source`` names the file in errors.

    When the network layout is ``imagenet`` (set, or ``auto`` with the ``imagenet`` dataset), the
    settings of :class:`ImageNetProtocol` that ``data`` does not set fill in (see there).
    """
    return settings.build(ExperimentConfig, with_network_protocol(data or {}), source)


@dataclass
class ImageNetProtocol(Section):
    """The ImageNet retraining protocol (DARTS ``train_imagenet.py`` [C], also PC-DARTS' except for its
    8-GPU batch of 1024 at lr 0.5): the values a configuration with the ``imagenet`` network gets for
    the settings it does not set. Each field stands for the setting in :data:`IMAGENET_PROTOCOL_KEYS`."""

    image_size: int = setting(224, "[C]", "input side (ImageNet: 224 px)", ge=32)
    layers: int = setting(14, "[C]", "cells of the evaluation network", ge=3)
    init_channels: int = setting(48, "[C]", "channels of the first cell", ge=2)
    epochs: int = setting(250, "[C]", "training epochs", ge=1)
    batch_size: int = setting(128, "[C]", "training batch size (one GPU)", ge=1)
    lr: float = setting(0.1, "[C]", "SGD learning rate", gt=0)
    weight_decay: float = setting(3e-5, "[C]", "SGD weight decay", ge=0)
    lr_schedule: Literal["cosine", "step"] = setting("step", "[C]", "lr * lr_gamma after every epoch")
    lr_gamma: float = setting(0.97, "[C]", "step decay per epoch", gt=0, le=1)
    label_smoothing: float = setting(0.1, "[C]", "label smoothing", ge=0, lt=1)
    auxiliary_weight: float = setting(0.4, "[C]", "weight of the auxiliary loss", ge=0)
    drop_path_prob: float = setting(0.0, "[C]", "drop path (none on ImageNet)", ge=0, lt=1)
    cutout: int = setting(0, "[C]", "no Cutout on ImageNet", ge=0)


#: Where each :class:`ImageNetProtocol` field goes in an experiment configuration.
IMAGENET_PROTOCOL_KEYS = {
    name: ("data" if name == "image_size" else "retrain") for name in ImageNetProtocol.__dataclass_fields__
}


def with_network_protocol(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the :class:`ImageNetProtocol` defaults filled in where the layout is ``imagenet``
    and the setting is absent (a copy; unchanged for the CIFAR layout or malformed input, which the
    validation then reports)."""
    if not isinstance(data, dict):
        return data
    network, data_section = data.get("network", "auto"), data.get("data", {})
    dataset = data_section.get("dataset", "cifar10") if isinstance(data_section, dict) else "cifar10"
    if not isinstance(network, str) or not isinstance(dataset, str) or NetworkChoice().check(network):
        return data
    if resolve_network(network, dataset) != "imagenet":
        return data
    out = copy.deepcopy(data)
    protocol = asdict(ImageNetProtocol())
    for name, section in IMAGENET_PROTOCOL_KEYS.items():
        node = out.setdefault(section, {})
        if isinstance(node, dict) and name not in node:
            node[name] = protocol[name]
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict | None = None
) -> ExperimentConfig:
    """Load a YAML experiment file (or the defaults when ``path`` is None) plus ``--set`` overrides."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "<defaults>"
    if data is not None and not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", source)
    if overrides:
        ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        data = apply_overrides(data or {}, ov)
        source = f"{source} (with overrides)"
    return config_from_dict(data, source)


def describe_settings(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """Rows of (dotted key, default, source mark, doc) for every setting: the provenance table."""
    return settings.describe(cls, prefix)
