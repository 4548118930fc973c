"""Optuna through Ray Tune: the searcher that proposes each search trial's settings, and its storage.

Optuna samples the study's define-by-run space (:mod:`bnas.platform.space`) and keeps every trial in
a SQLite study (``<study folder>/optuna.db``, study name = the study's name), so a rerun warm-starts
from all earlier trials. Trials stopped early by the scheduler reach Optuna as PRUNED, failed ones as
FAIL, never as COMPLETE with a partial value (which is what Ray's own OptunaSearch does).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from bnas.platform.study import StudySpec, make_sampler
from bnas.platform.tracking_schema import OPTUNA_DB, is_number

#: Ray's OptunaSearch times the define-by-run space function and warns (a UserWarning) past 1 s,
#: advising to move computation into the trainable. Ours only calls ``trial.suggest_*``: the time
#: is Optuna's sampler and its SQLite writes on a busy machine, nothing the user can move.
SLOW_SPACE_WARNING = r"Define-by-run function passed in the `space` argument took"


class StudySearcher(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how a trial ended.

    Ray's OptunaSearch tells every trial that ends with a result COMPLETE, with whatever value the
    last result held, so a trial stopped early by ASHA would count as a finished one. Here a trial is
    COMPLETE only when its last result says ``final``; stopped early it is PRUNED (with its per-epoch
    ``val_acc`` as intermediate values), failed it is FAIL. After a restore, Optuna trials that the
    crash left RUNNING and that no restored Tune trial continues are marked FAIL, so the study never
    keeps phantom running trials. (Uses OptunaSearch's ``_ot_trials``/``_ot_study``/``_completed_trials``
    as in ray 2.60.) ``quiet``: no :data:`SLOW_SPACE_WARNING` (the study's console without
    ``--ray-logs``).
    """

    #: For a searcher restored from a checkpoint written before ``quiet`` existed.
    _quiet = False

    def __init__(self, *args: Any, intermediate: str = "val_acc", quiet: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._intermediate = intermediate
        self._quiet = quiet

    def suggest(self, trial_id: str) -> dict | None:
        if not self._quiet:
            return super().suggest(trial_id)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=SLOW_SPACE_WARNING, category=UserWarning)
            return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return  # Optuna keeps no intermediate values for multi-objective studies
        value = result.get(self._intermediate)
        if trial_id in self._ot_trials and is_number(value) and not result.get("final"):
            self._ot_trials[trial_id].report(float(value), int(result.get("epoch", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = None
        if error:
            state = TrialState.FAIL
        elif result and result.get("final") and all(is_number(result.get(m)) for m in metrics):
            state = TrialState.COMPLETE
            values = [float(result[m]) for m in metrics]
            values = values if len(values) > 1 else values[0]
        elif result and result.get("final"):
            state = TrialState.FAIL  # finished without a usable objective (NaN accuracy)
        else:
            state = TrialState.PRUNED  # stopped by the scheduler; its last epoch is the value
            self.on_trial_result(trial_id, result or {})
        self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        live = {t.number for tid, t in self._ot_trials.items() if tid not in self._completed_trials}
        fail_stale_trials(self._ot_study, keep=live)


def fail_stale_trials(study: Any, keep: set[int] = frozenset()) -> int:
    """Mark RUNNING Optuna trials (left by a killed driver) FAIL, except the numbers in ``keep``."""
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in stale:
        if number not in keep:
            study.tell(number, state=TrialState.FAIL)
    return len([n for n in stale if n not in keep])


def optuna_storage(out_dir: Path) -> Any:
    """The study folder's Optuna storage (an object: Optuna 5 through Ray takes no URL string)."""
    return optuna.storages.RDBStorage(f"sqlite:///{(out_dir / OPTUNA_DB).resolve()}")


def clean_optuna_study(storage: Any, name: str, log: Callable[[str], None]) -> None:
    """Before a new (not resumed) search: fail trials an earlier crash left RUNNING; say if warm."""
    if name not in optuna.get_all_study_names(storage):
        return
    study = optuna.load_study(study_name=name, storage=storage)
    stale = fail_stale_trials(study)
    if stale:
        log(f"optuna: marked {stale} trial(s) left RUNNING by an earlier crash as FAIL")
    log(f"optuna: study {name!r} already holds {len(study.trials)} trial(s): warm start")


def study_searcher(spec: StudySpec, storage: Any, quiet: bool = False) -> StudySearcher:
    """The searcher of a study's search stage: its space, objective(s), seeded sampler and storage;
    intermediate values are the scheduler's per-epoch metric; ``quiet``: see :class:`StudySearcher`."""
    multi = spec.multi_objective
    return StudySearcher(
        space=spec.space.sample,
        metric=[o.metric for o in spec.objectives] if multi else spec.objectives[0].metric,
        mode=[o.mode for o in spec.objectives] if multi else spec.objectives[0].mode,
        sampler=make_sampler(spec),
        study_name=spec.name,
        storage=storage,
        intermediate=spec.scheduler.metric,
        quiet=quiet,
    )
