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

:func:`load_study` checks all of it before anything starts: unknown keys, wrong types and values out
of range (the file's keys are declared like the experiment settings, with :mod:`bnas.settings`; every
such problem of the file is reported together, each naming the file and the key), and every value of
the space against the fixed settings (a sampled K that does not divide the channels, a warm-up longer
than a stage, ...), with and without the retraining overrides.
What needs the cluster (is there a GPU?) or the disk (is the dataset there?) is checked by
:mod:`bnas.platform.orchestrate` right after connecting, still before any trial or run exists.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnas import settings
from bnas.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    parse_overrides,
    phase_problems,
    read_yaml,
)
from bnas.errors import did_you_mean
from bnas.platform.space import SearchSpace, parse_space, resolved_settings
from bnas.platform.study_file import (
    STUDY_KEYS,
    Objective,
    ResourceSpec,
    RetrainStage,
    SamplerSpec,
    SchedulerSpec,
    StudyFile,
    sampler_class,
)

#: Where ``run.py`` looks for studies by name.
STUDIES_DIR = Path(__file__).resolve().parents[2] / "tune_configs"

#: Settings :func:`bnas.config.phase_problems` reads (a sampled one may be the cause of a problem).
PHASE_INPUTS = frozenset(
    {"data.train_subset", "data.val_fraction", "search.batch_size", "retrain.batch_size"}
)


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
    scheduler: SchedulerSpec
    trials: int
    concurrency: int
    resources: ResourceSpec
    max_failures: int
    retrain: RetrainStage
    max_warmup: int = 0

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def sampler_options(self) -> dict[str, Any]:
        return self.sampler.options or {}

    @property
    def retrain_overrides(self) -> dict[str, Any]:
        return self.retrain.overrides or {}

    def digest(self) -> str:
        """Identity of what the study computes (its file name and --set source aside)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "source"}
        # Sampler options and retraining overrides sit at the top level, as in the digests of
        # earlier versions, so that --resume still recognises studies started with them.
        data["sampler_options"] = data["sampler"].pop("options") or {}
        data["retrain_overrides"] = data["retrain"].pop("overrides") or {}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @functools.cached_property
    def base_config(self) -> ExperimentConfig:
        """``fixed`` as a validated configuration, built once (a changed study is a new StudySpec:
        ``dataclasses.replace``)."""
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
        # Every report to Tune carries a checkpoint: a retried trial resumes from its last epoch.
        every = {"retrain.checkpoint_every": 1}
        data = apply_overrides(
            trial_settings, {**every, **self.retrain_overrides, "seed": seed}, source="retrain.overrides"
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
    hint = did_you_mean(name_or_path, names)
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
    """Read, override and check a study (see the module docstring). Raises :class:`ConfigError`
    listing every problem of the file; checks that need a valid file come after (the space against
    the fixed settings, the scheduler against the warm-up, the device against the resources)."""
    path = find_study(name_or_path, studies_dir)
    source = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping with keys {', '.join(STUDY_KEYS)}", source)
    if overrides:
        raw = apply_study_overrides(raw, overrides)
        source = f"{source} (with --set)"
    body, problems = settings.collect(StudyFile, raw)
    fixed = _rooted(body.fixed if isinstance(body.fixed, dict) else {}, data_root)
    _, fixed_problems = settings.collect(ExperimentConfig, fixed)
    problems += [(f"fixed.{k}" if k else "fixed", m) for k, m in fixed_problems]
    valid_settings = [row[0] for row in settings.describe(ExperimentConfig)]
    space = SearchSpace()
    try:
        space = parse_space(body.space, source, valid_settings)
    except ConfigError as e:
        problems += e.problems
    if not space.params and not any(k and k.startswith("space") for k, _ in problems):
        # Optuna would have nothing to choose: every trial would run the same settings.
        shown = "null" if body.space is None else repr(body.space)
        problems.append(
            (
                "space",
                f"samples nothing ({shown}); name at least one "
                "setting with its domain, e.g. "
                "search.sampling_k: {choice: [2, 4]} (for a single run use python -m bnas search)",
            )
        )
    given = settings.flatten(body.fixed) if isinstance(body.fixed, dict) else {}
    for key in sorted(set(given) & set(space.names)):
        problems.append(
            (
                f"fixed.{key}",
                f"is also sampled by space.{key}, whose value every trial would use instead; set it in "
                "one place",
            )
        )
    retrain_overrides = body.retrain.overrides if isinstance(body.retrain.overrides, dict) else {}
    for key in retrain_overrides:
        if key in ("device", "threads"):
            problems.append(
                (
                    f"retrain.overrides.{key}",
                    "is where a trial runs, which the cluster decides (resources.gpu, resources.cpu); "
                    "a retraining trial would ignore it",
                )
            )
        elif key not in valid_settings:
            hint = did_you_mean(key, valid_settings)
            problems.append(
                (
                    f"retrain.overrides.{key}",
                    f"not a setting{hint}; overrides are dotted settings such as retrain.epochs",
                )
            )
    if problems:
        raise ConfigError.collect(problems, source)

    fixed = _validated_every_epoch(fixed, body.scheduler.name, space)
    spec = StudySpec(
        name=path.stem,
        source=source,
        description=body.description,
        fixed=fixed,
        space=space,
        objectives=body.objectives,
        sampler=body.sampler,
        scheduler=body.scheduler,
        trials=body.trials,
        concurrency=body.concurrency,
        resources=body.resources,
        max_failures=body.max_failures,
        retrain=body.retrain,
    )
    spec.max_warmup = _check_space_against_fixed(spec)
    device = spec.base_config.device
    if spec.resources.gpu == 0 and device.startswith("cuda"):
        raise ConfigError(
            f"device {device!r} needs a GPU but resources.gpu is 0; use device: auto", source, "fixed.device"
        )
    return spec


#: What a study's trials run every epoch unless the study sets it: a checkpoint (every report to Tune
#: carries one, so a restarted trial resumes from its last reported epoch) and, under ASHA, which
#: judges trials by their per-epoch ``val_acc``, a validation. The core's defaults do both once per
#: stage; no genotype depends on either.
EVERY_EPOCH = {
    "checkpoint_every": lambda scheduler: True,
    "validate_every": lambda scheduler: scheduler == "asha",
}


def _validated_every_epoch(fixed: dict[str, Any], scheduler: str, space: Any) -> dict[str, Any]:
    """``fixed`` with ``search.checkpoint_every`` (and, under ASHA, ``search.validate_every``) set to 1
    where the study sets it neither in ``fixed`` nor in its space (:data:`EVERY_EPOCH`)."""
    search = fixed.get("search") if isinstance(fixed.get("search"), dict) else {}
    over = {
        f"search.{k}": 1
        for k, applies in EVERY_EPOCH.items()
        if applies(scheduler) and k not in search and f"search.{k}" not in space.names
    }
    return apply_overrides(fixed, over, source="study defaults") if over else fixed


def _rooted(fixed: dict[str, Any], data_root: str | Path | None) -> dict[str, Any]:
    """``fixed`` with an absolute ``data.root``: trials run in their own working directories.

    The root is --data-root, else the study's data.root, else ./data (relative paths from the
    working directory). A ``data`` entry that is not a mapping is left for the checks to report.
    """
    section = fixed.get("data", {})
    if not isinstance(section, dict):
        return fixed
    root = data_root or section.get("root") or "data"
    return apply_overrides(fixed, {"data.root": str(Path(root).expanduser().resolve())})


def _check_space_against_fixed(spec: StudySpec) -> int:
    """Resolve every probe point of the space, as search and as retraining settings; returns the
    longest warm-up any trial can have.

    A failure names the sampled values that break it, e.g. ``space: with {'search.sampling_k': 3}:
    search.init_channels: 8 is not divisible by sampling_k=3; choose a multiple of 3``; the first
    point that fails is reported (with all its problems).
    """
    max_warmup = 0
    retrain = {**spec.retrain_overrides, "seed": spec.retrain.seeds[0]}
    for point in spec.space.probe_points():
        data = resolved_settings(spec.fixed, point)
        cfg, problems = settings.collect(ExperimentConfig, data)
        if problems:
            raise ConfigError.collect(
                [("space", f"with {point}: {k}: {m}") for k, m in problems], spec.source
            )
        problems = phase_problems(cfg, "search")  # each setting is valid: is the search usable?
        if problems and not set(point) & PHASE_INPUTS:  # the fixed settings alone are the cause
            raise ConfigError.collect([(f"fixed.{k}", m) for k, m in problems], spec.source)
        if problems:
            raise ConfigError.collect(
                [("space", f"with {point}: {k}: {m}") for k, m in problems], spec.source
            )
        retrain_cfg, problems = settings.collect(ExperimentConfig, apply_overrides(data, retrain))
        if not problems and spec.retrain.top_k > 0:
            problems = phase_problems(retrain_cfg, "retrain")
        if problems:
            what = f"with {point}: " if point else ""
            raise ConfigError.collect(
                [("retrain.overrides", f"{what}{k}: {m}") for k, m in problems], spec.source
            )
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


def make_sampler(spec: StudySpec) -> Any:
    """The study's Optuna sampler, seeded."""
    return sampler_class(spec.sampler.name)(seed=spec.sampler.seed, **spec.sampler_options)
