"""The report's HTML page: one self-contained file, pictures embedded as base64 PNG.

:class:`Report` holds what :func:`analysis.report.build_report` gathered (frames, pictures, notes);
:func:`render` lays it out in the report's section order and reads nothing else.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.loader import StudyRuns
from analysis.tables import SIZE_COLUMNS, runs_of_kind
from bnas.platform.tracking_schema import RETRAIN, SEARCH, is_number


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    dir: Path
    html: Path
    pictures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    logged_to: str | None = None  # the parent run id the folder was logged to
    frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    #: Kendall tau of the search's proxies vs the retrained accuracy (analysis.proxy.proxy_correlations).
    proxy: dict[str, Any] = field(default_factory=dict)


def png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def fmt_table(df: pd.DataFrame, max_rows: int = 200) -> str:
    if df.empty:
        return "<p class='note'>(empty)</p>"
    shown = df.head(max_rows).copy()
    for c in shown.columns:
        if c in SIZE_COLUMNS:
            shown[c] = shown[c].map(lambda v: f"{v:,.0f}" if is_number(v) else "")
    return shown.to_html(
        index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, classes="t", escape=True
    )


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table.t{border-collapse:collapse;font-size:.82em;display:block;overflow-x:auto}
table.t th,table.t td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
table.t th{background:#f5f5f5} .note{color:#8a5a00;background:#fff8e6;padding:.4em .7em;border-radius:4px}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} .meta{color:#666;font-size:.9em}
"""


def dataset_line(d: dict[str, Any]) -> str:
    """The report's dataset line from the parent run's ``dataset.*`` params (``{}``: not recorded)."""
    if not d:
        return "dataset: not recorded (a study run before datasets were recorded on the parent run)"
    official = d.get("dataset.official")
    copy = ""
    if official is not None:
        copy = (
            " (official files)"
            if official
            else (
                " (a copy that differs from the official release: not exactly comparable to published "
                "figures)"
            )
        )
    keys = ("dataset.train_subset", "dataset.test_subset")
    sizes = [(k.split(".")[-1].replace("_", " "), d.get(k)) for k in keys]
    subsets = ", ".join(f"{what} {n}" for what, n in sizes if is_number(n))
    side = d.get("dataset.image_size")
    return (
        f"dataset: {d.get('dataset.name')}{copy} at {d.get('dataset.root', '?')}; "
        f"{side}x{side} px, {d.get('dataset.num_classes')} classes"
        + (f", {subsets}" if subsets else "")
        + f"; fingerprint {d.get('dataset.fingerprint')}"
    )


def render(
    data: StudyRuns,
    rep: Report,
    dataset: dict[str, Any],
    acc_desc: str,
    cost_summary: dict[str, Any],
    oview: dict[str, Any] | None,
    onote: str,
    best_info: str,
) -> str:
    """The whole page: every picture of ``rep`` embedded, every frame as a table."""
    e = html.escape

    def img(name: str, alt: str) -> str:
        p = rep.pictures.get(name)
        return f"<img alt='{e(alt)}' src='data:image/png;base64,{png_b64(p)}'>" if p else ""

    def note(text: str) -> str:
        return f"<p class='note'>{e(text)}</p>" if text else ""

    f = rep.frames
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs = f["runs"]
    n_s = len(runs_of_kind(runs, SEARCH)) if len(runs) else 0
    n_r = len(runs_of_kind(runs, RETRAIN)) if len(runs) else 0
    board_cols = [c for c in f["leaderboard"].columns if c not in ("retrain_run_ids", "search_run_id")]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>BNAS study {e(data.study)}</title><style>{_CSS}</style></head><body>",
        f"<h1>BNAS study <code>{e(data.study)}</code></h1>",
        f"<p class='meta'>MLflow store {e(data.tracking_uri)}, experiment {e(data.experiment_id)}, "
        f"parent run {e(str(data.parent_run_id))}; study folder {e(str(data.out_dir))}; "
        f"{n_s} search run(s), {n_r} retraining run(s); generated {now}.</p>",
        f"<p class='meta'>{e(dataset_line(dataset))}</p>",
        *[note(n) for n in rep.notes],
        "<h2>Leaderboard of derived architectures</h2>",
        "<p>One row per genotype (and retraining binarization). <b>test_acc</b>: retrained test accuracy, "
        "mean / sample std / count over seeds; <b>derived_val_acc</b>: the search's shared-weight accuracy "
        "of the derived cells; sizes of the retraining network (packed: 1 bit per binary weight). "
        "<code>setting.*</code> / <code>space.*</code>: the settings of the search run that produced it.</p>",
        fmt_table(f["leaderboard"][board_cols] if len(f["leaderboard"]) else f["leaderboard"]),
        "<h2>Pareto front: accuracy vs packed size</h2>",
        f"<p>Accuracy: {e(acc_desc or 'n/a')}. Circled points are non-dominated (no other architecture is "
        "at least as accurate and at most as large). Full-precision retrainings and reference genotypes "
        "appear when they were retrained.</p>",
        img("pareto", "Pareto front"),
        fmt_table(f["pareto"]),
        "<h2>Search curves</h2>",
        img("search_curves", "search curves"),
        fmt_table(f["trials"]),
        "<h2>Retraining curves</h2>",
        "<p>Test accuracy per epoch of every retraining run (one colour per genotype; dotted: chance).</p>",
        img("retrain_curves", "retraining curves"),
        "<h2>Search quality: does the proxy rank as retraining does?</h2>",
        f"<p>{e(rep.proxy.get('verdict', ''))} One point per retrained genotype: its search trial's "
        "proxy vs its retrained test accuracy (mean over seeds, the search's binarization only).</p>",
        img("proxy_correlation", "proxy vs retrained accuracy"),
        fmt_table(f["proxy_correlation"]) if "proxy_correlation" in f else "",
        "<h2>Best architecture</h2>",
        f"<p>{e(best_info) if best_info else 'No finished search trial yet.'}</p>",
        "<p>What each reduction stage decided on (<code>diagnostics.json</code>): order_rho, Spearman's "
        "rho between a sampled sub-network's score and its evaluation position (far from 0: later ones "
        "scored higher because they trained on better weights); snr, the spread of the sub-network scores "
        "over the standard error of one score (near 1: the ranking is validation noise); "
        "removed_lowest_alpha, the share of drops that alpha alone would have made; alpha/beta entropy "
        "(1 = uniform: the architecture has not moved); the parameter-free share of the argmax cells.</p>"
        if "best_diagnostics" in f
        else "",
        fmt_table(f["best_diagnostics"]) if "best_diagnostics" in f else "",
        img("reduction_history_normal", "reduction history, normal cell"),
        img("reduction_history_reduce", "reduction history, reduction cell"),
        img("best_normal_cell", "best normal cell"),
        img("best_reduce_cell", "best reduction cell"),
        "<h2>Optuna</h2>",
    ]
    if oview is None:
        parts.append(note(onote))
    else:
        parts += [
            f"<p class='meta'>storage {e(onote)}; direction {e(oview['direction'])}.</p>",
            note(oview["note"]),
            img("optuna_importances", "parameter importances"),
            img("optuna_history", "optimization history"),
        ]
    cs = cost_summary
    total = (
        f"{cs.get('trials', 0)} search trial(s) ({cs.get('complete', 0)} complete) used "
        f"{cs.get('total_device_s', 0):.1f} s of device time; their wall times add up to "
        f"{cs.get('total_trial_wall_s', 0):.1f} s and the retraining runs' to "
        f"{cs.get('retrain_wall_s', 0):.1f} s (trials run side by side, so these sums can exceed the "
        f"study's span); the study ran "
        f"{cs.get('study_wall_s', math.nan):.1f} s from its first run's start to its last run's end."
        if cs.get("trials")
        else ""
    )
    parts += [
        "<h2>Search cost</h2>",
        f"<p>{e(total)}</p>",
        note(cs.get("note", "")),
        img("search_cost", "search cost"),
        fmt_table(f["search_cost"]),
        "<p class='meta'>Tables as CSV next to this file: "
        + ", ".join(e(p.name) for p in rep.tables.values())
        + ".</p></body></html>",
    ]
    return "\n".join(p for p in parts if p)
