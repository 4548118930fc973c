"""The README's measured results, written from the results files and nothing else.

Each entry of :data:`RESULTS` is a folder under ``docs/results/`` that a benchmark wrote: its
``results.json`` carries the provenance (:mod:`provenance`: commit, exact command, machine, wall time)
and its report (a markdown file) the figures. This script puts them, each under the command that
reproduces it, between the README's markers; ``--check`` says whether the README is current (a test
runs it), so a figure cannot drift from its file.

    python benchmarks/readme_results.py            # rewrite README.md between the markers
    python benchmarks/readme_results.py --check    # exit 1 when README.md is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- results:begin (written by `python benchmarks/readme_results.py` from docs/results/) -->"
END = "<!-- results:end -->"

#: (title, folder under the repository, report file in it), in the README's order.
RESULTS: tuple[tuple[str, str, str], ...] = (
    ("Evidence: searched against random binary architectures", "docs/results/evidence_cpu", "results.md"),
    ("Search signal: the reduction mechanics side by side", "docs/results/search_signal_cpu", "signal.md"),
    (
        "Search cost: the defaults against PC-DARTS's schedule",
        "docs/results/schedules_defaults",
        "schedules.md",
    ),
    ("Super-network step: batched edges against PC-DARTS's network", "docs/results/step_cpu", "step.md"),
    ("torch.compile on CPU: its cost against one default search", "docs/results/compile_cpu", "step.md"),
    ("Timed walkthrough: a fresh clone on a 2-core CPU", "docs/results/walkthrough_cpu", "walkthrough.md"),
    ("Model size at the paper's network size", "docs/results/model_sizes", "sizes.md"),
    ("Hardening: bad inputs through the entry points", "docs/results/hardening_probes", "probes.md"),
)


def _provenance_line(meta: dict[str, Any], folder: str, report: str) -> str:
    dirty = " with uncommitted changes" if meta.get("dirty") else ""
    data = f"{meta['data']}; " if " " in str(meta.get("data", "")) else ""  # a description, not a path
    return (
        f"`{meta['command']}` at commit `{meta['commit'][:7]}`{dirty}; {data}{meta['machine']}; "
        f"{meta['wall_s'] / 60:.1f} min wall; {meta.get('date', 'date not recorded')}. "
        f"Files: [{folder}/]({folder}/{report})."
    )


def _body(report: str) -> list[str]:
    """The report less its own title and provenance line, its headings one level down."""
    out = []
    for line in report.splitlines():
        if line.startswith("# ") or line.startswith("commit "):
            continue
        out.append("#" * 2 + line if line.startswith("## ") else line)
    while out and not out[0].strip():
        out.pop(0)
    return out


def section(repo: Path = REPO) -> str:
    """The text between the markers; a missing results folder is named, not skipped silently."""
    lines = [BEGIN, ""]
    for title, folder, report in RESULTS:
        lines += [f"### {title}", ""]
        path = repo / folder
        if not (path / "results.json").is_file() or not (path / report).is_file():
            lines += [f"Not measured at this commit: `{folder}/results.json` is missing.", ""]
            continue
        meta = json.loads((path / "results.json").read_text())["meta"]
        lines += [_provenance_line(meta, folder, report), "", *_body((path / report).read_text()), ""]
    return "\n".join([*lines, END])


def updated(readme: str, repo: Path = REPO) -> str:
    """``readme`` with the part between the markers regenerated."""
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no results markers ({BEGIN!r} ... {END!r})")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + section(repo) + tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when README.md is not current")
    args = p.parse_args(argv)
    path = REPO / "README.md"
    text = path.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print("README.md results are stale: run python benchmarks/readme_results.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"README.md results written from {', '.join(f for _, f, _ in RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
