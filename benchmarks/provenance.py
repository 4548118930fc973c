"""What makes a results file reproducible: the commit (and whether the tree had uncommitted changes),
the exact command, the machine and the wall time. Every benchmark writes it into its results."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def provenance(argv: list[str], wall_s: float, script: str | None = None) -> dict[str, Any]:
    """``{"commit", "dirty", "command", "machine", "wall_s", "date"}`` for a run of ``script`` (default:
    the running program) with ``argv``."""
    import torch

    name = script or Path(sys.argv[0]).name
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join(["python", f"benchmarks/{name}", *argv]),
        "machine": f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs{gpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        "wall_s": wall_s,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
