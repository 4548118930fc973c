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
lines never interleave and a warning a trial would repeat is not printed per trial. Each line says
which trial of the stage it is (``trial 3 of 8``: the trial's place in Tune's creation order, which
a restored experiment keeps) and, once a trial has ended in this driver, an estimate of the time the
stage has left (:class:`StageProgress`).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from bnas.platform.cluster import TrialPlan
from bnas.platform.study import StudySpec
from bnas.platform.tracking import StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import RETRAIN, SEARCH, RunKind, State
from bnas.runtime import format_duration

#: Tune's trial states (``ray.tune.experiment.Trial``) this module reads.
RUNNING, ENDED = "RUNNING", ("TERMINATED", "ERROR")


def retrain_key_digest(spec: StudySpec, settings: dict[str, Any], seed: int) -> str:
    """Identity of a retraining (genotype aside): :meth:`~bnas.config.ExperimentConfig.result_digest`."""
    return spec.retrain_config(settings, seed).result_digest()


def stage_time_left(
    durations: Sequence[float], running_left: Sequence[float], unstarted: int, slots: int
) -> float:
    """Seconds until the last trial of a stage ends.

    Running trials need ``running_left``; each trial not started yet lasts the median of
    ``durations`` (the ended trials, pruned ones included: later trials may be pruned too) and goes to
    whichever of the ``slots`` concurrent trials frees first (list scheduling). Unlike "remaining
    trials x median / slots", this counts what running trials have done and never splits the last
    trial across slots (one trial left of two slots takes a whole median, not half of one).
    """
    median = statistics.median(durations)
    free = [*running_left, *[0.0] * max(0, slots - len(running_left))]
    heapq.heapify(free)
    for _ in range(unstarted):
        heapq.heappush(free, heapq.heappop(free) + median)
    return max(free, default=0.0)


def _fraction_done(result: dict) -> float | None:
    """A trial's epoch over its epochs (search: ``total_epochs``, retraining: ``epochs``), if known."""
    epoch, total = result.get("epoch"), result.get("total_epochs", result.get("epochs"))
    ok = isinstance(epoch, (int, float)) and isinstance(total, (int, float)) and total > 0
    return min(1.0, epoch / total) if ok else None


class StageProgress:
    """Which trial of how many, and about how long a stage has left (driver side).

    ``total``: the trials the stage will run (None: unknown, in a callback of an older tuner.pkl).
    ``concurrency``: the most trials the stage runs at a time; the cluster may allow fewer, so the
    slots of the estimate are the fewer of it and the most trials seen running at once. Durations
    are the driver's clock from a trial's start to its end, for trials that started in this process
    (a resumed trial's earlier part is unknown); failed trials count as ended but not as durations.
    A running trial's time left is its own pace: the time its epochs took in this process so far
    (from the epoch counts of its results), else what is left of the median.
    """

    def __init__(
        self, total: int | None, concurrency: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total, self.concurrency, self.clock = total, concurrency, clock
        self.started: dict[str, float] = {}
        self.start_done: dict[str, float] = {}  # fraction done at the start (a resumed trial)
        self.reported: dict[str, tuple[float, float]] = {}  # fraction done and clock at the last epoch
        self.ended: set[str] = set()
        self.durations: list[float] = []
        self.peak = 0

    def start(self, trial: Any, trials: Sequence[Any]) -> None:
        """A trial starts (again, after a failure: its first start counts)."""
        if trial.trial_id not in self.started:
            self.started[trial.trial_id] = self.clock()
            done = _fraction_done(trial.last_result or {})
            if done is not None:  # a restored experiment's trial, partly done before this process
                self.start_done[trial.trial_id] = done
        # Tune marks the trial RUNNING after this call: count it with the others already running.
        self.saw_running(trials, also=trial)

    def epoch(self, trial: Any, result: dict, trials: Sequence[Any]) -> None:
        """A trial reported an epoch: how far it is, and how many trials run at once."""
        done = _fraction_done(result)
        if done is not None:
            self.reported[trial.trial_id] = (done, self.clock())
        self.saw_running(trials)

    def saw_running(self, trials: Sequence[Any], also: Any = None) -> None:
        """Note how many trials run at once (the slots of the estimate)."""
        running = {t.trial_id for t in trials if t.status == RUNNING}
        if also is not None:
            running.add(also.trial_id)
        self.peak = max(self.peak, len(running))

    def end(self, trial: Any, timed: bool = True) -> None:
        if trial.trial_id in self.ended:
            return
        self.ended.add(trial.trial_id)
        t0 = self.started.get(trial.trial_id)
        if timed and t0 is not None and trial.trial_id not in self.start_done:
            self.durations.append(self.clock() - t0)

    def number(self, trial: Any, trials: Sequence[Any]) -> str:
        """``trial 3 of 8``: the trial's place in Tune's list (creation order), of ``total``."""
        ids = [t.trial_id for t in trials]
        n = str(ids.index(trial.trial_id) + 1) if trial.trial_id in ids else "?"
        return f"trial {n}" + (f" of {self.total}" if self.total else "")

    def _left(self, trial_id: str, median: float, now: float) -> float:
        t0 = self.started.get(trial_id, now)
        before = self.start_done.get(trial_id, 0.0)
        if trial_id in self.reported:
            done, at = self.reported[trial_id]
            if done > before:  # the pace of its epochs here, counted from its last report
                return max(0.0, (at - t0) * (1.0 - done) / (done - before) - (now - at))
        return max(0.0, median - (now - t0))

    def time_left(self, trials: Sequence[Any]) -> float | None:
        """Seconds the stage has left (:func:`stage_time_left`); None before a trial has ended here
        (nothing to go by) and once no trial is left."""
        ended = self.ended | {t.trial_id for t in trials if t.status in ENDED}
        running = [t.trial_id for t in trials if t.status == RUNNING and t.trial_id not in ended]
        unstarted = max(0, max(self.total or 0, len(trials)) - len(ended) - len(running))
        if not self.durations or not (running or unstarted):
            return None
        slots = max(1, min(self.concurrency or self.peak, self.peak or 1))
        now, median = self.clock(), statistics.median(self.durations)
        left = [self._left(tid, median, now) for tid in running]
        return stage_time_left(self.durations, left, unstarted, slots)

    def eta_text(self, trials: Sequence[Any]) -> str:
        """``; stage ETA ~1m20s (estimate)``, or nothing while :meth:`time_left` is None."""
        left = self.time_left(trials)
        return "" if left is None else f"; stage ETA ~{format_duration(left)} (estimate)"


class TrackingCallback(tune.Callback):
    """Feeds what the trials of one stage report to the :class:`StudyTracker`, and prints progress.

    ``candidates`` (retraining stage): search run id -> ``{"digest", "genotype", "settings", ...}``,
    the genotypes a retraining trial's ``job`` points at. ``total``: the trials the stage runs;
    ``concurrency``: how many at a time at most (the "trial n of N" and the stage's ETA).
    """

    #: For a callback unpickled from a tuner.pkl written before these existed.
    progress = "epoch"
    total: int | None = None
    concurrency: int | None = None

    def __init__(
        self,
        tracker: TrackerConfig,
        kind: RunKind,
        spec: StudySpec,
        plan: TrialPlan,
        candidates: dict[str, dict[str, Any]] | None = None,
        progress: str = "epoch",
        total: int | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.tracker_config, self.kind, self.spec, self.plan = tracker, kind, spec, plan
        self.candidates = candidates or {}
        self.progress = progress  # "epoch", "trial" or "none"
        self.total, self.concurrency = total, concurrency
        self._tracker: StudyTracker | None = None
        self._labels: dict[str, str] = {}
        self._stage: StageProgress | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Start times are this process's clock: a restored experiment starts counting afresh.
        return {**self.__dict__, "_tracker": None, "_labels": {}, "_stage": None}

    @property
    def tracker(self) -> StudyTracker:
        if self._tracker is None:
            self._tracker = StudyTracker(self.tracker_config)
        return self._tracker

    @property
    def stage(self) -> StageProgress:
        if getattr(self, "_stage", None) is None:  # absent in a tuner.pkl of an older version
            self._stage = StageProgress(self.total, self.concurrency)
        return self._stage

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.stage.start(trial, trials)
        self._open(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.stage.start(trial, trials)
        self._open(trial)

    def _say(self, line: str) -> None:
        print(line, flush=True)

    def _label(self, trial: Any, trials: Sequence[Any]) -> str:
        """``search 355e43de [xnor K=2 ucb] (trial 3 of 8)`` / ``retrain 00001 1a2b3c4d5e6f s0 (trial 2
        of 4)``: short, the same in every line of the trial; the id is the trial id (a search run is
        ``search-<trial id>`` in MLflow), for a retraining its counter."""
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
            labels[trial.trial_id] = f"{label} ({self.stage.number(trial, trials)})"
        return labels[trial.trial_id]

    def _epoch_line(self, trial: Any, trials: Sequence[Any], r: dict) -> str:
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
        eta = self.stage.eta_text(trials)
        return f"{self._label(trial, trials)} {where}: " + ", ".join(f for f in figs if f) + eta

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
        self.stage.epoch(trial, result, trials)
        if self.progress == "epoch":
            self._say(self._epoch_line(trial, trials, result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        done = bool(result.get("final"))  # otherwise the scheduler stopped it early
        finish = dict(
            state=State.COMPLETE if done else State.PRUNED,
            result=result if done else None,
            genotype_digest=result.get("genotype_digest") if done else None,
            last_epoch=int(result.get("epoch", 0)),
        )
        self.stage.end(trial)
        if self.progress != "none":
            self._say(self._end_line(trial, trials, result, done) + self.stage.eta_text(trials))
        if trial.checkpoint is None:
            self.tracker.finish(self.kind, trial.trial_id, **finish)
            return
        with trial.checkpoint.as_directory() as folder:
            self.tracker.finish(
                self.kind, trial.trial_id, artifact_dir=folder, register_model=self.kind == RETRAIN, **finish
            )

    def _end_line(self, trial: Any, trials: Sequence[Any], r: dict, done: bool) -> str:
        label = self._label(trial, trials)
        if not done:
            epoch = r.get("epoch", "?")
            return f"{label}: stopped early by the scheduler after epoch {epoch} (pruned)"
        if self.kind == SEARCH:
            acc, digest = r.get("derived_val_acc", float("nan")), r.get("genotype_digest", "?")
            return f"{label}: complete, derived_val_acc {acc:.3f}, genotype {digest}"
        return (
            f"{label}: complete, test_acc {r.get('test_acc', float('nan')):.3f} "
            f"({r.get('wall_time_s', 0):.0f} s)"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The driver-side error file is written before this call; the copy in storage may lag behind.
        local = Path(trial.error_file) if trial.error_file else None
        text = (local.read_text() if local and local.is_file() else trial.get_error()) or "no error text"
        lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else str(text)
        self.stage.end(trial, timed=False)  # a failure's time says nothing about a trial's length
        if self.progress != "none":
            line = f"{self._label(trial, trials)}: FAILED: {message[:300]} (full error: {trial.error_file})"
            self._say(line + self.stage.eta_text(trials))
        self.tracker.finish(self.kind, trial.trial_id, state=State.FAILED, error=message[:1000])


#: Tune's loggers whose records repeat, as a traceback, what the console's FAILED line already says
#: (with the path of the full error): the trial's error, a failed checkpoint sync, and the result
#: file a retried trial could not restore.
TUNE_ERROR_LOGGERS = (
    "ray.tune.execution.tune_controller",
    "ray.train._internal.syncer",
    "ray.tune.logger.logger",
)
#: Records dropped outright: said by the console's FAILED line, or a consequence of the same failure
#: (a study's storage is a local folder: a sync fails where a checkpoint cannot be written).
TUNE_REPEATS = ("Trial task failed for trial", "Remote file not found:", "Last sync command failed")


class _OneLineErrors(logging.Filter):
    """Drops Tune's "Trial task failed" traceback (the console's FAILED line says it, with the error
    file) and the like (:data:`TUNE_REPEATS`); shortens other warnings and errors of these loggers to
    their first and last lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(TUNE_REPEATS):
            return False
        if record.levelno >= logging.WARNING and (record.exc_info or "\n" in message):
            lines = [line for line in message.splitlines() if line.strip()]
            if record.exc_info and record.exc_info[1] is not None:
                lines.append(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}".splitlines()[0])
            record.msg = lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1].strip()}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


@contextlib.contextmanager
def one_line_trial_errors(active: bool) -> Iterator[None]:
    """While a stage runs without ``--ray-logs``: a failing trial is one console line, not Tune's
    traceback as well (a full disk would otherwise print hundreds of lines before run.py's error)."""
    if not active:
        yield
        return
    flt = _OneLineErrors()
    loggers = [logging.getLogger(name) for name in TUNE_ERROR_LOGGERS]
    for logger in loggers:
        logger.addFilter(flt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(flt)
