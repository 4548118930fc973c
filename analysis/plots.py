"""Study-level pictures for the report (matplotlib only). Cell drawings and the reduction history
live in :mod:`bnas.visualize` (one implementation shared with the platform).

Every function takes plain data (DataFrames, dicts) and returns a :class:`~matplotlib.figure.Figure`;
an empty input gives a figure that says so rather than an error, so a study that is still running
gets a report too. Figures are made with matplotlib's object API (``Figure``, no pyplot), so saving
them (``fig.savefig``) works headless without switching the process's global backend, and nothing
stays registered with pyplot afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from bnas.platform.tracking_schema import Metric, State

#: Metric-history columns (:meth:`analysis.loader.StudyRuns.metric_history`) drawn as search curves.
VAL_ACC, OPS, STAGE = Metric.VAL_ACC, Metric.OPS_PER_EDGE, Metric.STAGE

POINT_STYLES = {
    "search": {"marker": "o", "color": "#1f5fa8", "label": "derived (binary)"},
    "full precision": {"marker": "s", "color": "#a6470b", "label": "full precision"},
    "reference": {"marker": "D", "color": "#41ab5d", "label": "reference genotype"},
}


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_pareto(points: pd.DataFrame, acc_label: str = "retrained test accuracy") -> Figure:
    """Accuracy against packed model size, the non-dominated points joined by the front.

    ``points`` columns: ``label``, ``packed_bytes``, ``acc``, ``acc_std`` (may be NaN), ``category``
    (``search``, ``full precision`` or ``reference``) and ``pareto`` (bool).
    """
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    if points.empty:
        _empty(ax, "no architecture has both an accuracy and a packed size yet")
        ax.set_title("Accuracy vs packed model size")
        return fig
    kib = points["packed_bytes"] / 1024.0
    for cat, style in POINT_STYLES.items():
        sel = points["category"] == cat
        if not sel.any():
            continue
        err = points.loc[sel, "acc_std"].fillna(0.0)
        ax.errorbar(
            kib[sel],
            points.loc[sel, "acc"],
            yerr=err,
            fmt=style["marker"],
            color=style["color"],
            ms=7,
            capsize=3,
            label=style["label"],
            zorder=3,
        )
    front = points[points["pareto"]].sort_values("packed_bytes")
    if len(front):
        # The front as a staircase: each point is best until a larger model is more accurate.
        xs, ys = [], []
        for _, r in front.iterrows():
            if xs:
                xs.append(r["packed_bytes"] / 1024.0)
                ys.append(ys[-1])
            xs.append(r["packed_bytes"] / 1024.0)
            ys.append(r["acc"])
        ax.plot(xs, ys, "-", color="#888888", lw=1.2, zorder=2, label="Pareto front")
        ax.scatter(
            front["packed_bytes"] / 1024.0,
            front["acc"],
            s=150,
            facecolors="none",
            edgecolors="#d62728",
            lw=1.4,
            zorder=4,
            label="non-dominated",
        )
    for _, r in points.iterrows():
        ax.annotate(
            r["label"],
            (r["packed_bytes"] / 1024.0, r["acc"]),
            textcoords="offset points",
            xytext=(6, 5),
            fontsize=8,
        )
    if kib.max() / max(kib.min(), 1e-9) > 8:
        ax.set_xscale("log")
    ax.set_xlabel("packed model size (KiB: 1 bit per binary weight, 32 bits for the rest)")
    ax.set_ylabel(acc_label)
    # Accuracies that differ only in float noise (1e-9, e.g. all at chance) would otherwise get an
    # axis offset ("+1e-1") and look like a spread: show plain values, widened to at least 0.02.
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    lo, hi = ax.get_ylim()
    if hi - lo < 0.02:
        mid = (hi + lo) / 2
        ax.set_ylim(mid - 0.01, mid + 0.01)
    ax.set_title("Accuracy vs packed model size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_search_curves(curves: dict[str, pd.DataFrame], states: dict[str, str] | None = None) -> Figure:
    """Super-network validation accuracy (top) and operations left per edge (bottom) per epoch.

    ``curves`` maps a trial label to its metric history (columns ``step`` = global epoch,
    ``val_acc``, ``stage``, ``ops_per_edge``); a dotted vertical line marks each stage boundary
    (after the last epoch of a stage), drawn once when all trials share them. Trials that did not
    complete are drawn dashed, with their state in the legend.
    """
    states = states or {}
    fig = Figure(figsize=(8, 6.2))
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    curves = {k: v for k, v in curves.items() if not v.empty}
    if not curves:
        _empty(ax1, "no search trial has reported an epoch yet")
        _empty(ax2, "")
        ax1.set_title("Search curves")
        return fig
    cmap = matplotlib.colormaps["tab10"]
    boundaries: dict[str, list[float]] = {}
    for i, (label, df) in enumerate(curves.items()):
        color = cmap(i % 10)
        state = states.get(label, "")
        ls = "-" if state in ("", State.COMPLETE) else "--"
        name = label if state in ("", State.COMPLETE) else f"{label} ({state})"
        if VAL_ACC in df and df[VAL_ACC].notna().any():
            ax1.plot(df["step"], df[VAL_ACC], ls, marker="o", ms=3, color=color, label=name)
        if OPS in df and df[OPS].notna().any():
            ax2.plot(df["step"], df[OPS], ls, marker="o", ms=3, color=color, label=name)
        if STAGE in df and df[STAGE].notna().any():
            st = df[["step", STAGE]].dropna()
            changes = st["step"][st[STAGE].diff().fillna(0) > 0]
            boundaries[label] = [float(s) - 0.5 for s in changes]
    shared = len({tuple(b) for b in boundaries.values()}) == 1
    for i, bs in enumerate(boundaries.values()):
        if shared and i > 0:
            break
        for b in bs:
            for ax in (ax1, ax2):
                ax.axvline(b, color="#777777" if shared else cmap(i % 10), ls=":", lw=1, alpha=0.8)
    ax1.set_ylabel("super-network val_acc")
    ax1.set_title("Search curves (dotted lines: reduction stage boundaries)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2 if len(curves) > 6 else 1, loc="best")
    ax2.set_ylabel("ops per edge\n(while training)")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("super-network epoch")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_retrain_curves(curves: dict[str, pd.DataFrame], chance: float | None = None) -> Figure:
    """Retraining test accuracy per epoch, one line per (genotype, seed) run; ``chance`` (1/classes)
    as a dotted line, so a retraining that never left it is visible as such.

    ``curves`` maps a label (``<digest> s<seed>``) to its metric history (columns ``step`` = epoch,
    ``test_acc``, ``train_loss``).
    """
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    curves = {k: v for k, v in curves.items() if not v.empty and Metric.TEST_ACC in v}
    if not curves:
        _empty(ax, "no retraining has reported an epoch yet")
        ax.set_title("Retraining curves")
        return fig
    cmap = matplotlib.colormaps["tab10"]
    digests = sorted({label.split()[0] for label in curves})
    for label, df in sorted(curves.items()):
        color = cmap(digests.index(label.split()[0]) % 10)  # one colour per genotype, seeds alike
        ax.plot(df["step"], df[Metric.TEST_ACC], "-", marker="o", ms=3, color=color, label=label)
    if chance is not None:
        ax.axhline(chance, color="#777777", ls=":", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xlabel("retraining epoch")
    ax.set_ylabel("test accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Retraining curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(curves) > 6 else 1, loc="best")
    fig.tight_layout()
    return fig


def plot_optuna_history(
    trials: pd.DataFrame, direction: str = "maximize", target: str = "objective"
) -> Figure:
    """Optuna's optimization history: each finished trial's objective and the best so far.

    ``trials`` columns: ``number``, ``value`` (NaN unless complete) and ``state`` (Optuna's state
    name); pruned and failed trials are marked along the bottom.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.set_title("Optuna optimization history")
    if trials.empty:
        _empty(ax, "the Optuna study has no trials")
        return fig
    done = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()].sort_values("number")
    if len(done):
        ax.scatter(
            done["number"], done["value"], color="#1f5fa8", zorder=3, label=f"{target} (complete trial)"
        )
        best = done["value"].cummax() if direction == "maximize" else done["value"].cummin()
        ax.step(done["number"], best, where="post", color="#d62728", label="best so far")
    other = trials[trials["state"] != "COMPLETE"]
    if len(other):
        # No objective value: mark them along the bottom edge (x in data, y in axes coordinates).
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        for state, marker in (("PRUNED", "v"), ("FAIL", "x"), ("RUNNING", "."), ("WAITING", ".")):
            sel = other[other["state"] == state]
            if len(sel):
                ax.scatter(
                    sel["number"],
                    [0.04] * len(sel),
                    marker=marker,
                    color="#777777",
                    transform=bottom,
                    label=f"{state.lower()} (no value)",
                    clip_on=False,
                )
    ax.set_xlim(trials["number"].min() - 0.5, trials["number"].max() + 0.5)
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(target)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_param_importances(importances: dict[str, float], target: str = "objective") -> Figure:
    """Optuna parameter importances as horizontal bars (largest on top)."""
    fig = Figure(figsize=(7, 0.45 * max(len(importances), 2) + 1.2))
    ax = fig.subplots()
    ax.set_title(f"Parameter importances for {target}")
    if not importances:
        _empty(ax, "no importances")
        return fig
    items = sorted(importances.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items], color="#1f5fa8")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlabel("importance (fANOVA; sums to 1)")
    ax.set_xlim(0, max(1.0, max(v for _, v in items) * 1.15))
    fig.tight_layout()
    return fig


def plot_search_cost(cost: pd.DataFrame) -> Figure:
    """Per trial: the search's own time and the wall time of its run around it (start-up, tracking)."""
    fig = Figure(figsize=(7.5, 0.4 * max(len(cost), 2) + 2.0))
    ax = fig.subplots()
    ax.set_title("Search cost per trial")
    if cost.empty:
        _empty(ax, "no search trial yet")
        return fig
    labels = [f"{t} ({s})" for t, s in zip(cost["trial_id"], cost["state"])]
    search = cost["search_time_s"]
    wall = cost["wall_s"].fillna(0.0)
    known = search.notna()
    ax.barh(labels, search.fillna(0.0), color="#1f5fa8", label="search (device time)")
    ax.barh(
        labels,
        (wall - search.fillna(0.0)).clip(lower=0).where(known, 0.0),
        left=search.fillna(0.0),
        color="#bcd7f0",
        label="rest of the run's wall time",
    )
    if (~known).any():
        ax.barh(
            [lb for lb, k in zip(labels, known) if not k],
            wall[~known],
            color="white",
            edgecolor="#1f5fa8",
            hatch="//",
            label="run wall time (stopped before reporting its search time)",
        )
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def fmt_bytes(n: float) -> str:
    """``23788`` -> ``23.2 KiB``."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)
