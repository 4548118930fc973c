"""The study's console: which trial of how many, the stage's ETA, and nothing of Ray's or Optuna's own.

Units (no Ray cluster): the callback's lines on small fake trials with a fake clock, the searcher's
filter on Ray's slow-space warning, the filter on Ray's token notice. End to end: ``run.py`` starting
a local cluster with its output on a pseudo-terminal (where colorama's exit reset shows), and the
session's smoke study.
"""

from __future__ import annotations

import logging
import os
import pickle
import pty
import select
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import RUN_PY, SmokeStudy, cli_env, end_group, smoke_args

from bnas.platform.callbacks import StageProgress, TrackingCallback, stage_time_left
from bnas.platform.cluster import TOKEN_AUTH_LOGGER, TOKEN_AUTH_NOTICE, TrialPlan, _quiet_token_notice
from bnas.platform.searcher import optuna_storage, study_searcher
from bnas.platform.study import load_study
from bnas.platform.tracking import TrackerConfig
from bnas.platform.tracking_schema import SEARCH, State


@dataclass
class FakeTrial:
    """What the callback reads of a Tune trial."""

    trial_id: str
    config: dict[str, Any]
    status: str = "PENDING"
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None
    error_file: str | None = None

    def get_error(self) -> str | None:
        return None


class FakeTracker:
    """Takes the callback's MLflow calls and keeps the states it was told."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    def open_search_run(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_epoch(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self, kind: Any, trial_id: str, state: Any, **kwargs: Any) -> None:
        self.states[trial_id] = state


XNOR = {"binarization.method": "xnor", "search.sampling_k": 2, "reduction.strategy": "ucb", "search.lr": 0.02}
PCNN = {**XNOR, "binarization.method": "pcnn", "binarization.pcnn_lambda": 1e-4, "search.sampling_k": 4}


def _epoch(epoch: int, elapsed: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "total_epochs": 9,
        "stage": 1 + (epoch - 1) // 3,
        "val_acc": 0.404,
        "train_loss": 2.3,
        "ops_per_edge": 4,
        "elapsed_s": elapsed,
        "final": False,
    }


def test_stage_time_left_schedules_the_trials_left_on_the_slots() -> None:
    # One trial left with two slots takes a whole median (remaining x median / slots would say half).
    assert stage_time_left([40.0], [], unstarted=1, slots=2) == 40.0
    # Median 20; a running trial needs 15; three more go to whichever slot frees first:
    # slots free at 0 and 15 -> 20, 15 -> 35, 20 -> 40.
    assert stage_time_left([10.0, 30.0, 20.0], [15.0], unstarted=3, slots=2) == 40.0
    assert stage_time_left([10.0], [25.0], unstarted=0, slots=1) == 25.0  # the running trial alone


def test_a_resumed_trial_goes_at_its_pace_in_this_process() -> None:
    """A trial of a restored experiment, 3 of 9 epochs done before: its pace counts only the epochs
    run here, and its duration (partly unknown) is no trial length."""
    now = [100.0]
    stage = StageProgress(2, 2, clock=lambda: now[0])
    done, resumed = FakeTrial("done", XNOR, "TERMINATED"), FakeTrial("resumed", XNOR)
    resumed.last_result = _epoch(3, 50.0)
    trials = [done, resumed]
    stage.start(resumed, trials)
    resumed.status = "RUNNING"
    assert stage.time_left(trials) is None  # no trial has ended in this process yet
    stage.durations.append(60.0)  # as if one had (60 s)
    now[0] = 130.0
    stage.epoch(resumed, _epoch(6, 80.0), trials)  # 3 epochs in 30 s: 3 more take 30 s
    assert stage.time_left(trials) == pytest.approx(30.0)
    now[0] = 140.0
    assert stage.time_left(trials) == pytest.approx(20.0)
    stage.end(resumed)
    assert stage.durations == [60.0]


def test_lines_say_which_trial_of_how_many_and_the_stage_eta(tmp_path: Path, capsys) -> None:
    """Four search trials, two at a time, on a fake clock, as Tune calls the callback (a trial becomes
    RUNNING after on_trial_start, TERMINATED after on_trial_complete)."""
    spec = load_study("bnas_smoke")
    config = TrackerConfig("sqlite:///unused.db", spec.name, str(tmp_path))
    cb = TrackingCallback(
        config, SEARCH, spec, TrialPlan({"cpu": 1, "gpu": 0}, "cpu", 1), total=4, concurrency=2
    )
    cb._tracker = FakeTracker()
    now = [0.0]
    cb._stage = StageProgress(4, 2, clock=lambda: now[0])
    a, b, c, d = (FakeTrial(f"{x * 8}", cfg) for x, cfg in zip("abcd", (XNOR, PCNN, XNOR, XNOR)))
    trials: list[FakeTrial] = []

    def start(trial: FakeTrial, t: float) -> None:
        now[0] = t
        trials.append(trial)
        cb.on_trial_start(0, trials, trial)
        trial.status = "RUNNING"

    def result(trial: FakeTrial, t: float, r: dict[str, Any]) -> None:
        now[0] = t
        cb.on_trial_result(0, trials, trial, r)
        trial.last_result = r

    def complete(trial: FakeTrial, t: float) -> None:
        now[0] = t
        cb.on_trial_complete(0, trials, trial)
        trial.status = "TERMINATED"

    start(a, 0)
    start(b, 10)
    result(a, 12, _epoch(1, 5.0))
    final = {"final": True, "epoch": 9, "derived_val_acc": 0.404, "genotype_digest": "b1e04f5e1078"}
    a.last_result = final
    complete(a, 40)  # median 40; b (30 s in) needs 10; two to start: slots free at 0 -> 40, 10 -> 50
    start(c, 40)
    # b took 35 s for 6 of 9 epochs: 17.5 s to go at its pace; c (no epoch yet) 40 - 5 = 35;
    # one to start: 17.5 -> 57.5.
    result(b, 45, _epoch(6, 35.0))
    complete(b, 45)  # stopped by the scheduler: median 37.5; c needs 32.5, d 37.5 from now
    start(d, 50)
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\nValueError: boom\n")
    d.error_file = str(error)
    now[0] = 60
    cb.on_trial_error(0, trials, d)  # not a duration; c (20 s in) needs 17.5
    d.status = "ERROR"
    c.last_result = {**final, "derived_val_acc": 0.25}
    complete(c, 80)  # nothing left: no ETA
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "search aaaaaaaa [xnor K=2 ucb] (trial 1 of 4) epoch 1/9 stage 1: val_acc 0.404, train_loss 2.300, "
        "4 ops/edge, 5 s",
        "search aaaaaaaa [xnor K=2 ucb] (trial 1 of 4): complete, derived_val_acc 0.404, "
        "genotype b1e04f5e1078; stage ETA ~50.0s (estimate)",
        "search bbbbbbbb [pcnn K=4 ucb] (trial 2 of 4) epoch 6/9 stage 2: val_acc 0.404, train_loss 2.300, "
        "4 ops/edge, 35 s; stage ETA ~57.5s (estimate)",
        "search bbbbbbbb [pcnn K=4 ucb] (trial 2 of 4): stopped early by the scheduler after epoch 6 "
        "(pruned); stage ETA ~37.5s (estimate)",
        f"search dddddddd [xnor K=2 ucb] (trial 4 of 4): FAILED: ValueError: boom (full error: {error}); "
        "stage ETA ~17.5s (estimate)",
        "search cccccccc [xnor K=2 ucb] (trial 3 of 4): complete, derived_val_acc 0.250, "
        "genotype b1e04f5e1078",
    ]
    assert cb.tracker.states == {
        "aaaaaaaa": State.COMPLETE,
        "bbbbbbbb": State.PRUNED,
        "dddddddd": State.FAILED,
        "cccccccc": State.COMPLETE,
    }

    # What a restored experiment's tuner.pkl brings back: numbers from Tune's trial order, no clock
    # readings of the old process (no ETA before a trial ends in the new one).
    restored = pickle.loads(pickle.dumps(cb))
    assert restored._stage is None and restored.total == 4
    assert restored._label(c, trials) == "search cccccccc [xnor K=2 ucb] (trial 3 of 4)"
    c.status = "RUNNING"
    assert restored.stage.eta_text(trials) == ""
    # A callback pickled before ``total`` existed numbers its trials without a total.
    old = pickle.loads(pickle.dumps(cb))
    del old.__dict__["total"]
    assert old._label(a, trials) == "search aaaaaaaa [xnor K=2 ucb] (trial 1)"


def test_searcher_drops_only_the_slow_space_warning_when_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's OptunaSearch warns when the define-by-run space takes over 1 s (on a busy machine, the
    sampler's SQLite writes); the threshold is lowered here so that every suggestion warns."""
    import ray.tune.search.optuna.optuna_search as optuna_search

    monkeypatch.setattr(optuna_search, "DEFINE_BY_RUN_WARN_THRESHOLD_S", -1.0)
    spec = load_study("bnas_smoke")
    for quiet, n in ((False, 1), (True, 0)):
        (tmp_path / str(quiet)).mkdir()
        searcher = study_searcher(spec, optuna_storage(tmp_path / str(quiet)), quiet=quiet)
        searcher.set_search_properties(spec.objectives[0].metric, "max", {})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert "binarization.method" in searcher.suggest("t0")
            warnings.warn("another UserWarning passes", UserWarning, stacklevel=1)
        texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert sum(t.startswith("Define-by-run function") for t in texts) == n, texts
        assert "another UserWarning passes" in texts


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_token_notice_dropped_only_while_quiet() -> None:
    # A handler on Ray's own logger: Ray's "ray" logger does not propagate to the root (no caplog).
    logger, kept = logging.getLogger(TOKEN_AUTH_LOGGER), _Keep()
    notice = f"{TOKEN_AUTH_NOTICE}. Set RAY_AUTH_MODE=disabled to opt out."
    logger.addHandler(kept)
    try:
        with _quiet_token_notice(True):
            logger.warning(notice)
            logger.warning("Token authentication is disabled for this Ray cluster.")
        with _quiet_token_notice(False):
            logger.warning(notice)
        logger.warning(notice)  # the filter is gone afterwards
    finally:
        logger.removeHandler(kept)
    assert kept.messages == [
        "Token authentication is disabled for this Ray cluster.",
        notice,
        notice,
    ]


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def _run_on_terminal(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """run.py with stdout and stderr on a pseudo-terminal, as a user at a terminal runs it: colorama's
    exit hook writes ``ESC[0m`` only to a terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(RUN_PY), *args],
        cwd=cwd,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        end_group(proc)  # only if it hung: what is left of its process group
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.platform
def test_local_study_console_on_a_terminal(tmp_path: Path, fake_cifar_root: Path) -> None:
    """A local cluster (run.py starts it), output on a terminal: trial n of N on every trial line, an ETA
    once a trial has ended, and no Ray token notice, UserWarning or escape sequence."""
    settings = [
        "trials=2",
        "fixed.search.ops=[skip_connect,max_pool_3x3]",
        "fixed.reduction.epochs_per_stage=3",
        "fixed.search.max_batches_per_epoch=3",
        "fixed.data.train_subset=192",
        "fixed.data.test_subset=100",
    ]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = smoke_args(
        tmp_path / "study", uri, fake_cifar_root, "--no-dashboard", "--stage", "search", settings=settings
    )
    rc, out = _run_on_terminal(args, tmp_path, timeout=400)
    assert rc == 0, out[-4000:]
    assert "\x1b" not in out, repr(out[-300:])
    assert "Token authentication is enabled" not in out and "UserWarning" not in out, out[-4000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("search ")]
    ends = [ln for ln in lines if ": complete" in ln or "(pruned)" in ln or "FAILED" in ln]
    epochs = [ln for ln in lines if ln not in ends]
    assert len(ends) == 2 and len(epochs) == 6, lines
    assert all("(trial 1 of 2)" in ln or "(trial 2 of 2)" in ln for ln in lines), lines
    assert not any("stage ETA" in ln for ln in lines[: lines.index(ends[0])]), lines  # nothing to go by yet
    assert "; stage ETA ~" in ends[0] and ends[0].endswith("(estimate)"), ends[0]
    assert "stage ETA" not in ends[1], ends[1]  # the stage's last trial: nothing left


@pytest.mark.platform
def test_smoke_study_console_numbers_its_trials(smoke_study: SmokeStudy) -> None:
    """The session's smoke study (``--quiet``, 3 search trials, 4 retrainings through ``--address``)."""
    out = smoke_study.stdout
    assert "\x1b" not in out and "UserWarning" not in out and "Token authentication is enabled" not in out
    searches = [ln for ln in out.splitlines() if ln.startswith("search ")]
    retrains = [ln for ln in out.splitlines() if ln.startswith("retrain ") and "(trial" in ln]
    jobs = int(out.split(" seed(s) -> ")[1].split(" trial(s)")[0])  # "retrain: 2 genotype(s) x 2 ..."
    for stage, n in ((searches, 3), (retrains, jobs)):
        numbers = sorted(ln.split("(trial ")[1].split(")")[0] for ln in stage)
        assert numbers == sorted(f"{i} of {n}" for i in range(1, n + 1)), stage
        assert "stage ETA ~" in stage[0] and "stage ETA" not in stage[-1], stage


def test_one_line_trial_errors_drops_tunes_repeats_and_shortens_the_rest() -> None:
    """Without --ray-logs a failing trial is the console's FAILED line: Tune's traceback of it is
    dropped, another multi-line warning of its loggers becomes one line; with --ray-logs all stay."""
    import logging

    from bnas.platform.callbacks import TUNE_ERROR_LOGGERS, one_line_trial_errors

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    log, keep = logging.getLogger(TUNE_ERROR_LOGGERS[0]), Keep()
    log.addHandler(keep)
    try:
        raise OSError(28, "No space left on device")
    except OSError as e:
        error = e
    try:
        with one_line_trial_errors(True):
            log.error("Trial task failed for trial search_trial_1", exc_info=error)
            log.warning(
                "Something else failed:\nTraceback (most recent call last):\n  File x\nValueError: boom"
            )
            log.error("Checkpoint failed", exc_info=error)
        assert [r.getMessage() for r in keep.records] == [
            "Something else failed: ValueError: boom",
            "Checkpoint failed OSError: [Errno 28] No space left on device",
        ]
        assert all(r.exc_info is None for r in keep.records)
        keep.records.clear()
        with one_line_trial_errors(False):
            log.error("Trial task failed for trial search_trial_1", exc_info=error)
        assert [r.exc_info is not None for r in keep.records] == [True]
        assert not log.filters  # taken off again
    finally:
        log.removeHandler(keep)
