"""A study: the YAML file in ``tune_configs/`` that says what the platform runs, loaded and checked.

A study names the fixed settings (an :class:`~bnas.config.ExperimentConfig` mapping), the space that
Optuna samples (:mod:`bnas.platform.space`), the objective(s), sampler, scheduler, trial count and
concurrency, per-trial resources and the retraining stage::

    description: one line shown by ``python run.py --list``
    fixed: {data: {...}, search: {...}, ...}        # ExperimentConfig sections
    space: {binarization.method: {choice: [...]}, ...}
    objectives: [{metric: derived_val_acc, mode: max}]
    sampler: {name: tpe, seed: 0, options: {n_startup_trials: 4}}
    scheduler: {name: asha, metric: val_acc, grace_period: 4, reduction_factor: 2}
    trials: 8
    concurrency: 2
    resources: {cpu: 1, gpu: auto}
    max_failures: 1
    retrain: {top_k: 2, seeds: [0, 1], overrides: {retrain.epochs: 1, retrain.layers: 3}}

:func:`load_study` checks all of it before anything starts: unknown keys and wrong types (naming the
file and the key), and every value of the space against the fixed settings (a sampled K that does not
divide the channels, a warm-up longer than a stage, ...), with and without the retraining overrides.
What needs the cluster (is there a GPU?) or the disk (is the dataset there?) is checked by
:mod:`bnas.platform.orchestrate` right after connecting, still before any trial or run exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bnas.config import (
    ConfigError,
    ExperimentConfig,
    _build,
    apply_overrides,
    config_from_dict,
    parse_overrides,
    read_yaml,
)
from bnas.platform.space import SearchSpace, parse_space, resolved_settings
from bnas.platform.tracking import SEARCH_FINAL_METRICS

#: Where ``run.py`` looks for studies by name.
STUDIES_DIR = Path(__file__).resolve().parents[2] / "tune_configs"

#: Figures every super-network epoch reports that a scheduler may use.
EPOCH_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


@dataclass
class Objective:
    metric: str = "derived_val_acc"
    mode: Literal["max", "min"] = "max"

    def check(self) -> list[tuple[str, str]]:
        if self.metric not in SEARCH_FINAL_METRICS:
            valid = ", ".join(SEARCH_FINAL_METRICS)
            return [("metric", f"{self.metric!r} is not reported by a search trial; valid: {valid}")]
        return []


@dataclass
class SamplerSpec:
    """An Optuna sampler by name; ``options`` are passed to its constructor (checked by name)."""

    name: Literal["tpe", "random", "nsga2", "gp", "qmc"] = "tpe"
    seed: int | None = 0

    def check(self) -> list[tuple[str, str]]:
        return []


@dataclass
class SchedulerSpec:
    """``asha`` stops weak trials early on a per-epoch metric; ``fifo`` runs every trial to the end."""

    name: Literal["asha", "fifo"] = "asha"
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    grace_period: int | None = None  # None: one epoch past the longest warm-up the space allows
    reduction_factor: int = 2

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.metric not in EPOCH_METRICS:
            errs.append(
                ("metric", f"{self.metric!r} is not reported every epoch; valid: {', '.join(EPOCH_METRICS)}")
            )
        if self.grace_period is not None and self.grace_period < 1:
            errs.append(("grace_period", f"must be >= 1, got {self.grace_period}"))
        if self.reduction_factor < 2:
            errs.append(("reduction_factor", f"must be >= 2, got {self.reduction_factor}"))
        return errs


@dataclass
class ResourceSpec:
    """Per trial. ``gpu: auto`` takes one GPU when the cluster has any, else none."""

    cpu: float = 1.0
    gpu: float | Literal["auto"] = "auto"

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.cpu <= 0:
            errs.append(("cpu", f"must be > 0, got {self.cpu}"))
        if self.gpu != "auto" and self.gpu < 0:
            errs.append(("gpu", f"must be >= 0 or auto, got {self.gpu}"))
        return errs


@dataclass
class RetrainStage:
    """Retrain the ``top_k`` distinct genotypes (by ``derived_val_acc``) once per seed."""

    top_k: int = 1
    seeds: list[int] = field(default_factory=lambda: [0])

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.top_k < 0:
            errs.append(("top_k", f"must be >= 0 (0 skips retraining), got {self.top_k}"))
        if not self.seeds:
            errs.append(("seeds", "needs at least one seed"))
        elif len(set(self.seeds)) != len(self.seeds):
            errs.append(("seeds", f"lists a seed twice: {self.seeds}"))
        return errs


@dataclass
class _Body:
    """The typed part of a study file (``fixed``, ``space`` and the option dicts are parsed apart)."""

    description: str = ""
    objectives: list[Objective] = field(default_factory=lambda: [Objective()])
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    trials: int = 4
    concurrency: int = 1
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    max_failures: int = 1
    retrain: RetrainStage = field(default_factory=RetrainStage)

    def check(self) -> list[tuple[str, str]]:
        errs = []
        for k in ("trials", "concurrency"):
            if getattr(self, k) < 1:
                errs.append((k, f"must be >= 1, got {getattr(self, k)}"))
        if self.max_failures < 0:
            errs.append(("max_failures", f"must be >= 0, got {self.max_failures}"))
        if not self.objectives:
            errs.append(("objectives", "needs at least one objective"))
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            errs.append(("objectives", f"names a metric twice: {names}"))
        if len(self.objectives) > 1 and self.sampler.name in ("gp",):
            errs.append(("sampler.name", "gp is single-objective here; use tpe, nsga2 or random"))
        return errs


#: Top-level keys of a study file.
STUDY_KEYS = [
    "description",
    "fixed",
    "space",
    "objectives",
    "sampler",
    "scheduler",
    "trials",
    "concurrency",
    "resources",
    "max_failures",
    "retrain",
]


@dataclass
class StudySpec:
    """A loaded and checked study. ``fixed`` is the raw settings mapping every trial starts from."""

    name: str
    source: str
    description: str
    fixed: dict[str, Any]
    space: SearchSpace
    objectives: list[Objective]
    sampler: SamplerSpec
    sampler_options: dict[str, Any]
    scheduler: SchedulerSpec
    trials: int
    concurrency: int
    resources: ResourceSpec
    max_failures: int
    retrain: RetrainStage
    retrain_overrides: dict[str, Any]
    max_warmup: int = 0

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def digest(self) -> str:
        """Identity of what the study computes (its file name and --set source aside)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "source"}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def base_config(self) -> ExperimentConfig:
        return config_from_dict(self.fixed, f"{self.source}: fixed")

    def trial_config(
        self, sampled: dict[str, Any], device: str | None = None, threads: int | None = None
    ) -> ExperimentConfig:
        """The resolved settings of one search trial: fixed + sampled (+ where the trial runs)."""
        data = _placed(resolved_settings(self.fixed, sampled), device, threads)
        return config_from_dict(data, f"{self.source}: trial with {sampled}")

    def retrain_config(
        self, trial_settings: dict[str, Any], seed: int, device: str | None = None, threads: int | None = None
    ) -> ExperimentConfig:
        """A search trial's resolved settings with the retraining overrides and ``seed``."""
        data = apply_overrides(
            trial_settings, {**self.retrain_overrides, "seed": seed}, source="retrain.overrides"
        )
        return config_from_dict(_placed(data, device, threads), f"{self.source}: retrain.overrides")

    @property
    def grace_period(self) -> int:
        return self.scheduler.grace_period or self.max_warmup + 1


def _placed(data: dict[str, Any], device: str | None, threads: int | None) -> dict[str, Any]:
    """Settings with the device and torch threads of the trial that runs them (when given)."""
    if device is not None:
        data["device"] = device
    if threads is not None:
        data["threads"] = threads
    return data


def list_studies(studies_dir: Path = STUDIES_DIR) -> dict[str, str]:
    """Study name -> its one-line description (unreadable files show their error instead)."""
    out = {}
    for path in sorted(Path(studies_dir).glob("*.yaml")):
        try:
            raw = read_yaml(path)
            desc = raw.get("description", "") if isinstance(raw, dict) else ""
        except ConfigError as e:
            desc = f"(unreadable: {e})"
        out[path.stem] = str(desc).strip().splitlines()[0] if desc else ""
    return out


def find_study(name_or_path: str, studies_dir: Path = STUDIES_DIR) -> Path:
    """A study name from ``studies_dir`` or a path to a YAML file; unknown names list the valid ones."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    candidate = Path(studies_dir) / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate.resolve()
    names = list(list_studies(studies_dir))
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"unknown study {name_or_path!r}{hint}; valid studies in {studies_dir}: "
        f"{', '.join(names) or '(none)'}; or give the path of a study YAML file"
    )


def apply_study_overrides(raw: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    """``--set`` for a study: ``trials=2``, ``fixed.search.layers=3``, ``retrain.seeds=[0]``,
    ``space.search.sampling_k={choice: [2]}`` (a space key is the whole dotted setting name)."""
    for dotted, value in parse_overrides(items).items():
        if dotted.startswith("space.") and len(dotted) > 6:
            space = raw.get("space") or {}
            if not isinstance(space, dict):
                raise ConfigError("is not a mapping", "--set", "space")
            raw = {**raw, "space": {**space, dotted[6:]: value}}
        elif dotted.startswith("retrain.overrides.") and len(dotted) > 18:
            retrain = dict(raw.get("retrain") or {})
            retrain["overrides"] = {**(retrain.get("overrides") or {}), dotted[18:]: value}
            raw = {**raw, "retrain": retrain}
        else:
            raw = apply_overrides(raw, {dotted: value}, source="--set")
    return raw


def load_study(
    name_or_path: str,
    overrides: list[str] | None = None,
    *,
    data_root: str | Path | None = None,
    studies_dir: Path = STUDIES_DIR,
) -> StudySpec:
    """Read, override and check a study (see the module docstring). Raises :class:`ConfigError`."""
    path = find_study(name_or_path, studies_dir)
    source = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping with keys {', '.join(STUDY_KEYS)}", source)
    if overrides:
        raw = apply_study_overrides(raw, overrides)
        source = f"{source} (with --set)"
    unknown = [k for k in raw if k not in STUDY_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), STUDY_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown key{hint}; valid keys here: {', '.join(STUDY_KEYS)}", source, str(unknown[0])
        )
    body = dict(raw)
    fixed = body.pop("fixed", None) or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"expected a mapping of ExperimentConfig sections, got {fixed!r}", source, "fixed")
    # Trials run in their own working directories: the data root they get is always absolute
    # (--data-root, else the study's data.root, else ./data; relative paths from the working directory).
    section = fixed.get("data") if isinstance(fixed.get("data"), dict) else {}
    root = data_root or section.get("root") or "data"
    fixed = apply_overrides(fixed, {"data.root": str(Path(root).expanduser().resolve())}, source=source)
    space_raw = body.pop("space", None)
    sampler_raw = dict(body.get("sampler") or {})
    sampler_options = sampler_raw.pop("options", None) or {}
    if not isinstance(sampler_options, dict):
        raise ConfigError(f"expected a mapping, got {sampler_options!r}", source, "sampler.options")
    body["sampler"] = sampler_raw
    retrain_raw = dict(body.get("retrain") or {})
    retrain_overrides = retrain_raw.pop("overrides", None) or {}
    if not isinstance(retrain_overrides, dict):
        raise ConfigError(
            f"expected a mapping of dotted settings, got {retrain_overrides!r}", source, "retrain.overrides"
        )
    body["retrain"] = retrain_raw
    parsed: _Body = _build(_Body, body, source)

    base = _with_prefix(lambda: config_from_dict(fixed, source), "fixed.")
    valid_settings = list(base.flat())
    space = parse_space(space_raw, source, valid_settings)
    for key in retrain_overrides:
        if key not in valid_settings:
            close = difflib.get_close_matches(str(key), valid_settings, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"not a setting{hint}; overrides are dotted settings such as retrain.epochs",
                source,
                f"retrain.overrides.{key}",
            )
    _check_sampler_options(parsed.sampler, sampler_options, source)

    spec = StudySpec(
        name=path.stem,
        source=source,
        description=parsed.description,
        fixed=fixed,
        space=space,
        objectives=parsed.objectives,
        sampler=parsed.sampler,
        sampler_options=sampler_options,
        scheduler=parsed.scheduler,
        trials=parsed.trials,
        concurrency=parsed.concurrency,
        resources=parsed.resources,
        max_failures=parsed.max_failures,
        retrain=parsed.retrain,
        retrain_overrides=retrain_overrides,
    )
    spec.max_warmup = _check_space_against_fixed(spec)
    if spec.resources.gpu == 0 and base.device.startswith("cuda"):
        raise ConfigError(
            f"device {base.device!r} needs a GPU but resources.gpu is 0; use device: auto",
            source,
            "fixed.device",
        )
    return spec


def _with_prefix(fn, prefix: str):
    """Run ``fn``; a :class:`ConfigError` it raises gets ``prefix`` in front of its key."""
    try:
        return fn()
    except ConfigError as e:
        raise ConfigError(e.problem, e.source, f"{prefix}{e.key}" if e.key else prefix.rstrip(".")) from None


def _check_space_against_fixed(spec: StudySpec) -> int:
    """Resolve every probe point of the space, as search and as retraining settings; returns the
    longest warm-up any trial can have.

    A failure names the sampled values that break it, e.g. ``space: with {'search.sampling_k': 3}:
    search.init_channels: 8 is not divisible by sampling_k=3; choose a multiple of 3``.
    """
    max_warmup = 0
    retrain = {**spec.retrain_overrides, "seed": spec.retrain.seeds[0]}
    for point in spec.space.probe_points():
        data = resolved_settings(spec.fixed, point)
        try:
            cfg = config_from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"with {point}: {e.key}: {e.problem}", spec.source, "space") from None
        try:
            config_from_dict(apply_overrides(data, retrain))
        except ConfigError as e:
            what = f"with {point}: " if point else ""
            raise ConfigError(f"{what}{e.key}: {e.problem}", spec.source, "retrain.overrides") from None
        max_warmup = max(max_warmup, cfg.reduction.warmup_epochs)
    if (
        spec.scheduler.name == "asha"
        and spec.scheduler.grace_period is not None
        and spec.scheduler.grace_period <= max_warmup
    ):
        raise ConfigError(
            f"{spec.scheduler.grace_period} epochs would stop trials during the warm-up (up to {max_warmup} "
            f"epochs with alpha frozen, where accuracy says little); use more than {max_warmup} or leave it "
            f"null",
            spec.source,
            "scheduler.grace_period",
        )
    return max_warmup


def _check_sampler_options(sampler: SamplerSpec, options: dict[str, Any], source: str) -> None:
    cls = sampler_class(sampler.name)
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "seed")]
    bad = [k for k in options if k not in params]
    if bad:
        raise ConfigError(
            f"{cls.__name__} has no option(s) {bad}; valid: {', '.join(params)}", source, "sampler.options"
        )


def sampler_class(name: str) -> type:
    import optuna

    return {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "gp": optuna.samplers.GPSampler,
        "qmc": optuna.samplers.QMCSampler,
    }[name]


def make_sampler(spec: StudySpec) -> Any:
    """The study's Optuna sampler, seeded."""
    return sampler_class(spec.sampler.name)(seed=spec.sampler.seed, **spec.sampler_options)
