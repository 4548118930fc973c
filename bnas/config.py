"""Configuration as data: typed sections loaded from YAML, validated before any work starts.

Every paper constant is a setting with its default and a source mark (see ``../shared/docs/method.md``):
``[P]`` the paper states it, ``[C]`` the authors' released code, ``[R]`` recalled from the paper's
text but not re-checked (uncertain), ``[D]`` a design decision of this project. The mark, the valid
range and the choices are declared with each setting (:func:`bnas.settings.setting`); the mark shows
in :func:`describe_settings` (``python -m bnas settings``).

Validation happens when a section is constructed, so no invalid configuration object exists: direct
construction and ``dataclasses.replace`` raise :class:`ConfigError` naming the key; a file reports
all its problems at once, one line each naming the file, the dotted key, the value and what would be
valid. Names of swappable components (binarization method, reduction strategy, dataset) are checked
by their registries.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bnas import settings
from bnas.binarization import BINARIZATIONS
from bnas.data import DATASETS
from bnas.errors import ConfigError
from bnas.reduction import REDUCTIONS
from bnas.search_space import OPS
from bnas.settings import OneOf, Section, flatten, rule, setting  # noqa: F401  (re-exported)

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
    "read_yaml",
    "setting",
]

ALL_OPS = list(OPS)  # kept for existing importers; the search space owns the list

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig(Section):
    """Which images, where they are, and how much of them a run uses."""

    dataset: str = setting("cifar10", "[D]", "registry name: cifar10, cifar100 or folder", choices=DATASETS)
    root: str | None = setting(
        None, "[D]", "dataset folder; None reads $BNAS_DATA_ROOT, else ./data", affects_results=False
    )
    download: bool = setting(False, "[D]", "fetch the official archive when missing", affects_results=False)
    image_size: int = setting(32, "[C]", "side of the square input; CPU configs use 16 or less", ge=8)
    train_subset: int | None = setting(None, "[D]", "use only this many training images", ge=2)
    test_subset: int | None = setting(None, "[D]", "use only this many test images", ge=2)
    val_fraction: float = setting(
        0.5, "[C]", "search: share of the training images held out for the architecture step", gt=0, lt=1
    )
    num_workers: int = setting(0, "[D]", "DataLoader worker processes", ge=0, affects_results=False)


@dataclass
class BinarizationConfig(Section):
    """How weights (and optionally activations) are binarized (method.md section 4)."""

    method: str = setting(
        "xnor", "[P]", "registry name: xnor, xnor_channel, pcnn or fp", choices=BINARIZATIONS
    )
    activations: Literal["real", "binary"] = setting(
        "real", "[P]", "real = w1a32 (the AAAI paper); binary = w1a1 (journal extension) [D]"
    )
    pcnn_lambda: float = setting(1e-4, "[R]", "PCNN projection-loss weight lambda (uncertain)", ge=0)
    pcnn_eta: float = setting(0.0, "[R]", "PCNN eta: 0 is the simple projection loss (uncertain)")


@dataclass
class SearchConfig(Section):
    """The super-network and its bilevel optimisation (method.md sections 2 and 5)."""

    # >= 3 cells: two of them are the reduction cells at 1/3 and 2/3 of the depth.
    layers: int = setting(6, "[R]", "cells in the search network (PC-DARTS: 8)", ge=3)
    init_channels: int = setting(16, "[R]", "channels of the first cell", ge=1)
    nodes: int = setting(4, "[C]", "intermediate nodes per cell", ge=1)
    stem_multiplier: int = setting(3, "[C]", "stem channels = multiplier * init_channels", ge=1)
    sampling_k: int = setting(2, "[R]", "channel sampling: 1/K of the channels go through the ops", ge=1)
    ops: list[str] = setting(
        list(ALL_OPS),
        "[C]",
        "candidate operations per edge",
        choices=OneOf(OPS, "unknown operation {value!r}"),
        min_len=1,
        unique=True,
        noun="operation",
    )
    batch_size: int = setting(128, "[R]", "super-network batch size", ge=1)
    lr: float = setting(0.025, "[R]", "SGD learning rate for the weights (cosine schedule)", gt=0)
    lr_min: float = setting(0.0, "[C]", "cosine floor (PC-DARTS uses 0)", ge=0)
    momentum: float = setting(0.9, "[R]", "SGD momentum", ge=0)
    weight_decay: float = setting(5e-4, "[R]", "SGD weight decay", ge=0)
    grad_clip: float = setting(5.0, "[C]", "gradient norm clip for the weights", ge=0)
    arch_lr: float = setting(0.01, "[R]", "Adam learning rate for alpha and beta (PC-DARTS: 6e-4)", gt=0)
    arch_weight_decay: float = setting(1e-3, "[C]", "Adam weight decay for alpha and beta", ge=0)
    arch_beta1: float = setting(0.5, "[C]", "Adam beta1 for alpha and beta", ge=0, lt=1)
    max_batches_per_epoch: int | None = setting(
        None, "[D]", "cap on batches per epoch (CPU-sized runs); null = the whole split", ge=1
    )
    validate_every: int = setting(
        1,
        "[C]",
        "validate the super-network every N epochs and in the last (DARTS: 1; PC-DARTS: last only); "
        "epochs between report no val_acc",
        ge=1,
    )
    val_max_batches: int | None = setting(
        None, "[D]", "cap on batches of the per-epoch validation; null = max_batches_per_epoch", ge=1
    )
    checkpoint_every: int = setting(
        1,
        "[D]",
        "write checkpoint.pt every N epochs (always after a reduction); results do not change",
        ge=1,
        affects_results=False,
    )

    @rule("init_channels", "sampling_k")
    def _channels_split_into_k(self) -> str | None:
        # Partial channel connections send C/K channels through the ops (method.md section 5).
        k = self.sampling_k
        if self.init_channels % k:
            return f"{self.init_channels} is not divisible by sampling_k={k}; choose a multiple of {k}"
        return None

    @rule("ops")
    def _an_op_that_computes(self) -> str | None:
        if all(o == "none" for o in self.ops):
            return "needs at least one operation other than 'none'"
        return None


@dataclass
class ReductionConfig(Section):
    """The pruning schedule: operation space reduction (method.md section 6)."""

    strategy: str = setting(
        "performance", "[P]", "registry name: performance, alpha, none or ucb", choices=REDUCTIONS
    )
    epochs_per_stage: int = setting(5, "[R]", "L: super-network epochs per stage", ge=1)
    warmup_epochs: int = setting(3, "[R]", "W: first-stage epochs with alpha frozen", ge=0)
    rounds: int = setting(3, "[R]", "T: sampling rounds per stage", ge=1)
    subnet_epochs: int = setting(1, "[R]", "V: epochs each sampled sub-network trains", ge=1)
    subnet_batch_size: int = setting(400, "[R]", "batch size of the sampled sub-networks", ge=1)
    subnet_max_batches: int | None = setting(
        None, "[D]", "cap on batches per sub-network epoch (CPU-sized runs); null = whole split", ge=1
    )
    subnet_eval_batches: int | None = setting(
        None,
        "[R]",
        "validation batches that score a sampled sub-network; null = the whole split (capped by "
        "search.max_batches_per_epoch)",
        ge=1,
    )
    temperature: float = setting(
        0.05, "[D]", "tau in softmax(acc/tau): accuracies in [0, 1] give a flat softmax at tau=1", gt=0
    )
    ucb_c: float = setting(1.0, "[D]", "ucb strategy: weight of sqrt(2 ln N / n_o)", ge=0)
    stages: int | None = setting(
        None, "[D]", "number of stages; null = (ops per edge) - 1, i.e. until one op is left", ge=1
    )

    @rule("warmup_epochs", "epochs_per_stage")
    def _warmup_within_a_stage(self) -> str | None:
        if self.warmup_epochs > self.epochs_per_stage:
            return f"{self.warmup_epochs} exceeds epochs_per_stage={self.epochs_per_stage}"
        return None


@dataclass
class RetrainConfig(Section):
    """Training the evaluation network built from a genotype (method.md section 8)."""

    layers: int = setting(20, "[C]", "cells in the evaluation network", ge=3)  # two are reduction cells
    init_channels: int = setting(36, "[C]", "channels of the first cell (the larger model: 44)", ge=1)
    auxiliary: bool = setting(True, "[C]", "auxiliary head after the second reduction cell")
    auxiliary_weight: float = setting(0.4, "[C]", "weight of the auxiliary loss", ge=0)
    epochs: int = setting(600, "[R]", "training epochs", ge=1)
    batch_size: int = setting(96, "[R]", "training batch size", ge=1)
    eval_batch_size: int = setting(256, "[D]", "batch size for evaluation", ge=1)
    lr: float = setting(0.025, "[R]", "SGD learning rate (cosine to lr_min)", gt=0)
    lr_min: float = setting(0.0, "[R]", "cosine floor", ge=0)
    momentum: float = setting(0.9, "[R]", "SGD momentum", ge=0)
    weight_decay: float = setting(3e-4, "[R]", "SGD weight decay", ge=0)
    grad_clip: float = setting(5.0, "[R]", "gradient norm clip", ge=0)
    drop_path_prob: float = setting(0.2, "[R]", "final drop-path probability (linear ramp)", ge=0, lt=1)
    cutout: int = setting(16, "[R]", "cutout side in pixels (scaled with image_size); 0 = off", ge=0)
    autoaugment: bool = setting(False, "[C]", "AutoAugment CIFAR-10 policy (released transform)")
    bn_eps: float = setting(1e-3, "[C]", "BatchNorm epsilon of the evaluation network", ge=0)
    max_batches_per_epoch: int | None = setting(
        None, "[D]", "cap on batches per epoch (CPU-sized runs); null = the whole split", ge=1
    )


#: ``auto`` / ``on`` / ``off``; YAML reads a bare on/off as a boolean, so true/false are accepted too.
Switch = Literal["auto", "on", "off"] | bool


@dataclass
class RuntimeConfig(Section):
    """How fast a run computes on its device (:mod:`bnas.accel`), never what it computes.

    ``auto`` turns a speed-up on for CUDA and leaves it off on the CPU, so CPU results stay bit for bit
    what they were. Switched on, bf16 autocast and channels_last change the numbers within float
    tolerance (not bit for bit); none of these settings is part of a checkpoint's identity, so a run
    may resume on another device with other settings.
    """

    amp: Literal["auto", "bf16", "off"] | bool = setting(
        "auto", "[D]", "bf16 autocast of forward passes (BN statistics, loss in fp32); auto = on for CUDA",
        affects_results=False,
    )
    channels_last: Switch = setting(
        "auto", "[D]", "channels_last memory format for model and inputs; auto = on for CUDA",
        affects_results=False,
    )
    cudnn_benchmark: Switch = setting(
        "auto", "[D]", "torch.backends.cudnn.benchmark inside the run (restored after); auto = on for CUDA",
        affects_results=False,
    )
    data_on_device: Switch = setting(
        "auto", "[D]", "uint8 images held on the device, augmented there in batches; auto = on for CUDA "
        "when they fit (data_device_fraction) and AutoAugment is off", affects_results=False,
    )
    data_device_fraction: float = setting(
        0.25, "[D]", "data_on_device auto: the images may take at most this share of free device memory",
        gt=0, le=1, affects_results=False,
    )
    compile: bool = setting(
        False, "[D]", "torch.compile the super-network (recompiled after each reduction) and the "
        "evaluation network", affects_results=False,
    )


@dataclass
class ExperimentConfig(Section):
    """One search and/or retraining: everything a run of the core needs."""

    seed: int = setting(0, "[D]", "seed for weights, data split and sampling")
    device: str = setting("auto", "[D]", "auto, cpu, cuda or cuda:N", affects_results=False)
    threads: int | None = setting(
        None,
        "[D]",
        "CPU threads for torch; null = torch's default. Tiny CPU runs are fastest with 1",
        ge=1,
        affects_results=False,
    )
    data: DataConfig = field(default_factory=DataConfig)
    binarization: BinarizationConfig = field(default_factory=BinarizationConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @rule("device")
    def _device_name(self) -> str | None:
        dev = self.device
        if dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()):
            return None
        return f"{dev!r} is not valid; use auto, cpu, cuda or cuda:N"

    @rule("reduction.stages", "search.ops", "reduction.strategy")
    def _stages_leave_an_op(self) -> str | None:
        # Every stage removes one op per edge (method.md section 6); `none` removes nothing.
        n_ops, stages = len(self.search.ops), self.reduction.stages
        if stages is not None and self.reduction.strategy != "none" and stages > n_ops - 1:
            return (
                f"{stages} stages would remove more than the {n_ops - 1} ops that can go "
                f"from {n_ops} per edge"
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
        """First 12 hex digits of SHA-256 of the settings as sorted JSON."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; syntax errors become :class:`ConfigError` with the line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", str(path))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"malformed YAML at {where}: {e.problem}", str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML: {e}", str(path)) from None


def parse_overrides(items: list[str] | None, source: str = "--set") -> dict[str, Any]:
    """``["search.sampling_k=4", "seed=1"]`` -> ``{"search.sampling_k": 4, "seed": 1}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}", source)
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else None
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], source: str = "--set") -> dict[str, Any]:
    """Set dotted keys in a nested dict (a deep copy); unknown sections are caught by the loader."""
    data = copy.deepcopy(data or {})
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{p!r} is not a section", source, dotted)
            node = nxt
        node[parts[-1]] = value
    return data


def config_from_dict(data: dict[str, Any] | None, source: str | None = None) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig`; ``source`` names the file in errors."""
    return settings.build(ExperimentConfig, data or {}, source)


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
