"""The run skeleton shared by the search and the retraining: folder, checkpoint, seeds, random state, timing.

A run (one search, one retraining) is a loop of epochs over the same parts:

* :class:`RunFolder` -- the output folder: ``config.json``, ``checkpoint.pt`` (after every epoch, or
  every N epochs where the run says so),
  ``metrics.jsonl`` (rewritten from the run's state after every epoch, so a resumed run or a
  ``resume=False`` rerun never holds an epoch twice), ``final.json``. Every write is atomic
  (:mod:`bnas.runtime`). A checkpoint belongs to a run by ONE identity rule: the settings that change
  results (:meth:`~bnas.config.ExperimentConfig.result_identity`; device, threads and where the data
  lives may change between sessions) plus, for a retraining, the genotype digest. A checkpoint of
  another run is refused with a :class:`~bnas.errors.ConfigError` that names the folder, every
  differing setting with both values, and what to do.
* Checkpoints hold only tensors, numbers, strings, lists, tuples and dicts and are read with
  ``torch.load(..., weights_only=True)``: a file holding anything else (a pickled callable could run
  code while loading) is refused with a :class:`~bnas.errors.ConfigError` before anything runs.
* :func:`derive_seed` -- the one seed derivation: every position of a run (stage, epoch, stream)
  gets its own seed, independent of what ran before, which is what makes resumed runs repeat
  uninterrupted ones.
* :func:`isolated_rng` -- a run seeds and draws from the global random generators (Python, NumPy,
  torch CPU and CUDA) inside this block; the caller's generators are restored afterwards.
* :class:`PhaseTimer` -- wall seconds per named phase (exclusive: a nested phase pauses its parent,
  so the phases sum to the timed wall time). On CUDA it synchronizes at phase boundaries only.

Progress lines use :class:`bnas.runtime.Progress` (``epoch i/n | details | elapsed, eta``).
Core only: no Ray, no MLflow.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnas.errors import ConfigError
from bnas.runtime import atomic_save, atomic_write_json, atomic_write_text

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
FINAL = "final.json"
CONFIG = "config.json"

# --------------------------------------------------------------------------------------------
# Seeds and random state
# --------------------------------------------------------------------------------------------


def derive_seed(base: int, *parts: int) -> int:
    """The seed of one position of a run, a function of ``(base, *parts)`` alone [D].

    ``s_0 = base``, ``s_{i+1} = (s_i * 1_000_003 + part_i + 7_919) mod 2**62`` (1_000_003 is prime,
    7_919 keeps a zero part from mapping ``s`` to a multiple of the prime). The first part names a
    stream (data order, augmentation, initialisation, ...), the rest the position (stage, epoch).
    """
    s = int(base)
    for p in parts:
        s = (s * 1_000_003 + int(p) + 7_919) % 2**62
    return s


@contextlib.contextmanager
def isolated_rng(device: torch.device | None = None) -> Iterator[None]:
    """Run the block with the global random generators to itself; restore the caller's afterwards.

    Saves and restores Python's ``random``, NumPy's global generator, torch's CPU generator and, when
    ``device`` is a CUDA device, that device's generator (``torch.random.fork_rng``). The block may
    seed them freely (a run does, at every position) without changing what the caller draws next.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices: list[int] = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


# --------------------------------------------------------------------------------------------
# Phase timing
# --------------------------------------------------------------------------------------------


class PhaseTimer:
    """Wall seconds per named phase, for finding where a run spends its time.

    ``with timer("weight_step"): ...`` adds the block's wall time to ``totals["weight_step"]``.
    Phases nest exclusively: entering a phase pauses the running one, so every second lands in
    exactly one phase and the totals sum to the wall time spent inside phases. On a CUDA device
    the timer synchronizes at each phase boundary (and nowhere else), so asynchronous kernels are
    charged to the phase that launched them. ``names`` (when given) lists the phases allowed; any
    other name is a programming error (``ValueError``), which keeps typos out of the reports.
    """

    def __init__(
        self,
        device: torch.device | None = None,
        names: Sequence[str] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.totals: dict[str, float] = {n: 0.0 for n in names or ()}
        self._names = set(names) if names is not None else None
        self._clock = clock
        self._stack: list[str] = []
        self._mark = 0.0
        self._device = device if device is not None and device.type == "cuda" else None

    def _switch(self) -> None:
        """Charge the time since the last boundary to the innermost running phase."""
        if self._device is not None:
            torch.cuda.synchronize(self._device)
        now = self._clock()
        if self._stack:
            name = self._stack[-1]
            self.totals[name] = self.totals.get(name, 0.0) + (now - self._mark)
        self._mark = now

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._names is not None and name not in self._names:
            raise ValueError(f"unknown phase {name!r}; known: {', '.join(sorted(self._names))}")
        self._switch()
        self._stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self._stack.pop()

    def snapshot(self) -> dict[str, float]:
        """A copy of the totals so far (for per-stage differences, see :meth:`since`)."""
        return dict(self.totals)

    def since(self, before: Mapping[str, float]) -> dict[str, float]:
        """Seconds per phase spent after ``before`` (a :meth:`snapshot`) was taken."""
        return {k: v - before.get(k, 0.0) for k, v in self.totals.items()}

    def add(self, totals: Mapping[str, float]) -> None:
        """Add earlier sessions' totals (a resumed run reports the whole run's phase times)."""
        for k, v in totals.items():
            self.totals[k] = self.totals.get(k, 0.0) + float(v)


def timed_batches(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    timer: PhaseTimer,
    device: torch.device,
    cap: int | None = None,
    phase: str = "data",
    fetch_past_cap: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``cap`` (all when None) batches of ``loader``, moved to ``device``; timed as ``phase``.

    Like the ``for i, batch in enumerate(loader): if i >= cap: break`` loops it replaces, it fetches
    (and drops) the batch after the cap before stopping: that fetch draws augmentation from the
    dataset's random stream, which a loader that is not reseeded before its next pass (the sub-network
    loader) carries on, so skipping it would change results. A loader that is reseeded before every
    pass loses nothing by skipping it: pass ``fetch_past_cap=False`` (same results, one batch less).
    """
    it = iter(loader)
    i = 0
    while True:
        with timer(phase):
            if cap is not None and i >= cap and not fetch_past_cap:
                return
            try:
                x, y = next(it)
            except StopIteration:
                return
            if cap is not None and i >= cap:
                return
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        i += 1
        yield x, y


# --------------------------------------------------------------------------------------------
# Optimizers whose parameters go away
# --------------------------------------------------------------------------------------------


def prune_optimizer(optimizer: torch.optim.Optimizer, alive: Iterable[torch.nn.Parameter]) -> int:
    """Remove from ``optimizer`` every parameter not in ``alive``, with its state; return how many.

    The kept parameters keep their order, their state (momentum buffers) and their group's
    hyper-parameters, so the optimizer goes on exactly as if the removed ones had never been there.
    """
    keep = {id(p) for p in alive}
    removed = 0
    for group in optimizer.param_groups:
        kept = []
        for p in group["params"]:
            if id(p) in keep:
                kept.append(p)
            else:
                optimizer.state.pop(p, None)
                removed += 1
        group["params"] = kept
    return removed


# --------------------------------------------------------------------------------------------
# The run folder and its checkpoint
# --------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return "<unset>" if value is _MISSING else json.dumps(value, default=str)


_MISSING = object()


def identity_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: <saved> in the checkpoint, <current> now`` for every key whose values differ."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: {_show(saved.get(k, _MISSING))} in the checkpoint, {_show(current.get(k, _MISSING))} now"
        for k in keys
        if saved.get(k, _MISSING) != current.get(k, _MISSING)
    ]


#: What loading a checkpoint's entries into rebuilt objects raises when the file has this run's identity
#: but not its shapes or keys (torch's load_state_dict: RuntimeError; a missing or mistyped entry: the rest).
UNLOADABLE = (KeyError, TypeError, ValueError, RuntimeError, AttributeError)


def checked_count(name: str, value: Any, high: int | None = None) -> int:
    """A checkpoint's counter (an epoch, a stage) as an int in [0, ``high``], else ValueError (one of
    :data:`UNLOADABLE`): an edited ``epoch: -5`` would otherwise resume at -4 and log epochs twice."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < 0
        or (high is not None and value > high)
    ):
        bound = f"an integer in [0, {high}]" if high is not None else "an integer >= 0"
        raise ValueError(f"its {name} is {value!r}, not {bound}")
    return value


def unloadable(e: BaseException) -> str:
    """The problem text of a checkpoint that has this run's identity but does not load into its objects
    (edited, damaged, or written by a version with other tensor shapes)."""
    why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return (
        f"{CHECKPOINT} has this run's settings but does not load into it ({type(e).__name__}: {why}); it may "
        "be damaged or edited: delete it or pass resume=False (--no-resume) to start over"
    )


class RunFolder:
    """The output folder of one run (see the module docstring).

    ``identity`` is the flat dict that decides whether a checkpoint belongs to this run; ``outputs``
    names the run's other result files, removed with the standard ones when a run starts over.
    """

    def __init__(self, path: str | Path, identity: Mapping[str, Any], outputs: Sequence[str] = ()) -> None:
        self.path = Path(path).absolute()
        self.identity = dict(identity)
        self.outputs = (CHECKPOINT, METRICS, FINAL, *outputs)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint of this run, or None when the folder holds none.

        Raises :class:`ConfigError` when the file holds anything but plain data (``weights_only``)
        or belongs to another run (the message lists every differing setting).
        """
        path = self.checkpoint_path
        if not path.is_file():
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch names a refused object "Unsupported global: GLOBAL module.name".
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            if found is None:  # not a pickle of plain data at all (damaged, or another file)
                raise ConfigError(
                    f"{CHECKPOINT} cannot be read as plain data (tensors, numbers, strings, lists, dicts); "
                    "it may be damaged or not a checkpoint; delete it or pass resume=False (--no-resume) "
                    "to start over",
                    source=str(self.path),
                ) from None
            raise ConfigError(
                f"{CHECKPOINT} holds {found.group(1)}, which is not plain data (tensors, numbers, strings, "
                "lists, dicts), and is refused: loading it could run code; delete it or pass resume=False "
                "(--no-resume) to start over",
                source=str(self.path),
            ) from None
        except Exception as e:  # damaged or not a checkpoint at all: struct, zip, EOF, OS errors ...
            why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
            raise ConfigError(
                f"{CHECKPOINT} cannot be read ({why}); it may be damaged or not a checkpoint; "
                "delete it or pass resume=False (--no-resume) to start over",
                source=str(self.path),
            ) from None
        saved = ckpt.get("identity") if isinstance(ckpt, dict) else None
        if not isinstance(saved, dict):
            raise ConfigError(
                f"{CHECKPOINT} has no run identity (written by an older version); pass resume=False "
                "(--no-resume) to start over, or use another output folder",
                source=str(self.path),
            )
        diff = identity_diff(saved, self.identity)
        if diff:
            raise ConfigError(
                f"{CHECKPOINT} is the checkpoint of a different run ({'; '.join(diff)}); resume with the "
                "same settings, use another output folder, or pass resume=False (--no-resume) to start "
                "over here",
                source=str(self.path),
            )
        return ckpt

    def open(self, resume: bool, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create the folder; return the checkpoint to resume from, or None after clearing old results.

        The checkpoint is read (and checked) before anything else is written, so a refused resume
        leaves the folder as it was. ``config`` (the resolved settings) goes to ``config.json``.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(
                "is a file, not a folder; give the output folder of the run", source=str(self.path)
            )
        ckpt = self.read_checkpoint() if resume else None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if ckpt is None:
                for name in self.outputs:
                    (self.path / name).unlink(missing_ok=True)
            atomic_write_json(dict(config), self.path / CONFIG)
        except OSError as e:  # read-only, full, not permitted: before any work, one line
            raise ConfigError(
                f"cannot write the run's files here ({e.strerror or e}); choose another output folder",
                source=str(self.path),
            ) from None
        return ckpt

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` (plain data only) with this run's identity, atomically."""
        atomic_save({**state, "identity": self.identity}, self.checkpoint_path)

    def write_metrics(self, metrics: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` as one line per epoch of ``metrics`` (the run's whole history)."""
        atomic_write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics), self.path / METRICS)

    def end_epoch(self, state: Mapping[str, Any] | None, metrics: Sequence[Mapping[str, Any]]) -> None:
        """The checkpoint first (unless ``state`` is None: an epoch between checkpoints), then the
        metrics file. Between checkpoints ``metrics.jsonl`` may run ahead of ``checkpoint.pt``; a
        resumed run rewrites it from the checkpoint's metrics, so it still never holds an epoch twice."""
        if state is not None:
            self.save_checkpoint(state)
        self.write_metrics(metrics)

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(obj, self.path / name)

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(text, self.path / name)

    def write_final(self, final: Mapping[str, Any]) -> Path:
        return self.write_json(FINAL, dict(final))
