"""The Tune callback that records trials in MLflow (driver side; the single writer).

Tune calls it in the driver when a trial starts or is restored, reports a result, completes or fails;
it hands each event to :class:`~bnas.platform.tracking.StudyTracker`. It is pickled into Tune's
``tuner.pkl`` (a restore brings it back), so it keeps only picklable settings and reopens the
tracker lazily.

What a trial's results carry is :mod:`bnas.platform.trainables`' contract: ``epoch`` and the epoch
metrics while it runs; ``final: True``, the final figures and ``genotype_digest`` at the end, with the
artifacts in the last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from bnas.platform.cluster import TrialPlan
from bnas.platform.study import StudySpec
from bnas.platform.tracking import StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import SEARCH, RunKind, State


def retrain_key_digest(spec: StudySpec, settings: dict[str, Any], seed: int) -> str:
    """Identity of a retraining (genotype aside): its resolved settings, where it runs left out."""
    return spec.retrain_config(settings, seed, device="auto", threads=1).digest()


class TrackingCallback(tune.Callback):
    """Feeds what the trials of one stage report to the :class:`StudyTracker`.

    ``candidates`` (retraining stage): search run id -> ``{"digest", "genotype", "settings", ...}``,
    the genotypes a retraining trial's ``job`` points at.
    """

    def __init__(
        self,
        tracker: TrackerConfig,
        kind: RunKind,
        spec: StudySpec,
        plan: TrialPlan,
        candidates: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.tracker_config, self.kind, self.spec, self.plan = tracker, kind, spec, plan
        self.candidates = candidates or {}
        self._tracker: StudyTracker | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> StudyTracker:
        if self._tracker is None:
            self._tracker = StudyTracker(self.tracker_config)
        return self._tracker

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def _open(self, trial: Any) -> None:
        device, threads = self.plan.device, self.plan.threads
        if self.kind == SEARCH:
            sampled = dict(trial.config)
            cfg = self.spec.trial_config(sampled, device, threads)
            self.tracker.open_search_run(trial.trial_id, cfg.flat(), sampled)
            return
        job = trial.config["job"]
        cand, seed = self.candidates[job["candidate"]], int(job["seed"])
        cfg = self.spec.retrain_config(cand["settings"], seed, device, threads)
        self.tracker.open_retrain_run(
            trial.trial_id,
            cfg.flat(),
            genotype_digest=cand["digest"],
            seed=seed,
            search_run_id=job["candidate"],
            config_digest=retrain_key_digest(self.spec, cand["settings"], seed),
        )

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("final") or "epoch" not in result:
            return
        self.tracker.log_epoch(self.kind, trial.trial_id, result, int(result["epoch"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        done = bool(result.get("final"))  # otherwise the scheduler stopped it early
        finish = dict(
            state=State.COMPLETE if done else State.PRUNED,
            result=result if done else None,
            genotype_digest=result.get("genotype_digest") if done else None,
            last_epoch=int(result.get("epoch", 0)),
        )
        if trial.checkpoint is None:
            self.tracker.finish(self.kind, trial.trial_id, **finish)
            return
        with trial.checkpoint.as_directory() as folder:
            self.tracker.finish(self.kind, trial.trial_id, artifact_dir=folder, **finish)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The driver-side error file is written before this call; the copy in storage may lag behind.
        local = Path(trial.error_file) if trial.error_file else None
        text = (local.read_text() if local and local.is_file() else trial.get_error()) or "no error text"
        lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else str(text)
        self.tracker.finish(self.kind, trial.trial_id, state=State.FAILED, error=message[:1000])
