"""The study file as a typed model: its sections, declared like the experiment settings.

A study file (``tune_configs/*.yaml``) is a :class:`StudyFile`: objectives, the Optuna sampler, the
trial scheduler, per-trial resources and the retraining stage, each a :class:`~bnas.settings.Section`
with its defaults, bounds and rules, so a file is checked as a whole and every problem names its key.
``fixed`` and ``space`` are checked against the experiment settings by :mod:`bnas.platform.study`,
which loads a file into a :class:`~bnas.platform.study.StudySpec`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

from bnas.config import OneOf, Section, rule, setting
from bnas.platform.tracking import SEARCH_FINAL_METRICS

#: Figures every super-network epoch reports that a scheduler may use.
EPOCH_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


@dataclass
class Objective(Section):
    """A figure every search trial reports at its end, maximised or minimised."""

    metric: str = setting(
        "derived_val_acc",
        "[D]",
        "final search metric to optimise",
        choices=OneOf(SEARCH_FINAL_METRICS, "{value!r} is not reported by a search trial"),
    )
    mode: Literal["max", "min"] = setting("max", "[D]", "maximise or minimise it")


@dataclass
class SamplerSpec(Section):
    """An Optuna sampler by name; ``options`` are passed to its constructor (checked by name)."""

    name: Literal["tpe", "random", "nsga2", "gp", "qmc"] = setting("tpe", "[D]", "Optuna sampler")
    seed: int | None = setting(0, "[D]", "sampler seed; null = unseeded")
    options: dict[str, Any] | None = setting({}, "[D]", "keyword arguments of the sampler's constructor")

    @rule("options", "name")
    def _sampler_takes_the_options(self) -> str | None:
        cls = sampler_class(self.name)
        signature = inspect.signature(cls.__init__).parameters
        params = [p for p in signature if p not in ("self", "seed")]
        bad = [k for k in self.options or {} if k not in params]
        if bad:
            return f"{cls.__name__} has no option(s) {bad}; valid: {', '.join(params)}"
        # Optuna reads most options only when it samples (after Ray has started): check each value
        # against the type of its default where the default has a plain type.
        for key, value in (self.options or {}).items():
            default = signature[key].default
            kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(type(default))
            if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
                return (
                    f"{cls.__name__}'s option {key} expects {type(default).__name__} (default "
                    f"{default!r}), got {value!r}"
                )
        return None


@dataclass
class SchedulerSpec(Section):
    """``asha`` stops weak trials early on a per-epoch metric; ``fifo`` runs every trial to the end."""

    name: Literal["asha", "fifo"] = setting("asha", "[D]", "trial scheduler")
    metric: str = setting(
        "val_acc",
        "[D]",
        "per-epoch metric ASHA compares",
        choices=OneOf(EPOCH_METRICS, "{value!r} is not reported every epoch"),
    )
    mode: Literal["max", "min"] = setting("max", "[D]", "maximise or minimise the metric")
    grace_period: int | None = setting(
        None, "[D]", "epochs before a trial may stop; null = one past the longest warm-up", ge=1
    )
    reduction_factor: int = setting(2, "[D]", "ASHA keeps 1/reduction_factor of the trials per rung", ge=2)


@dataclass
class ResourceSpec(Section):
    """Per trial. ``gpu: auto`` takes one GPU when the cluster has any, else none."""

    cpu: float = setting(1.0, "[D]", "CPUs per trial", gt=0)
    gpu: float | Literal["auto"] = setting("auto", "[D]", "GPUs per trial, or auto", ge=0)


@dataclass
class RetrainStage(Section):
    """Retrain the ``top_k`` distinct genotypes (by ``derived_val_acc``) once per seed."""

    top_k: int = setting(1, "[D]", "genotypes to retrain; 0 skips retraining", ge=0)
    seeds: list[int] = setting([0], "[D]", "a retraining per seed", min_len=1, unique=True, noun="seed")
    overrides: dict[str, Any] | None = setting(
        {}, "[D]", "dotted settings changed for retraining, e.g. retrain.epochs"
    )


@dataclass
class StudyFile(Section):
    """The keys of a study file; ``fixed`` and ``space`` are checked against the experiment settings."""

    description: str = setting("", "[D]", "one line shown by python run.py --list")
    fixed: dict[str, Any] | None = setting({}, "[D]", "ExperimentConfig sections every trial starts from")
    space: dict[str, Any] | None = setting(None, "[D]", "sampled settings: dotted setting -> domain")
    objectives: list[Objective] = setting(
        [Objective()], "[D]", "what the search optimises", min_len=1, noun="objective"
    )
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    trials: int = setting(4, "[D]", "search trials", ge=1)
    concurrency: int = setting(1, "[D]", "trials at a time", ge=1)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    max_failures: int = setting(1, "[D]", "restarts of a failed trial", ge=0)
    retrain: RetrainStage = field(default_factory=RetrainStage)

    @rule("objectives")
    def _metrics_once(self) -> str | None:
        names = [o.metric for o in self.objectives]
        return f"names a metric twice: {names}" if len(set(names)) != len(names) else None

    @rule("retrain.top_k", "trials")
    def _top_k_within_the_trials(self) -> str | None:
        # Each search trial derives one genotype: more than `trials` distinct ones cannot exist.
        if self.retrain.top_k > self.trials:
            return (
                f"{self.retrain.top_k} genotypes to retrain but the study runs {self.trials} search "
                f"trial(s), each deriving one; use at most {self.trials} (0 skips retraining)"
            )
        return None

    @rule("sampler.name", "objectives")
    def _sampler_handles_the_objectives(self) -> str | None:
        if len(self.objectives) > 1 and self.sampler.name in ("gp",):
            return "gp is single-objective here; use tpe, nsga2 or random"
        return None


#: Top-level keys of a study file.
STUDY_KEYS = [f.name for f in dataclasses.fields(StudyFile)]


def sampler_class(name: str) -> type:
    import optuna

    return {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "gp": optuna.samplers.GPSampler,
        "qmc": optuna.samplers.QMCSampler,
    }[name]
