"""Where the data lives: the one precedence for the dataset folder, and how errors say how to fix it.

Library code never reads the environment. Entry points (``python -m bnas``, ``run.py``, the benchmarks)
call :func:`resolve_data_root` once, with their ``--data-root`` flag, the configuration file's
``data.root`` and ``os.environ``, and write the result into ``data.root``; from then on the library
only uses ``data.root`` (:func:`resolve_root`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: bnas.config imports this package (DATASETS), not the reverse
    from bnas.config import DataConfig

ENV_ROOT = "BNAS_DATA_ROOT"
DEFAULT_ROOT = "data"  # [D] ./data, relative to the working directory of the entry point
PRECEDENCE = (
    f"the --data-root flag, else ${ENV_ROOT}, else data.root in the configuration file, else ./{DEFAULT_ROOT}"
)


def _absolute(raw: str | Path) -> Path:
    # Absolute because Ray trial processes run in their own working directories, where a relative path
    # would point somewhere else.
    return Path(raw).expanduser().resolve()


def resolve_data_root(flag: str | None, configured: str | None, environ: Mapping[str, str]) -> Path:
    """The dataset folder an entry point hands to the library; always absolute.

    The one precedence used everywhere (first one set and non-empty wins):

    1. ``flag`` -- the ``--data-root`` command-line option,
    2. ``environ["BNAS_DATA_ROOT"]``,
    3. ``configured`` -- ``data.root`` from the configuration file,
    4. ``./data``.

    Relative paths are taken relative to the current working directory. Only entry points call this,
    passing ``os.environ``; library code uses :func:`resolve_root`, which reads ``data.root`` alone.
    """
    for raw in (flag, environ.get(ENV_ROOT), configured):
        if raw:
            return _absolute(raw)
    return _absolute(DEFAULT_ROOT)


def resolve_root(cfg: DataConfig) -> Path:
    """``cfg.root`` if set, else ``./data``; always absolute. Never reads the environment.

    Entry points have already applied :func:`resolve_data_root` and written its result to ``data.root``.
    """
    return _absolute(cfg.root or DEFAULT_ROOT)


def root_origin(cfg: DataConfig) -> str:
    """Where :func:`resolve_root` took the path from, for error messages."""
    if cfg.root:
        return "data.root"
    return f"the default ./{DEFAULT_ROOT} (data.root is not set)"


def how_to_fix(extra: str = "") -> str:
    """The remedy sentence of every "dataset not found" error: the precedence, stated once."""
    return (
        f"To fix: point at the folder that holds the dataset{extra}; the commands take it from "
        f"{PRECEDENCE} (library calls use data.root alone)."
    )
