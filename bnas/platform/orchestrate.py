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

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnas.errors import ConfigError
from bnas.platform.callbacks import one_line_trial_errors
from bnas.platform.cluster import check_cluster, connect, disconnect, plan_trials
from bnas.platform.identity import DatasetDescription, describe_dataset, identity_record, study_identity
from bnas.platform.stages import (
    STATE_FILE,
    StageContext,
    StudyInterrupted,
    StudyState,
    run_retrain_stage,
    run_search_stage,
)
from bnas.platform.study import StudySpec
from bnas.platform.summary import format_summary, summarize, where_to_look
from bnas.platform.tracking import StudyTracker, TrackerConfig, check_parent_identity
from bnas.platform.tracking_schema import (
    OPTUNA_DB,
    RUN_MAP,
    STUDY_KIND,
    RunMap,
    Tag,
    experiment_name,
    probe_store,
    recorded_tracking_uri,
)

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
    verbose: bool = True  # a progress line per trial epoch (else per finished trial)
    ray_logs: bool = False  # Ray's, Tune's and the trials' own console output too


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


def check_identity(uri: str, config: TrackerConfig) -> None:
    """The study name must not already name a study run with another identity in the store (read only:
    a SQLite store that does not exist yet holds no study)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment_name(config.study))
    if exp is None:
        return
    parent = RunMap(config.state_dir, uri).load().get("parent")
    if parent is None:
        flt = f"tags.`{Tag.KIND}` = '{STUDY_KIND}' and tags.`{Tag.STUDY}` = '{config.study}'"
        found = client.search_runs([exp.experiment_id], filter_string=flt, max_results=1)
        parent = found[0].info.run_id if found else None
    if parent is not None:
        check_parent_identity(client.get_run(parent), config)


def preflight(spec: StudySpec, opts: RunOptions, log: Log | None = None) -> str:
    """Everything a run checks before it starts: tracking store, dataset, study identity, resume
    consistency, and what the cluster can give each trial (read without starting or joining it:
    :func:`~bnas.platform.cluster.check_cluster`). Returns the URI; ``log`` (``--check``) also gets
    the study's identity and its dataset."""
    uri, dataset, tracker_config = _preflight(spec, opts)
    if log is not None:
        log(f"study {spec.name} (identity {tracker_config.identity})")
        log(dataset.header())
    return uri


def _preflight(spec: StudySpec, opts: RunOptions) -> tuple[str, DatasetDescription, TrackerConfig]:
    if opts.out_dir.exists() and not opts.out_dir.is_dir():
        raise ConfigError(
            f"{opts.out_dir} is a file, not a folder; give --out a folder (new or the study's)", key="--out"
        )
    uri = probe_store(opts.tracking_uri, write=True)
    recorded = recorded_tracking_uri(opts.out_dir)
    if recorded and recorded != uri:
        raise ConfigError(
            f"{opts.out_dir} was tracked in {recorded}; rerun with --mlflow-uri {recorded} "
            f"(or use another --out)",
            key="--mlflow-uri",
        )
    dataset = describe_dataset(spec, check_dataset(spec))
    record = identity_record(spec, dataset)
    tracker_config = TrackerConfig(
        uri,
        spec.name,
        str(opts.out_dir.resolve()),
        identity=study_identity(spec, dataset),
        identity_record=json.dumps(record, sort_keys=True, default=str),
    )
    check_identity(uri, tracker_config)
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
        _check_resumable_folder(opts.out_dir, state)
    if opts.stage == "retrain" and spec.retrain.top_k == 0:
        raise ConfigError("is 0: nothing to retrain", spec.source, "retrain.top_k")
    if opts.stage == "retrain" and recorded is None:
        raise ConfigError(
            f"no finished search in {opts.out_dir} (no {opts.out_dir / RUN_MAP}); "
            f"run --stage search (or all) first, or point --out at the study's folder",
            key="--stage",
        )
    # Last, as in a run: what the cluster can give each trial (no Ray process starts for this).
    check_cluster(spec, opts.address, dataset.num_classes)
    return uri, dataset, tracker_config


def _check_resumable_folder(out_dir: Path, state: StudyState) -> None:
    """Refuse ``--resume`` where the folder lost what a stage's trials were recorded against: the
    stage's Tune experiment (``ray/<name>``) or, for the search, ``optuna.db``, while
    ``mlflow_runs.json`` holds that stage's runs. Resuming would run the stage again from nothing and
    record its trials a second time in MLflow."""
    runs = RunMap(out_dir, "").load()["runs"]
    for stage in ("search", "retrain"):
        name = state.last(stage)
        recorded = sum(1 for key in runs if key.startswith(f"{stage}/"))
        if name is None or not recorded:
            continue
        missing = [out_dir / "ray" / name] + ([out_dir / OPTUNA_DB] if stage == "search" else [])
        missing = [p for p in missing if not p.exists()]
        if missing:
            raise ConfigError(
                f"{STATE_FILE} records {name} and {RUN_MAP} holds {recorded} {stage} run(s), but "
                f"{' and '.join(str(p) for p in missing)} {'is' if len(missing) == 1 else 'are'} gone: a "
                f"resume would run the {stage} again and record its trials twice. Restore the folder, or "
                "start afresh in a new folder (--out) or under another --name",
                str(out_dir),
                "--resume",
            )


#: The study folder's lock file: held (``flock``) by the one driver running the study.
LOCK_FILE = "driver.lock"


@contextlib.contextmanager
def study_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the study folder while a driver runs it.

    A second ``run.py`` on the same folder would take the first one's live Optuna trials for those of
    a crashed run and fail them. The lock is the kernel's (``flock``): it ends with the process, so a
    killed driver leaves nothing to clean up, and the file names the holder for the error.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 500).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"this study folder is being run by {holder}; wait for it to end (or stop it), or run this "
            "one elsewhere with --out or under another --name",
            str(out_dir),
        ) from None
    try:
        os.ftruncate(fd, 0)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.write(fd, f"run.py (pid {os.getpid()} on {socket.gethostname()}, since {now})\n".encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


#: Free bytes below which a study's folder (or its SQLite store's) counts as full when a stage fails.
FULL_DISK_BYTES = 1 << 20


def _store_folders(uri: str) -> list[Path]:
    """The folder of a ``sqlite:///`` tracking store (a full disk there stops the study too)."""
    return [Path(uri.removeprefix("sqlite:///")).parent] if uri.startswith("sqlite:///") else []


def _full_disk(error: BaseException, folders: Sequence[Path]) -> Path | None:
    """The folder whose file system is full when ``error`` stopped a stage, else None: ENOSPC or
    SQLite's "database or disk is full" anywhere in the error's chain (Tune and Optuna wrap it), or
    less than :data:`FULL_DISK_BYTES` free where the study writes."""
    chain, seen = [], error
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    said_full = any(
        getattr(x, "errno", None) == errno.ENOSPC or "disk is full" in str(x) or "No space left" in str(x)
        for x in chain
    )
    free: dict[Path, int] = {}
    for folder in folders:
        probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
        with contextlib.suppress(OSError, TypeError):
            free[folder] = shutil.disk_usage(probe).free  # type: ignore[arg-type]
    if not free:
        return None
    fullest = min(free, key=free.__getitem__)
    return fullest if said_full or free[fullest] < FULL_DISK_BYTES else None


def run_study(spec: StudySpec, opts: RunOptions, log: Log = print) -> StudyOutcome:
    """Check, lock the study folder, connect, run the requested stage(s), print where to look; returns
    the summary."""
    uri, dataset, tracker_config = _preflight(spec, opts)
    with study_lock(opts.out_dir):
        return _run_locked(spec, opts, log, uri, dataset, tracker_config)


def _run_locked(
    spec: StudySpec,
    opts: RunOptions,
    log: Log,
    uri: str,
    dataset: DatasetDescription,
    tracker_config: TrackerConfig,
) -> StudyOutcome:
    if not opts.ray_logs:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in RDB ...": noise
    cluster = connect(opts.address, opts.dashboard, opts.ray_logs)
    try:
        plan = plan_trials(spec, cluster.resources)
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        tracker = StudyTracker(tracker_config)
        tracker.begin_study()
        tracker.log_dataset(dataset.params(), dataset.root, dataset.params())
        optuna_db = opts.out_dir.resolve() / OPTUNA_DB
        log(where_to_look(cluster, tracker.experiment_id, uri, optuna_db))
        log(
            f"study {spec.name} (identity {tracker_config.identity}): {spec.trials} trial(s), "
            f"{spec.concurrency} at a time, each {plan.resources['cpu']:g} CPU + "
            f"{plan.resources['gpu']:g} GPU ({plan.device}); folder {opts.out_dir}"
        )
        log(dataset.header())
        ctx = StageContext(spec, opts.out_dir, plan, tracker.config, opts.resume, opts.verbose, opts.ray_logs)
        status = "FINISHED"
        try:
            with one_line_trial_errors(not opts.ray_logs):
                if opts.stage in ("search", "all"):
                    run_search_stage(ctx, log)
                if opts.stage in ("retrain", "all") and spec.retrain.top_k > 0:
                    run_retrain_stage(ctx, tracker, log)
        except StudyInterrupted:
            status = "KILLED"
            raise
        except BaseException as e:
            status = "FAILED"
            tracker.end_open_runs("FAILED")
            full = _full_disk(e, [opts.out_dir, *_store_folders(uri)])
            if full is not None:  # the user's to fix: one error line (run.py), not Tune's traceback
                raise OSError(
                    errno.ENOSPC, "No space left on device (continue with --resume)", str(full)
                ) from e
            raise
        finally:
            with contextlib.suppress(Exception):  # a full store must not hide why the study stopped
                tracker.close_study(status)
        rows, counts = summarize(tracker, num_classes=dataset.num_classes)
        log(format_summary(rows, counts))
        log(where_to_look(cluster, tracker.experiment_id, uri, optuna_db, ended=True))
        return StudyOutcome(opts.out_dir, uri, tracker.experiment_id, tracker.parent_id, rows)
    finally:
        disconnect()  # stops a cluster started here; only disconnects from an existing one
