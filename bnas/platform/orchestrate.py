"""Running a study on a Ray cluster: the search stage, then the retraining stage (driver side).

Search stage
    one Tune trial per :func:`bnas.search.run_search`; Optuna (through :class:`StudySearcher`)
    proposes each trial's settings from the study's define-by-run space and keeps every trial in a
    SQLite study (``<out>/optuna.db``, study name = the study's name), so a rerun warm-starts from
    all earlier trials. ASHA stops weak trials on the super-network's per-epoch ``val_acc`` after a
    grace period longer than the warm-up. The objective is ``derived_val_acc``, reported once at the
    end: the accuracy of the derived discrete cells with the shared weights, the one figure that
    compares trials whatever their pruning strategy (the super-network's own ``val_acc`` depends on
    how many operations a strategy has left). Trials stopped early reach Optuna as PRUNED, failed
    ones as FAIL, never as COMPLETE with a partial value.
Retraining stage
    the ``top_k`` distinct genotypes (by digest, ranked by ``derived_val_acc``, read back from the
    MLflow search runs, so it also runs alone on a finished study) x the study's seeds, as a Tune
    grid; (genotype, seed, settings) pairs already retrained are skipped.

Operations: trial resources come from ``ray.cluster_resources()`` (a GPU per trial only where the
cluster has GPUs; a request the cluster can never meet is an error, not a trial that waits forever);
trials checkpoint every epoch and ``FailureConfig(max_failures)`` retries resume from the latest
checkpoint; ``resume=True`` continues an interrupted stage with ``Tuner.restore`` and marks Optuna
trials that a crash left RUNNING as FAIL. The driver is the only MLflow writer
(:class:`_TrackingCallback` -> :class:`~bnas.platform.tracking.StudyTracker`).

Everything that can be wrong with the input is checked before a folder, a run or a trial exists.
"""

from __future__ import annotations

import json
import math
import socket
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from bnas.config import ConfigError
from bnas.platform.space import flat_space_params
from bnas.platform.study import StudySpec, make_sampler
from bnas.platform.tracking import (
    RETRAIN_ARTIFACTS,
    RETRAIN_EPOCH_METRICS,
    RETRAIN_FINAL_METRICS,
    SEARCH_ARTIFACTS,
    SEARCH_EPOCH_METRICS,
    SEARCH_FINAL_METRICS,
    StudyTracker,
    TrackerConfig,
    check_tracking_uri,
    recorded_tracking_uri,
)

Log = Callable[[str], None]
STATE_FILE = "study_state.json"
CANDIDATES = "bnas_candidates.json"
#: ASHA needs a horizon; trials end by themselves long before it.
ASHA_MAX_T = 100_000
REPO_ROOT = Path(__file__).resolve().parents[2]


class StudyInterrupted(RuntimeError):
    """A stage stopped before its trials finished (Ctrl-C): ``--resume`` continues it."""


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
class ClusterInfo:
    address: str
    dashboard_url: str | None
    token_auth: bool
    resources: dict[str, float]
    started_here: bool


@dataclass
class TrialPlan:
    """Per-trial resources as Ray sees them, and the device/threads the trial's torch uses."""

    resources: dict[str, float]
    device: str
    threads: int


@dataclass
class StudyOutcome:
    out_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    summary: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Checks that need the disk, the store or the cluster (still before anything is written)
# --------------------------------------------------------------------------------------------


def check_dataset(spec: StudySpec) -> Path:
    """The dataset of the fixed settings must be on disk (or downloadable) before trials start."""
    from bnas.data import DATASETS, resolve_root

    data = spec.base_config.data
    origin = "data.root" if data.root else "the default data folder"
    return DATASETS.get(data.dataset).ensure(resolve_root(data), data.download, origin)


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """An explicit ``host:port`` must accept connections (``ray.init`` would otherwise retry for long)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"{address!r} is not host:port (e.g. 127.0.0.1:6379), auto or ray://host:port", key="--address"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({e}); start one with `ray start --head --port {port}` "
            f"or leave --address out to start a local cluster",
            key="--address",
        ) from None


def connect(address: str | None, dashboard: bool, verbose: bool) -> ClusterInfo:
    """Join the cluster at ``address`` or start a local one; workers can import ``bnas``."""
    import ray
    from ray.job_config import JobConfig

    if address:
        check_address(address)
    job = JobConfig(code_search_path=[str(REPO_ROOT)])
    try:
        # "local" always starts a new cluster: a plain ray.init() would join the last `ray start` one.
        ctx = ray.init(
            address=address or "local",
            include_dashboard=dashboard if not address else None,
            dashboard_host="127.0.0.1",
            job_config=job,
            log_to_driver=verbose,
            configure_logging=verbose,
            logging_level="warning",
            ignore_reinit_error=True,
        )
    except (ConnectionError, RuntimeError) as e:
        auth = (
            " If the cluster uses token authentication, make its token available (~/.ray/auth_token or "
            "RAY_AUTH_TOKEN) with RAY_AUTH_MODE=token."
            if address
            else ""
        )
        raise ConfigError(
            f"could not connect to the Ray cluster at {address or 'a new local cluster'}: {e}.{auth}",
            key="--address",
        ) from None
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        token_auth = bool(is_token_auth_enabled())
    except ImportError:  # the check moved: say nothing rather than something wrong
        token_auth = False
    url = getattr(ctx, "dashboard_url", None) or None
    return ClusterInfo(
        address=getattr(ctx, "address_info", {}).get("gcs_address", address or "local"),
        dashboard_url=f"http://{url}" if url and "://" not in url else url,
        token_auth=token_auth,
        resources=dict(ray.cluster_resources()),
        started_here=not address,
    )


def plan_trials(spec: StudySpec, cluster: dict[str, float]) -> TrialPlan:
    """Per-trial CPU/GPU from the study and what the cluster has; impossible requests raise."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    want = spec.resources
    gpu = (1.0 if gpus >= 1 else 0.0) if want.gpu == "auto" else float(want.gpu)
    if gpu > 0 and gpus == 0:
        raise ConfigError(
            f"asks for {gpu:g} GPU per trial but the Ray cluster has no GPU (it has "
            f"{cpus:g} CPUs); use resources.gpu: auto or 0 (or --set resources.gpu=0)",
            spec.source,
            "resources.gpu",
        )
    if gpu > gpus:
        raise ConfigError(
            f"asks for {gpu:g} GPUs per trial but the cluster has {gpus:g}", spec.source, "resources.gpu"
        )
    if want.cpu > cpus:
        raise ConfigError(
            f"asks for {want.cpu:g} CPUs per trial but the cluster has {cpus:g}; a trial would wait forever",
            spec.source,
            "resources.cpu",
        )
    resources = {"cpu": want.cpu, "gpu": gpu}
    return TrialPlan(resources, "cuda" if gpu > 0 else "cpu", max(1, int(want.cpu)))


# --------------------------------------------------------------------------------------------
# Optuna through Ray Tune
# --------------------------------------------------------------------------------------------


class StudySearcher(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how a trial ended.

    Ray's OptunaSearch tells every trial that ends with a result COMPLETE, with whatever value the
    last result held, so a trial stopped early by ASHA would count as a finished one. Here a trial is
    COMPLETE only when its last result says ``final``; stopped early it is PRUNED (with its per-epoch
    ``val_acc`` as intermediate values), failed it is FAIL. After a restore, Optuna trials that the
    crash left RUNNING and that no restored Tune trial continues are marked FAIL, so the study never
    keeps phantom running trials. (Uses OptunaSearch's ``_ot_trials``/``_ot_study``/``_completed_trials``
    as in ray 2.60.)
    """

    def __init__(self, *args: Any, intermediate: str = "val_acc", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._intermediate = intermediate

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return  # Optuna keeps no intermediate values for multi-objective studies
        value = result.get(self._intermediate)
        if trial_id in self._ot_trials and _is_number(value) and not result.get("final"):
            self._ot_trials[trial_id].report(float(value), int(result.get("epoch", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = None
        if error:
            state = TrialState.FAIL
        elif result and result.get("final") and all(_is_number(result.get(m)) for m in metrics):
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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fail_stale_trials(study: Any, keep: set[int] = frozenset()) -> int:
    """Mark RUNNING Optuna trials (left by a killed driver) FAIL, except the numbers in ``keep``."""
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in stale:
        if number not in keep:
            study.tell(number, state=TrialState.FAIL)
    return len([n for n in stale if n not in keep])


def optuna_storage(out_dir: Path) -> Any:
    return optuna.storages.RDBStorage(f"sqlite:///{(out_dir / 'optuna.db').resolve()}")


def clean_optuna_study(storage: Any, name: str, log: Log) -> None:
    """Before a new (not resumed) search: fail trials an earlier crash left RUNNING; say if warm."""
    if name not in optuna.get_all_study_names(storage):
        return
    study = optuna.load_study(study_name=name, storage=storage)
    stale = fail_stale_trials(study)
    if stale:
        log(f"optuna: marked {stale} trial(s) left RUNNING by an earlier crash as FAIL")
    log(f"optuna: study {name!r} already holds {len(study.trials)} trial(s): warm start")


# --------------------------------------------------------------------------------------------
# The MLflow callback (driver side; picklable because Tune stores it in tuner.pkl)
# --------------------------------------------------------------------------------------------


class _TrackingCallback(tune.Callback):
    """Feeds what trials report to the :class:`StudyTracker` (the single MLflow writer)."""

    def __init__(
        self,
        tracker: TrackerConfig,
        kind: str,
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

    def _key(self, trial: Any) -> str:
        return f"{self.kind}/{trial.trial_id}"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def _open(self, trial: Any) -> None:
        if self.kind == "search":
            sampled = dict(trial.config)
            cfg = self.spec.trial_config(sampled, self.plan.device, self.plan.threads)
            params = {**cfg.flat(), **flat_space_params(sampled)}
            tags = {"bnas.trial_id": trial.trial_id}
            name = f"search-{trial.trial_id}"
        else:
            job = trial.config["job"]
            cand = self.candidates[job["candidate"]]
            cfg = self.spec.retrain_config(
                cand["settings"], int(job["seed"]), self.plan.device, self.plan.threads
            )
            params = cfg.flat()
            tags = {
                "bnas.trial_id": trial.trial_id,
                "bnas.search_run_id": job["candidate"],
                "bnas.genotype_digest": cand["digest"],
                "bnas.seed": str(job["seed"]),
                "bnas.config_digest": retrain_key_digest(self.spec, cand["settings"], int(job["seed"])),
            }
            name = f"retrain-{cand['digest']}-s{job['seed']}"
        self.tracker.open_run(self._key(trial), self.kind, name, tags, params)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("final") or "epoch" not in result:
            return
        keys = SEARCH_EPOCH_METRICS if self.kind == "search" else RETRAIN_EPOCH_METRICS
        self.tracker.log_epoch(self._key(trial), {k: result.get(k) for k in keys}, int(result["epoch"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        done = bool(result.get("final"))
        final_keys = SEARCH_FINAL_METRICS if self.kind == "search" else RETRAIN_FINAL_METRICS
        epoch_keys = SEARCH_EPOCH_METRICS if self.kind == "search" else RETRAIN_EPOCH_METRICS
        artifacts = SEARCH_ARTIFACTS if self.kind == "search" else RETRAIN_ARTIFACTS
        final = {k: result.get(k) for k in final_keys} if done else {}
        tags = (
            {"bnas.genotype_digest": result["genotype_digest"]}
            if done and "genotype_digest" in result
            else {}
        )
        finish = dict(
            state="complete" if done else "pruned",
            final=final,
            tags=tags,
            epoch_metrics=epoch_keys,
            last_epoch=int(result.get("epoch", 0)),
        )
        if trial.checkpoint is None:
            self.tracker.finish(self._key(trial), **finish)
            return
        with trial.checkpoint.as_directory() as folder:
            self.tracker.finish(self._key(trial), artifact_dir=folder, artifacts=artifacts, **finish)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The driver-side error file is written before this call; the copy in storage may lag behind.
        local = Path(trial.error_file) if trial.error_file else None
        text = (local.read_text() if local and local.is_file() else trial.get_error()) or "no error text"
        lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else str(text)
        self.tracker.finish(self._key(trial), state="failed", error=message[:1000])


def retrain_key_digest(spec: StudySpec, settings: dict[str, Any], seed: int) -> str:
    """Identity of a retraining (genotype aside): its resolved settings, where it runs left out."""
    return spec.retrain_config(settings, seed, device="auto", threads=1).digest()


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


class _State:
    """``<out>/study_state.json``: the Tune experiments each stage ran (the last one is resumable)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / STATE_FILE
        self.data = (
            json.loads(self.path.read_text()) if self.path.is_file() else {"search": [], "retrain": []}
        )

    def last(self, stage: str) -> str | None:
        names = self.data.get(stage) or []
        return names[-1] if names else None

    def new(self, stage: str, study_digest: str) -> str:
        names = self.data.setdefault(stage, [])
        names.append(f"{stage}-{len(names) + 1}")
        self.data.setdefault("study_digest", {})[names[-1]] = study_digest
        self.path.write_text(json.dumps(self.data, indent=1))
        return names[-1]


def _restorable(out: Path, stage: str, resume: bool, log: Log) -> Path | None:
    """The stage's last Tune experiment when ``resume`` is asked for and Tune can restore it."""
    name = _State(out).last(stage) if resume else None
    if name is None:
        return None
    path = out / "ray" / name
    if tune.Tuner.can_restore(str(path)):
        log(f"resuming {name} from {path}")
        return path
    log(f"nothing to resume at {path}: starting the {stage} stage afresh")
    return None


def run_search_stage(
    spec: StudySpec, opts: RunOptions, plan: TrialPlan, tracker: TrackerConfig, log: Log
) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from bnas.platform.trainables import TrialSetup, search_trial

    out = opts.out_dir
    setup = TrialSetup(spec, plan.device, plan.threads, opts.verbose)
    trainable = tune.with_resources(tune.with_parameters(search_trial, setup=setup), plan.resources)
    path = _restorable(out, "search", opts.resume, log)
    if path is not None:
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
        return _finished(tuner.fit(), spec.trials, "search")

    storage = optuna_storage(out)
    clean_optuna_study(storage, spec.name, log)
    searcher = StudySearcher(
        space=spec.space.sample,
        metric=[o.metric for o in spec.objectives] if spec.multi_objective else spec.objectives[0].metric,
        mode=[o.mode for o in spec.objectives] if spec.multi_objective else spec.objectives[0].mode,
        sampler=make_sampler(spec),
        study_name=spec.name,
        storage=storage,
        intermediate=spec.scheduler.metric,
    )
    sc = spec.scheduler
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            metric=sc.metric,
            mode=sc.mode,
            max_t=ASHA_MAX_T,
            grace_period=spec.grace_period,
            reduction_factor=sc.reduction_factor,
        )
        if sc.name == "asha"
        else FIFOScheduler()
    )
    name = _State(out).new("search", spec.digest())
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.trials,
            max_concurrent_trials=spec.concurrency,
            reuse_actors=True,
        ),
        run_config=_run_config(name, out, spec, tracker, "search", plan, opts),
    )
    return _finished(tuner.fit(), spec.trials, "search")


def _finished(grid: Any, expected: int, stage: str) -> Any:
    """The result grid, unless Tune returned early (Ctrl-C) with trials left to run."""
    if grid.num_terminated + grid.num_errors < expected:
        raise StudyInterrupted(
            f"the {stage} stage was interrupted with {grid.num_terminated + grid.num_errors} "
            f"of {expected} trials finished; rerun with --resume to continue it"
        )
    return grid


def _run_config(
    name: str,
    out: Path,
    spec: StudySpec,
    tracker: TrackerConfig,
    kind: str,
    plan: TrialPlan,
    opts: RunOptions,
    candidates: dict | None = None,
) -> Any:
    return tune.RunConfig(
        name=name,
        storage_path=str((out / "ray").resolve()),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
        callbacks=[_TrackingCallback(tracker, kind, spec, plan, candidates)],
        verbose=1 if opts.verbose else 0,
    )


def retrain_candidates(spec: StudySpec, tracker: StudyTracker, work: Path) -> dict[str, dict[str, Any]]:
    """The ``top_k`` distinct genotypes of the study's complete search runs, best first."""
    runs = tracker.runs("search", "tags.`bnas.state` = 'complete'")
    runs = [r for r in runs if _is_number(r.data.metrics.get("derived_val_acc"))]
    runs.sort(key=lambda r: (-r.data.metrics["derived_val_acc"], r.info.start_time))
    chosen: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for r in runs:
        digest = r.data.tags.get("bnas.genotype_digest")
        if not digest or digest in seen:
            continue
        seen.add(digest)
        folder = work / r.info.run_id
        genotype = json.loads(tracker.download(r.info.run_id, "genotype.json", folder).read_text())
        settings = json.loads(tracker.download(r.info.run_id, "config.json", folder).read_text())
        chosen[r.info.run_id] = {
            "digest": digest,
            "genotype": genotype,
            "settings": settings,
            "derived_val_acc": r.data.metrics["derived_val_acc"],
        }
        if len(chosen) == spec.retrain.top_k:
            break
    return chosen


def run_retrain_stage(
    spec: StudySpec, opts: RunOptions, plan: TrialPlan, tracker: StudyTracker, log: Log
) -> Any:
    from bnas.platform.trainables import TrialSetup, retrain_trial

    out = opts.out_dir
    setup = TrialSetup(spec, plan.device, plan.threads, opts.verbose)

    def trainable_for(cands: dict[str, dict[str, Any]]) -> Any:
        return tune.with_resources(
            tune.with_parameters(retrain_trial, setup=setup, candidates=cands), plan.resources
        )

    path = _restorable(out, "retrain", opts.resume, log)
    if path is not None:
        cands = json.loads((path / CANDIDATES).read_text())
        grid = tune.Tuner.restore(str(path), trainable_for(cands), resume_unfinished=True).fit()
        return _finished(grid, len(grid), "retrain")

    with tempfile.TemporaryDirectory() as tmp:
        candidates = retrain_candidates(spec, tracker, Path(tmp))
    if not candidates:
        log("retrain: no complete search run to retrain")
        return None
    done = {
        (r.data.tags.get("bnas.search_run_id"), r.data.tags.get("bnas.config_digest"))
        for r in tracker.runs("retrain", "attributes.status = 'FINISHED'")
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
    name = _State(out).new("retrain", spec.digest())
    tuner = tune.Tuner(
        trainable_for(candidates),
        param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.concurrency, reuse_actors=True),
        run_config=_run_config(name, out, spec, tracker.config, "retrain", plan, opts, candidates),
    )
    # Tune creates the experiment folder in fit(); the candidates go next to its state for a restore.
    (out / "ray" / name).mkdir(parents=True, exist_ok=True)
    (out / "ray" / name / CANDIDATES).write_text(json.dumps(candidates))
    return _finished(tuner.fit(), len(jobs), "retrain")


# --------------------------------------------------------------------------------------------
# The whole study
# --------------------------------------------------------------------------------------------


def preflight(spec: StudySpec, opts: RunOptions) -> str:
    """Checks that need no cluster: tracking store, dataset, resume consistency. Returns the URI."""
    uri = check_tracking_uri(opts.tracking_uri)
    recorded = recorded_tracking_uri(opts.out_dir)
    if recorded and recorded != uri:
        raise ConfigError(
            f"{opts.out_dir} was tracked in {recorded}; rerun with --mlflow-uri {recorded} "
            f"(or use another --out)",
            key="--mlflow-uri",
        )
    check_dataset(spec)
    if opts.resume:
        state = _State(opts.out_dir)
        for stage in ("search", "retrain"):
            name = state.last(stage)
            recorded_digest = state.data.get("study_digest", {}).get(name) if name else None
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
            f"no finished search in {opts.out_dir} (no {opts.out_dir / 'mlflow_runs.json'}); "
            f"run --stage search (or all) first, or point --out at the study's folder",
            key="--stage",
        )
    return uri


def run_study(spec: StudySpec, opts: RunOptions, log: Log = print) -> StudyOutcome:
    """Check, connect, run the requested stage(s), print where to look; returns the summary."""
    import ray

    uri = preflight(spec, opts)
    cluster = connect(opts.address, opts.dashboard, opts.verbose)
    try:
        plan = plan_trials(spec, cluster.resources)
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        tracker = StudyTracker(TrackerConfig(uri, spec.name, str(opts.out_dir.resolve())))
        tracker.begin_study()
        log(where_to_look(cluster, tracker, uri))
        log(
            f"study {spec.name}: {spec.trials} trial(s), {spec.concurrency} at a time, each "
            f"{plan.resources['cpu']:g} CPU + {plan.resources['gpu']:g} GPU ({plan.device}); "
            f"folder {opts.out_dir}"
        )
        status = "FINISHED"
        try:
            if opts.stage in ("search", "all"):
                run_search_stage(spec, opts, plan, tracker.config, log)
            if opts.stage in ("retrain", "all") and spec.retrain.top_k > 0:
                run_retrain_stage(spec, opts, plan, tracker, log)
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
        log(where_to_look(cluster, tracker, uri))
        return StudyOutcome(opts.out_dir, uri, tracker.experiment_id, tracker.parent_id, rows)
    finally:
        ray.shutdown()  # stops a cluster started here; only disconnects from an existing one


def where_to_look(cluster: ClusterInfo, tracker: StudyTracker, uri: str) -> str:
    lines = []
    if cluster.dashboard_url:
        auth = (
            " (token authentication is on: paste the token from ~/.ray/auth_token, which "
            "`ray get-auth-token` prints)"
            if cluster.token_auth
            else ""
        )
        lines.append(f"Ray dashboard: {cluster.dashboard_url}{auth}")
    else:
        lines.append("Ray dashboard: not running (start without --no-dashboard, or use the cluster's own)")
    exp = f"#/experiments/{tracker.experiment_id}"
    if uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI: {uri.rstrip('/')}/{exp}")
    else:
        lines.append(
            f"MLflow UI: run `mlflow server --backend-store-uri {uri} --host 127.0.0.1 --port 5000`, "
            f"then open http://127.0.0.1:5000/{exp}"
        )
    return "\n".join(lines)


def summarize(tracker: StudyTracker, limit: int = 10) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per derived genotype (its best complete search run, by derived_val_acc) with the mean
    retraining test accuracy over all its retraining runs and its size; and how many search runs
    ended in each state."""
    searches = tracker.runs("search")
    retrains: dict[str, list[float]] = {}
    for r in tracker.runs("retrain", "attributes.status = 'FINISHED'"):
        acc = r.data.metrics.get("test_acc")
        if _is_number(acc):
            retrains.setdefault(r.data.tags.get("bnas.genotype_digest", ""), []).append(acc)
    best: dict[str, Any] = {}
    found: dict[str, int] = {}
    for r in searches:
        digest = r.data.tags.get("bnas.genotype_digest")
        acc = r.data.metrics.get("derived_val_acc")
        if r.data.tags.get("bnas.state") != "complete" or not digest or not _is_number(acc):
            continue
        found[digest] = found.get(digest, 0) + 1
        if digest not in best or acc > best[digest].data.metrics["derived_val_acc"]:
            best[digest] = r
    rows = []
    for digest, r in best.items():
        m, p = r.data.metrics, r.data.params
        accs = retrains.get(digest, [])
        rows.append(
            {
                "digest": digest,
                "search_run": r.info.run_id,
                "trial": r.data.tags.get("bnas.trial_id", ""),
                "found_by": found[digest],
                "method": p.get("binarization.method", ""),
                "strategy": p.get("reduction.strategy", ""),
                "K": p.get("search.sampling_k", ""),
                "derived_val_acc": m["derived_val_acc"],
                "packed_bytes": m.get("packed_bytes", math.nan),
                "params": m.get("params", math.nan),
                "test_acc": statistics.fmean(accs) if accs else math.nan,
                "seeds": len(accs),
            }
        )
    rows.sort(key=lambda row: -row["derived_val_acc"])
    counts: dict[str, int] = {}
    for r in searches:
        state = r.data.tags.get("bnas.state", "?")
        counts[state] = counts.get(state, 0) + 1
    return rows[:limit], counts


def format_summary(rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    head = "search trials: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none")
    if not rows:
        return f"summary ({head}): no complete search trial yet"
    lines = [
        f"summary ({head}); per genotype: found = search trials that derived it, val = best "
        "derived_val_acc (shared weights), test = mean retraining test accuracy over seeds",
        f"{'genotype':<13} {'found':>5} {'method':<12} {'strategy':<12} {'K':>2} {'val':>6} {'test':>12} "
        f"{'packed B':>10} {'params':>8}",
    ]
    for r in rows:
        test = f"{r['test_acc']:.3f} (n={r['seeds']})" if r["seeds"] else "-"
        lines.append(
            f"{r['digest']:<13} {r['found_by']:>5} {r['method']:<12} {r['strategy']:<12} {r['K']:>2} "
            f"{r['derived_val_acc']:>6.3f} {test:>12} {r['packed_bytes']:>10.0f} {r['params']:>8.0f}"
        )
    return "\n".join(lines)
