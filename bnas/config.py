"""Configuration as data: typed sections loaded from YAML, validated before any work starts.

Every paper constant is a field with its default and a source mark (see ``../shared/docs/method.md``):
``[P]`` the paper states it, ``[C]`` the authors' released code, ``[R]`` recalled from the paper's
text but not re-checked (uncertain), ``[D]`` a design decision of this project. The mark sits in the
field's metadata (``source``) and shows in :func:`describe_settings`.

Unknown keys, wrong types and impossible values raise :class:`ConfigError`, whose message names the
file, the dotted key and what would be valid.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ALL_OPS = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


class ConfigError(ValueError):
    """A configuration problem, reported as ``<file>: <key>: <what is wrong and what is valid>``."""

    def __init__(self, message: str, source: str | None = None, key: str | None = None) -> None:
        self.source, self.key, self.problem = source, key, message
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


def setting(default: Any, source: str, doc: str = "") -> Any:
    """A dataclass field carrying its provenance mark (``[P]``, ``[C]``, ``[R]`` or ``[D]``)."""
    meta = {"source": source, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which images, where they are, and how much of them a run uses."""

    dataset: str = setting("cifar10", "[D]", "registry name: cifar10, cifar100 or folder")
    root: str | None = setting(None, "[D]", "dataset folder; None reads $BNAS_DATA_ROOT, else ./data")
    download: bool = setting(False, "[D]", "fetch the official archive when missing")
    image_size: int = setting(32, "[C]", "side of the square input; CPU configs use 16 or less")
    train_subset: int | None = setting(None, "[D]", "use only this many training images")
    test_subset: int | None = setting(None, "[D]", "use only this many test images")
    val_fraction: float = setting(
        0.5, "[C]", "search: share of the training images held out for the architecture step"
    )
    num_workers: int = setting(0, "[D]", "DataLoader worker processes")

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.image_size < 8:
            errs.append(("image_size", f"must be >= 8, got {self.image_size}"))
        for k in ("train_subset", "test_subset"):
            v = getattr(self, k)
            if v is not None and v < 2:
                errs.append((k, f"must be >= 2 or null, got {v}"))
        if not 0.0 < self.val_fraction < 1.0:
            errs.append(("val_fraction", f"must lie strictly between 0 and 1, got {self.val_fraction}"))
        if self.num_workers < 0:
            errs.append(("num_workers", f"must be >= 0, got {self.num_workers}"))
        return errs


@dataclass
class BinarizationConfig:
    """How weights (and optionally activations) are binarized (method.md section 4)."""

    method: str = setting("xnor", "[P]", "registry name: xnor, xnor_channel, pcnn or fp")
    activations: Literal["real", "binary"] = setting(
        "real", "[P]", "real = w1a32 (the AAAI paper); binary = w1a1 (journal extension) [D]"
    )
    pcnn_lambda: float = setting(1e-4, "[R]", "PCNN projection-loss weight lambda (uncertain)")
    pcnn_eta: float = setting(0.0, "[R]", "PCNN eta: 0 is the simple projection loss (uncertain)")

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.pcnn_lambda < 0:
            errs.append(("pcnn_lambda", f"must be >= 0, got {self.pcnn_lambda}"))
        return errs


@dataclass
class SearchConfig:
    """The super-network and its bilevel optimisation (method.md sections 2 and 5)."""

    layers: int = setting(6, "[R]", "cells in the search network (PC-DARTS: 8)")
    init_channels: int = setting(16, "[R]", "channels of the first cell")
    nodes: int = setting(4, "[C]", "intermediate nodes per cell")
    stem_multiplier: int = setting(3, "[C]", "stem channels = multiplier * init_channels")
    sampling_k: int = setting(2, "[R]", "channel sampling: 1/K of the channels go through the ops")
    ops: list[str] = setting(list(ALL_OPS), "[C]", "candidate operations per edge")
    batch_size: int = setting(128, "[R]", "super-network batch size")
    lr: float = setting(0.025, "[R]", "SGD learning rate for the weights (cosine schedule)")
    lr_min: float = setting(0.0, "[C]", "cosine floor (PC-DARTS uses 0)")
    momentum: float = setting(0.9, "[R]", "SGD momentum")
    weight_decay: float = setting(5e-4, "[R]", "SGD weight decay")
    grad_clip: float = setting(5.0, "[C]", "gradient norm clip for the weights")
    arch_lr: float = setting(0.01, "[R]", "Adam learning rate for alpha and beta (PC-DARTS: 6e-4)")
    arch_weight_decay: float = setting(1e-3, "[C]", "Adam weight decay for alpha and beta")
    arch_beta1: float = setting(0.5, "[C]", "Adam beta1 for alpha and beta")
    max_batches_per_epoch: int | None = setting(
        None, "[D]", "cap on batches per epoch (CPU-sized runs); null = the whole split"
    )

    def check(self) -> list[tuple[str, str]]:
        errs = []
        for k in ("layers", "init_channels", "nodes", "stem_multiplier", "sampling_k", "batch_size"):
            if getattr(self, k) < 1:
                errs.append((k, f"must be >= 1, got {getattr(self, k)}"))
        if self.layers >= 1 and self.layers < 3:
            errs.append(("layers", f"needs >= 3 cells (two of them reduction cells), got {self.layers}"))
        if self.sampling_k >= 1 and self.init_channels % self.sampling_k:
            errs.append(
                (
                    "init_channels",
                    f"{self.init_channels} is not divisible by sampling_k={self.sampling_k}; "
                    f"choose a multiple of {self.sampling_k}",
                )
            )
        if not self.ops:
            errs.append(("ops", "needs at least one operation"))
        bad = [o for o in self.ops if o not in ALL_OPS]
        if bad:
            errs.append(("ops", f"unknown operation(s) {bad}; valid: {', '.join(ALL_OPS)}"))
        if len(set(self.ops)) != len(self.ops):
            errs.append(("ops", f"lists an operation twice: {self.ops}"))
        if self.ops and all(o == "none" for o in self.ops):
            errs.append(("ops", "needs at least one operation other than 'none'"))
        for k in ("lr", "arch_lr"):
            if getattr(self, k) <= 0:
                errs.append((k, f"must be > 0, got {getattr(self, k)}"))
        for k in ("lr_min", "weight_decay", "arch_weight_decay", "grad_clip", "momentum"):
            if getattr(self, k) < 0:
                errs.append((k, f"must be >= 0, got {getattr(self, k)}"))
        if self.max_batches_per_epoch is not None and self.max_batches_per_epoch < 1:
            errs.append(("max_batches_per_epoch", f"must be >= 1 or null, got {self.max_batches_per_epoch}"))
        return errs


@dataclass
class ReductionConfig:
    """The pruning schedule: operation space reduction (method.md section 6)."""

    strategy: str = setting("performance", "[P]", "registry name: performance, alpha, none or ucb")
    epochs_per_stage: int = setting(5, "[R]", "L: super-network epochs per stage")
    warmup_epochs: int = setting(3, "[R]", "W: first-stage epochs with alpha frozen")
    rounds: int = setting(3, "[R]", "T: sampling rounds per stage")
    subnet_epochs: int = setting(1, "[R]", "V: epochs each sampled sub-network trains")
    subnet_batch_size: int = setting(400, "[R]", "batch size of the sampled sub-networks")
    subnet_max_batches: int | None = setting(
        None, "[D]", "cap on batches per sub-network epoch (CPU-sized runs); null = whole split"
    )
    temperature: float = setting(
        0.05, "[D]", "tau in softmax(acc/tau): accuracies in [0, 1] give a flat softmax at tau=1"
    )
    ucb_c: float = setting(1.0, "[D]", "ucb strategy: weight of sqrt(2 ln N / n_o)")
    stages: int | None = setting(
        None, "[D]", "number of stages; null = (ops per edge) - 1, i.e. until one op is left"
    )

    def check(self) -> list[tuple[str, str]]:
        errs = []
        for k in ("epochs_per_stage", "rounds", "subnet_epochs", "subnet_batch_size"):
            if getattr(self, k) < 1:
                errs.append((k, f"must be >= 1, got {getattr(self, k)}"))
        if self.warmup_epochs < 0:
            errs.append(("warmup_epochs", f"must be >= 0, got {self.warmup_epochs}"))
        elif self.epochs_per_stage >= 1 and self.warmup_epochs > self.epochs_per_stage:
            errs.append(
                (
                    "warmup_epochs",
                    f"{self.warmup_epochs} exceeds epochs_per_stage={self.epochs_per_stage}",
                )
            )
        if self.temperature <= 0:
            errs.append(("temperature", f"must be > 0, got {self.temperature}"))
        if self.ucb_c < 0:
            errs.append(("ucb_c", f"must be >= 0, got {self.ucb_c}"))
        if self.stages is not None and self.stages < 1:
            errs.append(("stages", f"must be >= 1 or null, got {self.stages}"))
        if self.subnet_max_batches is not None and self.subnet_max_batches < 1:
            errs.append(("subnet_max_batches", f"must be >= 1 or null, got {self.subnet_max_batches}"))
        return errs


@dataclass
class RetrainConfig:
    """Training the evaluation network built from a genotype (method.md section 8)."""

    layers: int = setting(20, "[C]", "cells in the evaluation network")
    init_channels: int = setting(36, "[C]", "channels of the first cell (the larger model: 44)")
    auxiliary: bool = setting(True, "[C]", "auxiliary head after the second reduction cell")
    auxiliary_weight: float = setting(0.4, "[C]", "weight of the auxiliary loss")
    epochs: int = setting(600, "[R]", "training epochs")
    batch_size: int = setting(96, "[R]", "training batch size")
    eval_batch_size: int = setting(256, "[D]", "batch size for evaluation")
    lr: float = setting(0.025, "[R]", "SGD learning rate (cosine to lr_min)")
    lr_min: float = setting(0.0, "[R]", "cosine floor")
    momentum: float = setting(0.9, "[R]", "SGD momentum")
    weight_decay: float = setting(3e-4, "[R]", "SGD weight decay")
    grad_clip: float = setting(5.0, "[R]", "gradient norm clip")
    drop_path_prob: float = setting(0.2, "[R]", "final drop-path probability (linear ramp)")
    cutout: int = setting(16, "[R]", "cutout side in pixels (scaled with image_size); 0 = off")
    autoaugment: bool = setting(False, "[C]", "AutoAugment CIFAR-10 policy (released transform)")
    bn_eps: float = setting(1e-3, "[C]", "BatchNorm epsilon of the evaluation network")
    max_batches_per_epoch: int | None = setting(
        None, "[D]", "cap on batches per epoch (CPU-sized runs); null = the whole split"
    )

    def check(self) -> list[tuple[str, str]]:
        errs = []
        for k in ("layers", "init_channels", "epochs", "batch_size", "eval_batch_size"):
            if getattr(self, k) < 1:
                errs.append((k, f"must be >= 1, got {getattr(self, k)}"))
        if self.layers >= 1 and self.layers < 3:
            errs.append(("layers", f"needs >= 3 cells (two of them reduction cells), got {self.layers}"))
        if not 0.0 <= self.drop_path_prob < 1.0:
            errs.append(("drop_path_prob", f"must lie in [0, 1), got {self.drop_path_prob}"))
        if self.cutout < 0:
            errs.append(("cutout", f"must be >= 0, got {self.cutout}"))
        if self.lr <= 0:
            errs.append(("lr", f"must be > 0, got {self.lr}"))
        for k in ("lr_min", "weight_decay", "grad_clip", "momentum", "auxiliary_weight", "bn_eps"):
            if getattr(self, k) < 0:
                errs.append((k, f"must be >= 0, got {getattr(self, k)}"))
        if self.max_batches_per_epoch is not None and self.max_batches_per_epoch < 1:
            errs.append(("max_batches_per_epoch", f"must be >= 1 or null, got {self.max_batches_per_epoch}"))
        return errs


@dataclass
class ExperimentConfig:
    """One search and/or retraining: everything a run of the core needs."""

    seed: int = setting(0, "[D]", "seed for weights, data split and sampling")
    device: str = setting("auto", "[D]", "auto, cpu, cuda or cuda:N")
    threads: int | None = setting(
        None, "[D]", "CPU threads for torch; null = torch's default. Tiny CPU runs are fastest with 1"
    )
    data: DataConfig = field(default_factory=DataConfig)
    binarization: BinarizationConfig = field(default_factory=BinarizationConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def check(self) -> list[tuple[str, str]]:
        errs = []
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            errs.append(("device", f"{dev!r} is not valid; use auto, cpu, cuda or cuda:N"))
        if self.threads is not None and self.threads < 1:
            errs.append(("threads", f"must be >= 1 or null, got {self.threads}"))
        # Registry names are checked here (lazily imported: the registries live in their modules).
        from bnas.binarization import BINARIZATIONS
        from bnas.data import DATASETS
        from bnas.reduction import REDUCTIONS

        for key, reg, val in (
            ("binarization.method", BINARIZATIONS, self.binarization.method),
            ("reduction.strategy", REDUCTIONS, self.reduction.strategy),
            ("data.dataset", DATASETS, self.data.dataset),
        ):
            if val not in reg:
                errs.append((key, f"unknown name {val!r}; valid: {', '.join(reg.names())}"))
        n_ops, stages = len(self.search.ops), self.reduction.stages
        if stages is not None and self.reduction.strategy != "none" and stages > n_ops - 1:
            errs.append((
                "reduction.stages",
                f"{stages} stages would remove more than the {n_ops - 1} ops that can go "
                f"from {n_ops} per edge",
            ))
        return errs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. ``{"search.sampling_k": 2, ...}`` (for trackers)."""
        return flatten(self.to_dict())

    def digest(self) -> str:
        import hashlib
        import json

        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"list of {_type_name(arg)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", source, key)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", source, key)
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", source, key)
        return [_coerce(v, arg, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, source, key + ".")
    else:  # pragma: no cover - a programming error in the dataclasses above
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", source, key)


def _build(cls: type, data: dict[str, Any], source: str | None, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {data!r}", source, prefix.rstrip(".") or None)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown key{hint}; valid keys here: {', '.join(names)}", source, f"{prefix}{k}"
            )
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}", source)
    obj = cls(**kwargs)
    for key, problem in obj.check():
        raise ConfigError(problem, source, f"{prefix}{key}")
    return obj


def config_from_dict(data: dict[str, Any] | None, source: str | None = None) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig`; ``source`` names the file in errors."""
    return _build(ExperimentConfig, data or {}, source)


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
    """``["search.sampling_k=4", "seed=1"]`` -> ``{"search.sampling_k": 4, "seed": 1}``."""
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
    rows = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe_settings(hints[f.name], f"{prefix}{f.name}.")
        else:
            rows.append(
                (
                    f"{prefix}{f.name}",
                    getattr(default, f.name),
                    f.metadata.get("source", ""),
                    f.metadata.get("doc", ""),
                )
            )
    return rows
