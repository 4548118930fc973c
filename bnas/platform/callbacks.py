"""The Tune callback that records trials in MLflow (driver side; the single writer).

Tune calls it in the driver when a trial starts or is restored, reports a result, completes or fails;
it hands each event to :class:`~bnas.platform.tracking.StudyTracker`. It is pickled into Tune's
``tuner.pkl`` (a restore brings it back), so it keeps only picklable settings and reopens the
tracker lazily.

What a trial's results carry is :mod:`bnas.platform.trainables`' contract: ``epoch`` and the epoch
metrics while it runs; ``final: True``, the final figures and ``genotype_digest`` at the end, with the
artifacts in the last checkpoint.

It is also the study's console: Ray's, Tune's and the trials' own output are off by default
(``run.py --ray-logs`` turns them on), and this callback prints one line per trial epoch
(``progress="epoch"``) or one per finished trial (``"trial"``, ``run.py --quiet``), in the driver, so
lines never interleave and a warning a trial would repeat is not printed per trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from bnas.platform.cluster import TrialPlan
from bnas.platform.study import StudySpec
from bnas.platform.tracking import StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import RETRAIN, SEARCH, RunKind, State


def retrain_key_digest(spec: StudySpec, settings: dict[str, Any], seed: int) -> str:
    """Identity of a retraining (genotype aside): :meth:`~bnas.config.ExperimentConfig.result_digest`."""
    return spec.retrain_config(settings, seed).result_digest()


class TrackingCallback(tune.Callback):
    """Feeds what the trials of one stage report to the :class:`StudyTracker`, and prints progress.

    ``candidates`` (retraining stage): search run id -> ``{"digest", "genotype", "settings", ...}``,
    the genotypes a retraining trial's ``job`` points at.
    """

    #: For a callback unpickled from a tuner.pkl written before ``progress`` existed.
    progress = "epoch"

    def __init__(
        self,
        tracker: TrackerConfig,
        kind: RunKind,
        spec: StudySpec,
        plan: TrialPlan,
        candidates: dict[str, dict[str, Any]] | None = None,
        progress: str = "epoch",
    ) -> None:
        self.tracker_config, self.kind, self.spec, self.plan = tracker, kind, spec, plan
        self.candidates = candidates or {}
        self.progress = progress  # "epoch", "trial" or "none"
        self._tracker: StudyTracker | None = None
        self._labels: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None, "_labels": {}}

    @property
    def tracker(self) -> StudyTracker:
        if self._tracker is None:
            self._tracker = StudyTracker(self.tracker_config)
        return self._tracker

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def _say(self, line: str) -> None:
        print(line, flush=True)

    def _label(self, trial: Any) -> str:
        """``search 355e43de [xnor K=2 ucb]`` / ``retrain 00001 1a2b3c4d5e6f s0``: short, the same in
        every line of the trial; the id is the trial id (a search run is ``search-<trial id>`` in MLflow),
        for a retraining its counter."""
        labels = self.__dict__.setdefault("_labels", {})  # absent in a tuner.pkl of an older version
        if trial.trial_id not in labels:
            counter = str(trial.trial_id).rsplit("_", 1)[-1]
            if self.kind == SEARCH:
                c = trial.config
                short = [str(c[k]) for k in ("binarization.method", "reduction.strategy") if k in c]
                if "search.sampling_k" in c:
                    short.insert(1, f"K={c['search.sampling_k']}")
                label = f"search {counter}" + (f" [{' '.join(short)}]" if short else "")
            else:
                job = trial.config["job"]
                digest = self.candidates.get(job["candidate"], {}).get("digest", "?")
                label = f"retrain {counter} {digest} s{job['seed']}"
            labels[trial.trial_id] = label
        return labels[trial.trial_id]

    def _epoch_line(self, trial: Any, r: dict) -> str:
        def fig(key: str, fmt: str = ".3f") -> str:
            v = r.get(key)
            return f"{key} {v:{fmt}}" if isinstance(v, (int, float)) and v == v else ""

        if self.kind == SEARCH:
            where = f"epoch {int(r['epoch'])}/{r.get('total_epochs', '?')} stage {r.get('stage', '?')}"
            ops = r.get("ops_per_edge")
            figs = [fig("val_acc"), fig("train_loss")]
            figs.append(f"{ops:g} ops/edge" if isinstance(ops, (int, float)) else "")
        else:
            where = f"epoch {int(r['epoch'])}/{r.get('epochs', '?')}"
            figs = [fig("test_acc"), fig("train_loss")]
        t = r.get("elapsed_s")
        figs.append(f"{t:.0f} s" if isinstance(t, (int, float)) else "")
        return f"{self._label(trial)} {where}: " + ", ".join(f for f in figs if f)

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
        if self.progress == "epoch":
            self._say(self._epoch_line(trial, result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        done = bool(result.get("final"))  # otherwise the scheduler stopped it early
        finish = dict(
            state=State.COMPLETE if done else State.PRUNED,
            result=result if done else None,
            genotype_digest=result.get("genotype_digest") if done else None,
            last_epoch=int(result.get("epoch", 0)),
        )
        if self.progress != "none":
            self._say(self._end_line(trial, result, done))
        if trial.checkpoint is None:
            self.tracker.finish(self.kind, trial.trial_id, **finish)
            return
        with trial.checkpoint.as_directory() as folder:
            self.tracker.finish(
                self.kind, trial.trial_id, artifact_dir=folder, register_model=self.kind == RETRAIN, **finish
            )

    def _end_line(self, trial: Any, r: dict, done: bool) -> str:
        if not done:
            epoch = r.get("epoch", "?")
            return f"{self._label(trial)}: stopped early by the scheduler after epoch {epoch} (pruned)"
        if self.kind == SEARCH:
            acc, digest = r.get("derived_val_acc", float("nan")), r.get("genotype_digest", "?")
            return f"{self._label(trial)}: complete, derived_val_acc {acc:.3f}, genotype {digest}"
        return (
            f"{self._label(trial)}: complete, test_acc {r.get('test_acc', float('nan')):.3f} "
            f"({r.get('wall_time_s', 0):.0f} s)"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The driver-side error file is written before this call; the copy in storage may lag behind.
        local = Path(trial.error_file) if trial.error_file else None
        text = (local.read_text() if local and local.is_file() else trial.get_error()) or "no error text"
        lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else str(text)
        if self.progress != "none":
            self._say(f"{self._label(trial)}: FAILED: {message[:300]} (full error: {trial.error_file})")
        self.tracker.finish(self.kind, trial.trial_id, state=State.FAILED, error=message[:1000])
