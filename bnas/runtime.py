"""Small helpers every entry point shares: device, seeding, progress/ETA, atomic writes, meters, memory.

Nothing here reads argv or the environment; callers pass what they mean.
"""

from __future__ import annotations

import json
import os
import random
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnas.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Device and seeds
# --------------------------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; ``cpu``; ``cuda``; ``cuda:N``.

    Asking for CUDA on a machine without it raises :class:`~bnas.config.ConfigError` (key ``device``)
    instead of failing later inside a ``.to()`` call.
    """
    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{name!r} was requested but this machine has no usable CUDA device "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use device: cpu or auto",
                key="device",
            )
        index = int(name[5:]) if ":" in name else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"{name!r} does not exist: this machine has {count} CUDA device(s)", key="device"
            )
        return torch.device(name)
    raise ConfigError(f"{name!r} is not valid; use auto, cpu, cuda or cuda:N", key="device")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The global random states (Python, NumPy, torch CPU, CUDA) as checkpoint-friendly values.

    CUDA: with ``device`` None, every device's generator (when CUDA is present); with a ``device``,
    that device's generator only when it is a CUDA device (a CPU run neither touches nor initialises
    CUDA).
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # NumPy's state holds an ndarray: keep plain lists so torch.load(weights_only=True) accepts it.
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if device is None:
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
    elif device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA states only when CUDA is present)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)


# --------------------------------------------------------------------------------------------
# Atomic writes: a crash leaves either the old file or the new one, never half of one
# --------------------------------------------------------------------------------------------


def _atomic_write(path: str | Path, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder and ``os.replace``."""
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(text: str, path: str | Path) -> Path:
    return _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


# --------------------------------------------------------------------------------------------
# Progress and meters
# --------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``1h02m05s``; ``65`` -> ``1m05s``; ``4.2`` -> ``4.2s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Counts finished units (epochs, batches) and formats ``label i/n ... elapsed, eta`` lines.

    The ETA is the mean time per unit finished *in this process* times the units left, so a resumed
    run does not count the units its checkpoint already held as instantaneous.
    """

    def __init__(
        self, total: int, label: str = "epoch", done: int = 0, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.total, self.label, self.clock = total, label, clock
        self.done = self._start_done = done
        self._t0 = clock()

    def update(self, done: int) -> None:
        self.done = done

    @property
    def elapsed(self) -> float:
        return self.clock() - self._t0

    @property
    def eta(self) -> float | None:
        finished = self.done - self._start_done
        if finished <= 0:
            return None
        return self.elapsed / finished * (self.total - self.done)

    def line(self, details: str = "") -> str:
        eta = self.eta
        eta_s = "?" if eta is None else format_duration(eta)
        width = len(str(self.total))
        parts = [f"{self.label} {self.done:>{width}}/{self.total}"]
        if details:
            parts.append(details)
        parts.append(f"{format_duration(self.elapsed)} elapsed, eta {eta_s}")
        return " | ".join(parts)


class AverageMeter:
    """Running mean of a value weighted by batch size."""

    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else float("nan")


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[float]:
    """Top-k accuracies of a batch as fractions in [0, 1] (``logits``: N x classes, ``target``: N)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # N x maxk
    hit = pred.eq(target.view(-1, 1))
    return [hit[:, : min(k, maxk)].any(dim=1).float().mean().item() for k in topk]


def rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MiB.

    Read from /proc: ``getrusage``'s ``ru_maxrss`` survives ``exec`` on Linux, so a run started by a
    bigger parent process would report the parent's peak. Falls back to ``ru_maxrss`` elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
