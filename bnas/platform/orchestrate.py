"""Running a study, top-down: check everything, connect, run the stage(s), summarize.

:func:`run_study` is what ``run.py --study NAME`` calls, in this order:

1. :func:`preflight` -- everything that can be wrong with the input is checked before a folder, a run
   or a trial exists: the tracking store (:func:`~bnas.platform.tracking_schema.probe_store`), the
   dataset, the study folder's recorded store and a resume's settings;
2. :func:`~bnas.platform.cluster.connect` and :func:`~bnas.platform.cluster.plan_trials` -- the Ray
   cluster and what each trial may ask of it;
3. :class:`~bnas.platform.tracking.StudyTracker` -- the study's parent MLflow run;
4. :func:`~bnas.platform.stages.run_search_stage` then
   :func:`~bnas.platform.stages.run_retrain_stage` -- each a Ray Tune experiment whose trials are
   :mod:`bnas.platform.trainables` (``run_search`` / ``retrain``), recorded by the driver-side
   :class:`~bnas.platform.callbacks.TrackingCallback`;
5. :mod:`bnas.platform.summary` -- where to look, and the leaderboard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnas.errors import ConfigError
from bnas.platform.cluster import connect, disconnect, plan_trials
from bnas.platform.stages import (
    StageContext,
    StudyInterrupted,
    StudyState,
    run_retrain_stage,
    run_search_stage,
)
from bnas.platform.study import StudySpec
from bnas.platform.summary import format_summary, summarize, where_to_look
from bnas.platform.tracking import StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import RUN_MAP, probe_store, recorded_tracking_uri

__all__ = ["RunOptions", "StudyInterrupted", "StudyOutcome", "plan_trials", "preflight", "run_study"]

Log = Callable[[str], None]


@dataclass
class RunOptions:
    """How to run a study (``run.py`` fills it from the command line)."""

    out_dir: Path
    tracking_uri: str
    stage: str = "all"  # "search", "retrain" or "all"
    resume: bool = False
    address: str | None = None
    dashboard: bool = True
    verbose: bool = True


@dataclass
class StudyOutcome:
    out_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    summary: list[dict[str, Any]] = field(default_factory=list)


def check_dataset(spec: StudySpec) -> Path:
    """The dataset of the fixed settings must be on disk (or downloadable) before trials start."""
    from bnas.data import DATASETS, resolve_root

    data = spec.base_config.data
    origin = "data.root" if data.root else "the default data folder"
    return DATASETS.get(data.dataset).ensure(resolve_root(data), data.download, origin)


def preflight(spec: StudySpec, opts: RunOptions) -> str:
    """Checks that need no cluster: tracking store, dataset, resume consistency. Returns the URI."""
    uri = probe_store(opts.tracking_uri, write=True)
    recorded = recorded_tracking_uri(opts.out_dir)
    if recorded and recorded != uri:
        raise ConfigError(
            f"{opts.out_dir} was tracked in {recorded}; rerun with --mlflow-uri {recorded} "
            f"(or use another --out)",
            key="--mlflow-uri",
        )
    check_dataset(spec)
    if opts.resume:
        state = StudyState(opts.out_dir)
        for stage in ("search", "retrain"):
            name = state.last(stage)
            recorded_digest = state.digest_of(name) if name else None
            if recorded_digest and recorded_digest != spec.digest():
                raise ConfigError(
                    f"{opts.out_dir / 'ray' / name} was started with other study settings; resume with the "
                    f"same study file and --set options (or start a new run without --resume)",
                    spec.source,
                    "--resume",
                )
    if opts.stage == "retrain" and spec.retrain.top_k == 0:
        raise ConfigError("is 0: nothing to retrain", spec.source, "retrain.top_k")
    if opts.stage == "retrain" and recorded is None:
        raise ConfigError(
            f"no finished search in {opts.out_dir} (no {opts.out_dir / RUN_MAP}); "
            f"run --stage search (or all) first, or point --out at the study's folder",
            key="--stage",
        )
    return uri


def run_study(spec: StudySpec, opts: RunOptions, log: Log = print) -> StudyOutcome:
    """Check, connect, run the requested stage(s), print where to look; returns the summary."""
    uri = preflight(spec, opts)
    cluster = connect(opts.address, opts.dashboard, opts.verbose)
    try:
        plan = plan_trials(spec, cluster.resources)
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        tracker = StudyTracker(TrackerConfig(uri, spec.name, str(opts.out_dir.resolve())))
        tracker.begin_study()
        log(where_to_look(cluster, tracker.experiment_id, uri))
        log(
            f"study {spec.name}: {spec.trials} trial(s), {spec.concurrency} at a time, each "
            f"{plan.resources['cpu']:g} CPU + {plan.resources['gpu']:g} GPU ({plan.device}); "
            f"folder {opts.out_dir}"
        )
        ctx = StageContext(spec, opts.out_dir, plan, tracker.config, opts.resume, opts.verbose)
        status = "FINISHED"
        try:
            if opts.stage in ("search", "all"):
                run_search_stage(ctx, log)
            if opts.stage in ("retrain", "all") and spec.retrain.top_k > 0:
                run_retrain_stage(ctx, tracker, log)
        except StudyInterrupted:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            tracker.close_study(status)
        rows, counts = summarize(tracker)
        log(format_summary(rows, counts))
        log(where_to_look(cluster, tracker.experiment_id, uri))
        return StudyOutcome(opts.out_dir, uri, tracker.experiment_id, tracker.parent_id, rows)
    finally:
        disconnect()  # stops a cluster started here; only disconnects from an existing one
