"""The two stages of a study, each one Ray Tune experiment (driver side).

Search stage
    one Tune trial per :func:`bnas.search.run_search` (:func:`bnas.platform.trainables.search_trial`);
    Optuna proposes each trial's settings (:mod:`bnas.platform.searcher`). ASHA stops weak trials on
    the super-network's per-epoch ``val_acc`` after a grace period longer than the warm-up. The
    objective is ``derived_val_acc``, reported once at the end: the accuracy of the derived discrete
    cells with the shared weights, the one figure that compares trials whatever their pruning strategy
    (the super-network's own ``val_acc`` depends on how many operations a strategy has left).
Retraining stage
    the ``top_k`` distinct genotypes (by digest, ranked by ``derived_val_acc``, read back from the
    MLflow search runs, so it also runs alone on a finished study) x the study's seeds, as a Tune
    grid (:func:`bnas.platform.trainables.retrain_trial`); (genotype, seed, settings) already
    retrained are skipped.

Both checkpoint every epoch; ``FailureConfig(max_failures)`` retries resume from the latest
checkpoint, and ``resume`` continues an interrupted stage with ``Tuner.restore``
(``<study folder>/study_state.json`` names each stage's Tune experiments; the last one is resumable).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from bnas.platform.callbacks import TrackingCallback, retrain_key_digest
from bnas.platform.cluster import TrialPlan
from bnas.platform.searcher import clean_optuna_study, optuna_storage, study_searcher
from bnas.platform.study import StudySpec
from bnas.platform.tracking import StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import (
    RETRAIN,
    SEARCH,
    Artifact,
    Metric,
    RunKind,
    State,
    TrackingError,
    is_number,
    read_folder_json,
    run_record,
)

Log = Callable[[str], None]
STATE_FILE = "study_state.json"
CANDIDATES = "bnas_candidates.json"
#: ASHA needs a horizon; trials end by themselves long before it.
ASHA_MAX_T = 100_000


class StudyInterrupted(RuntimeError):
    """A stage stopped before its trials finished (Ctrl-C): ``--resume`` continues it."""


@dataclass(frozen=True)
class StageContext:
    """What both stages share: the study, its folder, per-trial resources and the tracker's settings."""

    spec: StudySpec
    out_dir: Path
    plan: TrialPlan
    tracker: TrackerConfig
    resume: bool = False
    verbose: bool = True
    #: Ray's and Tune's own output (Tune's status tables, every trial's console); off: the driver's
    #: TrackingCallback prints one line per trial epoch (``verbose``) or per finished trial.
    ray_logs: bool = False


class StudyState:
    """``<out>/study_state.json``: the Tune experiments each stage ran (the last one is resumable) and
    the digest of the study settings each was started with."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / STATE_FILE
        shape = {"search": list, "retrain": list, "study_digest": dict}
        self.data = read_folder_json(self.path, shape) or {"search": [], "retrain": []}
        names = [n for stage in ("search", "retrain") for n in self.data.get(stage, [])]
        if not all(isinstance(n, str) for n in names):
            raise TrackingError(
                f"{STATE_FILE} is damaged (an experiment name is not text); restore it, or run the study in "
                "a new folder (--out) or under another --name",
                str(out_dir),
            )

    def last(self, stage: str) -> str | None:
        names = self.data.get(stage) or []
        return names[-1] if names else None

    def digest_of(self, name: str) -> str | None:
        return self.data.get("study_digest", {}).get(name)

    def new(self, stage: str, study_digest: str) -> str:
        names = self.data.setdefault(stage, [])
        names.append(f"{stage}-{len(names) + 1}")
        self.data.setdefault("study_digest", {})[names[-1]] = study_digest
        self.path.write_text(json.dumps(self.data, indent=1))
        return names[-1]


def _restorable(ctx: StageContext, stage: str, log: Log) -> Path | None:
    """The stage's last Tune experiment when ``resume`` is asked for and Tune can restore it."""
    name = StudyState(ctx.out_dir).last(stage) if ctx.resume else None
    if name is None:
        return None
    path = ctx.out_dir / "ray" / name
    if tune.Tuner.can_restore(str(path)):
        log(f"resuming {name} from {path}")
        return path
    log(f"nothing to resume at {path}: starting the {stage} stage afresh")
    return None


def _fit(tuner: Any, stage: str) -> Any:
    """``tuner.fit()``, raising :class:`StudyInterrupted` after a Ctrl-C (SIGINT).

    Tune stops gracefully on SIGINT and saves the experiment, but in Ray 2.60 the trials it stops
    count as TERMINATED, so the result grid cannot tell an interrupted stage from a finished one (the
    study went on to its summary and exited 1). SIGINT is caught here instead (Tune's own handler
    off), noted, and handed to Tune as SIGUSR1, which Tune handles exactly like SIGINT; a second
    Ctrl-C acts at once, as with Tune's handler.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        return tuner.fit()
    interrupted = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(_sig: int, _frame: Any) -> None:
        interrupted.set()
        signal.signal(signal.SIGINT, previous)
        os.kill(os.getpid(), signal.SIGUSR1)

    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Until Tune installs its SIGUSR1 handler, one that does nothing (the default ends the process).
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda _sig, _frame: None)
    signal.signal(signal.SIGINT, on_sigint)
    try:
        grid = tuner.fit()
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGUSR1, previous_usr1)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
    if interrupted.is_set():
        raise StudyInterrupted(f"the {stage} stage was interrupted; rerun with --resume to continue it")
    return grid


def _finished(grid: Any, expected: int, stage: str) -> Any:
    """The result grid, unless Tune returned early (Ctrl-C) with trials left to run."""
    if grid.num_terminated + grid.num_errors < expected:
        raise StudyInterrupted(
            f"the {stage} stage was interrupted with {grid.num_terminated + grid.num_errors} "
            f"of {expected} trials finished; rerun with --resume to continue it"
        )
    return grid


def _run_config(
    ctx: StageContext, name: str, kind: RunKind, total: int, candidates: dict | None = None
) -> Any:
    """The stage's Tune run settings; ``total``: the trials it runs (its console's "trial n of N")."""
    progress = "epoch" if ctx.verbose else "trial"
    return tune.RunConfig(
        name=name,
        storage_path=str((ctx.out_dir / "ray").resolve()),
        failure_config=tune.FailureConfig(max_failures=ctx.spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
        callbacks=[
            TrackingCallback(
                ctx.tracker, kind, ctx.spec, ctx.plan, candidates, progress, total, ctx.spec.concurrency
            )
        ],
        verbose=1 if ctx.ray_logs else 0,
    )


def _scheduler(spec: StudySpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sc = spec.scheduler
    if sc.name != "asha":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        metric=sc.metric,
        mode=sc.mode,
        max_t=ASHA_MAX_T,
        grace_period=spec.grace_period,
        reduction_factor=sc.reduction_factor,
    )


def run_search_stage(ctx: StageContext, log: Log) -> Any:
    """``spec.trials`` search trials, ``spec.concurrency`` at a time; returns Tune's result grid."""
    from bnas.platform.trainables import TrialSetup, search_trial

    spec, plan = ctx.spec, ctx.plan
    setup = TrialSetup(spec, plan.device, plan.threads, ctx.ray_logs)
    trainable = tune.with_resources(tune.with_parameters(search_trial, setup=setup), plan.resources)
    path = _restorable(ctx, "search", log)
    if path is not None:
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
        return _finished(_fit(tuner, "search"), spec.trials, "search")

    storage = optuna_storage(ctx.out_dir)
    clean_optuna_study(storage, spec.name, log)
    name = StudyState(ctx.out_dir).new("search", spec.digest())
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=study_searcher(spec, storage, quiet=not ctx.ray_logs),
            scheduler=_scheduler(spec),
            num_samples=spec.trials,
            max_concurrent_trials=spec.concurrency,
            reuse_actors=True,
        ),
        run_config=_run_config(ctx, name, SEARCH, spec.trials),
    )
    return _finished(_fit(tuner, "search"), spec.trials, "search")


def retrain_candidates(spec: StudySpec, tracker: StudyTracker, work: Path) -> dict[str, dict[str, Any]]:
    """The ``top_k`` distinct genotypes of the study's complete search runs, best first (ties: the
    earlier run), keyed by search run id, with their genotype and resolved settings read back from
    the runs' artifacts."""
    runs = [run_record(r) for r in tracker.runs(SEARCH, state=State.COMPLETE)]
    runs = [r for r in runs if is_number(r.get(Metric.DERIVED_VAL_ACC))]
    runs.sort(key=lambda r: (-r[Metric.DERIVED_VAL_ACC], r["start_time"]))
    chosen: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for r in runs:
        digest, run_id = r["genotype_digest"], r["run_id"]
        if not digest or digest in seen:
            continue
        seen.add(digest)
        folder = work / run_id
        genotype = json.loads(tracker.download(run_id, Artifact.GENOTYPE, folder).read_text())
        settings = json.loads(tracker.download(run_id, Artifact.CONFIG, folder).read_text())
        chosen[run_id] = {
            "digest": digest,
            "genotype": genotype,
            "settings": settings,
            "derived_val_acc": r[Metric.DERIVED_VAL_ACC],
        }
        if len(chosen) == spec.retrain.top_k:
            break
    return chosen


def run_retrain_stage(ctx: StageContext, tracker: StudyTracker, log: Log) -> Any:
    """The candidates x seeds not retrained yet with these settings; returns Tune's result grid (None
    when there is nothing to retrain)."""
    from bnas.platform.trainables import TrialSetup, retrain_trial

    spec, plan = ctx.spec, ctx.plan
    setup = TrialSetup(spec, plan.device, plan.threads, ctx.ray_logs)

    def trainable_for(cands: dict[str, dict[str, Any]]) -> Any:
        return tune.with_resources(
            tune.with_parameters(retrain_trial, setup=setup, candidates=cands), plan.resources
        )

    path = _restorable(ctx, "retrain", log)
    if path is not None:
        cands = json.loads((path / CANDIDATES).read_text())
        grid = _fit(tune.Tuner.restore(str(path), trainable_for(cands), resume_unfinished=True), "retrain")
        return _finished(grid, len(grid), "retrain")

    with tempfile.TemporaryDirectory() as tmp:
        candidates = retrain_candidates(spec, tracker, Path(tmp))
    if not candidates:
        log("retrain: no complete search run to retrain")
        return None
    done = {
        (r["search_run_id"], r["config_digest"])
        for r in map(run_record, tracker.runs(RETRAIN, status="FINISHED"))
    }
    jobs = [
        {"candidate": rid, "seed": s}
        for rid, c in candidates.items()
        for s in spec.retrain.seeds
        if (rid, retrain_key_digest(spec, c["settings"], s)) not in done
    ]
    skipped = len(candidates) * len(spec.retrain.seeds) - len(jobs)
    if skipped:
        log(f"retrain: {skipped} (genotype, seed) pair(s) already retrained with these settings: skipped")
    if not jobs:
        return None
    log(f"retrain: {len(candidates)} genotype(s) x {len(spec.retrain.seeds)} seed(s) -> {len(jobs)} trial(s)")
    name = StudyState(ctx.out_dir).new("retrain", spec.digest())
    tuner = tune.Tuner(
        trainable_for(candidates),
        param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.concurrency, reuse_actors=True),
        run_config=_run_config(ctx, name, RETRAIN, len(jobs), candidates),
    )
    # Tune creates the experiment folder in fit(); the candidates go next to its state for a restore.
    (ctx.out_dir / "ray" / name).mkdir(parents=True, exist_ok=True)
    (ctx.out_dir / "ray" / name / CANDIDATES).write_text(json.dumps(candidates))
    return _finished(_fit(tuner, "retrain"), len(jobs), "retrain")
