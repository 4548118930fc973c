"""Does the search's proxy predict the retrained accuracy? Kendall's tau over the retrained genotypes.

A NAS search ranks candidates by a cheap proxy; what matters is the accuracy after retraining. For
every retrained genotype of a search trial (retraining runs point at their search run through
``bnas.search_run_id``), this module pairs

* the trial's ``proxy_val_acc`` (the derived discrete network fine-tuned a few steps from the shared
  weights, then scored: computed the same way for every reduction strategy, the default objective),
  its ``derived_val_acc`` (the derived discrete cells with the shared weights, no fine-tuning: a
  reducing search ends already discrete, PC-DARTS pays the discretization gap) and its
  ``supernet_val_acc`` (the super-network's own validation accuracy at the end of the search)

with the retrained test accuracy (mean over seeds, retrainings with the search's binarization only:
a full-precision control retraining answers another question), and gives Kendall's rank correlation
tau-b (``scipy.stats.kendalltau``) with its p-value and n. Below :data:`MIN_GENOTYPES` retrained
genotypes the verdict is that it cannot be judged: with n = 3 a tau of 1 happens by chance 1 time in 6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from bnas.platform.tracking_schema import BINARIZATION_SETTING, PARAM_COLUMN, Metric, is_number

#: [D] Fewer retrained genotypes than this: the report says the correlation cannot be judged.
MIN_GENOTYPES = 4
#: The proxies compared with the retrained accuracy: (column, label).
PROXIES = (
    (Metric.PROXY_VAL_ACC, "proxy_val_acc (derived network, fine-tuned)"),
    (Metric.DERIVED_VAL_ACC, "derived_val_acc (derived cells, shared weights)"),
    (Metric.SUPERNET_VAL_ACC, "super-network val_acc"),
)
POINT_COLUMNS = [
    "search_run_id",
    "trial_id",
    "genotype_digest",
    Metric.PROXY_VAL_ACC,
    Metric.DERIVED_VAL_ACC,
    Metric.SUPERNET_VAL_ACC,
    "test_acc",
    "n_seeds",
]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """(tau-b, two-sided p, n) over the pairs where both values are finite (``scipy.stats.kendalltau``);
    tau and p are NaN below 2 pairs or when one side is constant."""
    from scipy.stats import kendalltau

    pts = [(a, b) for a, b in zip(x, y) if is_number(a) and is_number(b)]
    n = len(pts)
    if n < 2 or len({a for a, _ in pts}) < 2 or len({b for _, b in pts}) < 2:
        return math.nan, math.nan, n
    res = kendalltau([a for a, _ in pts], [b for _, b in pts], variant="b")
    return float(res.statistic), float(res.pvalue), n


def proxy_points(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per retrained search trial (columns :data:`POINT_COLUMNS`) from the runs frame."""
    if not len(runs) or "kind" not in runs:
        return pd.DataFrame(columns=POINT_COLUMNS)
    search = runs[(runs["kind"] == "search") & (runs["state"] == "complete")].set_index("run_id")
    retrain = runs[(runs["kind"] == "retrain") & (runs["state"] == "complete")]
    method = PARAM_COLUMN + BINARIZATION_SETTING
    rows: list[dict[str, Any]] = []
    for sid, group in retrain.groupby("search_run_id"):
        if sid not in search.index:
            continue
        s = search.loc[sid]
        if method in group and method in search and isinstance(s.get(method), str):
            group = group[group[method] == s[method]]  # a full-precision control is another question
        accs = [a for a in pd.to_numeric(group.get("test_acc"), errors="coerce") if is_number(a)]
        if not accs:
            continue
        rows.append(
            {
                "search_run_id": sid,
                "trial_id": s.get("trial_id"),
                "genotype_digest": s.get("genotype_digest"),
                Metric.PROXY_VAL_ACC: s.get(Metric.PROXY_VAL_ACC, math.nan),
                Metric.DERIVED_VAL_ACC: s.get(Metric.DERIVED_VAL_ACC, math.nan),
                Metric.SUPERNET_VAL_ACC: s.get(Metric.SUPERNET_VAL_ACC, math.nan),
                "test_acc": sum(accs) / len(accs),
                "n_seeds": len(accs),
            }
        )
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def proxy_correlations(points: pd.DataFrame) -> dict[str, Any]:
    """Per proxy ``{"tau", "p", "n"}``, plus ``n_genotypes``, ``judged`` (n >= :data:`MIN_GENOTYPES`) and
    a ``verdict`` sentence for the report."""
    out: dict[str, Any] = {"n_genotypes": int(len(points)), "min_genotypes": MIN_GENOTYPES}
    for col, _ in PROXIES:
        tau, p, n = kendall_tau(list(points.get(col, [])), list(points.get("test_acc", [])))
        out[col] = {"tau": tau, "p": p, "n": n}
    out["judged"] = len(points) >= MIN_GENOTYPES
    if not out["judged"]:
        out["verdict"] = (
            f"{len(points)} retrained genotype(s): below {MIN_GENOTYPES} the rank correlation between the "
            "search's proxies and the retrained accuracy cannot be judged (retrain more genotypes: "
            "retrain.top_k)."
        )
    else:
        parts = [
            f"{col}: {_fmt(out[col]['tau'])} (p = {_fmt_p(out[col]['p'])}, n = {out[col]['n']})"
            for col, _ in PROXIES
        ]
        out["verdict"] = (
            "Kendall tau with the retrained test accuracy, " + "; ".join(parts) + ". Near 0 a proxy does not "
            "rank the architectures as retraining does; p is the chance of a tau this far from 0 without any "
            "relation."
        )
    return out


def _fmt_p(p: float) -> str:
    return "-" if not is_number(p) else f"{p:.2g}"


def _fmt(tau: float) -> str:
    return "undefined (one side constant)" if not is_number(tau) else f"{tau:+.2f}"


def plot_proxy_correlation(points: pd.DataFrame, summary: dict[str, Any]) -> Figure:
    """Two scatters, proxy vs retrained accuracy (one point per retrained genotype), tau and n in the
    titles; a figure that says so when there is nothing to draw."""
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, len(PROXIES))
    for ax, (col, label) in zip(axes, PROXIES):
        stat = summary.get(col, {"tau": math.nan, "p": math.nan, "n": 0})
        ok = points[[col, "test_acc"]].apply(pd.to_numeric, errors="coerce").dropna() if len(points) else None
        if ok is None or not len(ok):
            ax.text(0.5, 0.5, "no retrained genotype yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.scatter(ok[col], ok["test_acc"], color="#1f5fa8", s=36, zorder=3)
            ax.grid(alpha=0.3)
        if summary.get("judged"):
            ax.set_title(f"Kendall tau = {_fmt(stat['tau'])} (n = {stat['n']})", fontsize=9)
        else:  # a tau from 2 or 3 points is noise: it is not printed, as the verdict says
            ax.set_title(f"n = {stat['n']}: too few to judge (at least {MIN_GENOTYPES})", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel("retrained test accuracy (mean over seeds)")
    fig.suptitle("Does the search's proxy rank architectures as retraining does?", fontsize=10)
    return fig
