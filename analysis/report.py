"""A study report from the MLflow store: ``python -m analysis.report --study NAME``.

Writes a self-contained folder (default ``<study folder>/report``): ``report.html`` with every
picture embedded (base64 PNG), the pictures as PNG files and the tables as CSV, then logs the folder
as artifacts ``report/`` of the study's parent MLflow run, so the MLflow UI shows it. Sections:

* leaderboard of derived architectures: retrained test accuracy (mean, spread and count over
  seeds), the search's ``derived_val_acc``, packed size, parameters, search time and the settings
  that produced each genotype;
* Pareto front of retrained accuracy against packed size, with full-precision retrainings and
  reference genotypes (``bnas.genotype.GENOTYPES``) placed on it when they were retrained;
* search curves (super-network ``val_acc`` per epoch, stage boundaries, operations left per edge);
* the best trial's reduction history and the best normal and reduction cells (``bnas.visualize``);
* Optuna's view from ``<study folder>/optuna.db``: parameter importances and optimization history;
* search cost: wall and device time per trial and in total, compared with the paper's ~0.09 GPU-days
  per search when the trials ran on a GPU.

Options::

    python -m analysis.report --study bnas_smoke
    python -m analysis.report --study bnas_smoke --out bnas_runs/bnas_smoke --mlflow-uri http://host:5000
    python -m analysis.report --study bnas_smoke --report-dir /tmp/report --no-log

``--mlflow-uri`` defaults to the store the study folder was tracked in (``mlflow_runs.json``), else
run.py's default (MLflow's ``sqlite:///mlflow.db`` in the working directory). A store that cannot
be read or a study that does not exist prints one ``error:`` paragraph and exits with status 2.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.loader import AnalysisError, StudyRuns, is_number, load_study

#: The paper's search cost (method.md section 9): ~0.09 GPU-days for BNAS (PCNN), ~0.1 for XNOR.
PAPER_GPU_DAYS = 0.09
#: Settings shown for every leaderboard row (besides every sampled ``space.*`` value).
KEY_SETTINGS = (
    "binarization.method",
    "search.sampling_k",
    "reduction.strategy",
    "reduction.epochs_per_stage",
    "search.ops",
)
SIZE_COLUMNS = ("params", "binary_params", "fp_params", "packed_bytes", "fp32_bytes")


# --------------------------------------------------------------------------------------------
# Tables (pure pandas; unit-tested against the runs)
# --------------------------------------------------------------------------------------------


def _finite(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").map(lambda v: is_number(v))


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series([None] * len(df), index=df.index, dtype=object)


def finished_search_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Search runs that completed and derived a genotype."""
    s = runs[(runs["kind"] == "search") & (_col(runs, "state") == "complete")]
    return s[s["genotype_digest"].notna() & (s["genotype_digest"] != "")]


def finished_retrain_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Retraining runs that completed with a final test accuracy."""
    r = runs[(runs["kind"] == "retrain") & (_col(runs, "state") == "complete")]
    return r[_finite(_col(r, "test_acc"))] if len(r) else r


def leaderboard(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per derived architecture (genotype digest x retraining binarization method), best first.

    Accuracy is the retrained ``test_acc`` (mean, sample standard deviation and count over seeds);
    rows without retraining keep NaN there and rank after retrained ones, by ``derived_val_acc``.
    The search run that produced a row is the one its retraining runs name (``bnas.search_run_id``),
    else the complete search run with that digest and the highest ``derived_val_acc``. Size figures
    are the retraining runs' (else the search run's, computed at the retraining settings).
    Retrained reference genotypes get ``source = reference``.
    """
    search = finished_search_runs(runs)
    retrain = finished_retrain_runs(runs)
    by_id = {r["run_id"]: r for _, r in runs[runs["kind"] == "search"].iterrows()}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for _, r in retrain.iterrows():
        key = (r["genotype_digest"], str(r.get("param.binarization.method", "")))
        groups.setdefault(key, {"retrain": [], "search_ids": []})["retrain"].append(r)
        if isinstance(r.get("search_run_id"), str):
            groups[key]["search_ids"].append(r["search_run_id"])
    retrained_digests = {d for d, _ in groups}
    for _, r in search.iterrows():
        if r["genotype_digest"] not in retrained_digests:
            key = (r["genotype_digest"], str(r.get("param.binarization.method", "")))
            groups.setdefault(key, {"retrain": [], "search_ids": []})
    rows = []
    for (digest, method), g in groups.items():
        same = search[search["genotype_digest"] == digest]
        linked = [by_id[i] for i in g["search_ids"] if i in by_id]
        if linked:
            producer = max(
                linked,
                key=lambda r: r.get("derived_val_acc", -1) if is_number(r.get("derived_val_acc")) else -1,
            )
        elif len(same):
            producer = same.sort_values("derived_val_acc", ascending=False, na_position="last").iloc[0]
        else:
            producer = None
        accs = [float(r["test_acc"]) for r in g["retrain"]]
        seeds = sorted({int(r["seed"]) for r in g["retrain"] if is_number(r.get("seed"))})
        name = next((r["genotype_name"] for r in g["retrain"] if r.get("genotype_name")), "")
        if not name and producer is not None:
            name = producer.get("genotype_name") or ""
        row: dict[str, Any] = {
            "genotype_digest": digest,
            "genotype_name": name,
            "source": "search" if producer is not None else "reference",
            "binarization": method,
            "test_acc_mean": sum(accs) / len(accs) if accs else math.nan,
            "test_acc_std": pd.Series(accs).std(ddof=1) if len(accs) > 1 else math.nan,
            "n_seeds": len(accs),
            "seeds": ",".join(map(str, seeds)),
            "derived_val_acc": producer.get("derived_val_acc", math.nan)
            if producer is not None
            else math.nan,
            "supernet_val_acc": producer.get("supernet_val_acc", math.nan)
            if producer is not None
            else math.nan,
            "search_time_s": producer.get("search_time_s", math.nan) if producer is not None else math.nan,
            "n_trials": int(len(same)),
            "trial_id": producer.get("trial_id") if producer is not None else None,
            "search_run_id": producer.get("run_id") if producer is not None else None,
            "retrain_run_ids": ",".join(r["run_id"] for r in g["retrain"]),
        }
        for c in SIZE_COLUMNS:
            vals = [float(r[c]) for r in g["retrain"] if is_number(r.get(c))]
            if not vals and producer is not None and is_number(producer.get(c)):
                vals = [float(producer[c])]
            row[c] = sum(vals) / len(vals) if vals else math.nan
        if producer is not None:
            for k in KEY_SETTINGS:
                row[f"setting.{k}"] = producer.get(f"param.{k}")
            for k, v in producer.items():
                if isinstance(k, str) and k.startswith("param.space.") and not _isnan(v):
                    row[k[len("param.") :]] = v
        rows.append(row)
    if not rows:
        return pd.DataFrame(
            columns=[
                "rank",
                "genotype_digest",
                "genotype_name",
                "source",
                "binarization",
                "test_acc_mean",
                "test_acc_std",
                "n_seeds",
                "derived_val_acc",
                "packed_bytes",
                "params",
                "search_time_s",
            ]
        )
    df = pd.DataFrame(rows)
    df = df.sort_values(
        ["test_acc_mean", "derived_val_acc"], ascending=[False, False], na_position="last", kind="stable"
    ).reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pareto_mask(acc: list[float], size: list[float]) -> list[bool]:
    """``True`` where no other point is at least as accurate and at most as large, and strictly
    better in one of the two (maximise ``acc``, minimise ``size``)."""
    out = []
    for i, (a, s) in enumerate(zip(acc, size)):
        dominated = any(
            (a2 >= a and s2 <= s) and (a2 > a or s2 < s)
            for j, (a2, s2) in enumerate(zip(acc, size))
            if j != i
        )
        out.append(not dominated)
    return out


def pareto_points(board: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Leaderboard rows placed on accuracy vs packed size, with the ``pareto`` flag.

    Uses the retrained accuracy when any row has one (rows without are left out); otherwise the
    search's ``derived_val_acc``. Returns the points and the accuracy's description.
    """
    if board.empty:
        return pd.DataFrame(columns=["label", "packed_bytes", "acc", "acc_std", "category", "pareto"]), ""
    retrained = board[_finite(board["test_acc_mean"])]
    if len(retrained):
        pts, acc_col, desc = retrained, "test_acc_mean", "retrained test accuracy (mean over seeds)"
    else:
        pts, acc_col = board, "derived_val_acc"
        desc = "derived_val_acc (shared-weight accuracy; nothing retrained yet)"
    pts = pts[_finite(pts[acc_col]) & _finite(pts["packed_bytes"])].copy()

    def category(r: pd.Series) -> str:
        if r["binarization"] == "fp":
            return "full precision"
        return "reference" if r["source"] == "reference" else "search"

    def label(r: pd.Series) -> str:
        base = r["genotype_name"] or str(r["genotype_digest"])[:8]
        return f"{base} (fp)" if r["binarization"] == "fp" else base

    out = pd.DataFrame(
        {
            "rank": pts["rank"],
            "label": [label(r) for _, r in pts.iterrows()],
            "genotype_digest": pts["genotype_digest"],
            "binarization": pts["binarization"],
            "category": [category(r) for _, r in pts.iterrows()],
            "packed_bytes": pts["packed_bytes"].astype(float),
            "acc": pts[acc_col].astype(float),
            "acc_std": pts["test_acc_std"].astype(float) if acc_col == "test_acc_mean" else math.nan,
        }
    ).reset_index(drop=True)
    out["pareto"] = pareto_mask(out["acc"].tolist(), out["packed_bytes"].tolist())
    return out, desc


def search_cost(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per search trial: state, device, the search's own time (its device time: one device per trial)
    and the run's wall time; plus totals and the comparison with the paper where it applies."""
    s = runs[runs["kind"] == "search"]
    cols = ["trial_id", "state", "device", "search_time_s", "wall_s", "device_time_s", "gpu_days"]
    if s.empty:
        return pd.DataFrame(columns=cols), {"trials": 0, "note": "no search trial yet"}
    device = _col(s, "device").fillna("unknown").astype(str)
    search_s = pd.to_numeric(_col(s, "search_time_s"), errors="coerce")
    wall = pd.to_numeric(s["wall_s"], errors="coerce")
    dev_s = search_s.where(search_s.notna(), wall)  # pruned/failed trials report no search time
    on_gpu = device.str.startswith("cuda")
    table = pd.DataFrame(
        {
            "trial_id": s["trial_id"].values,
            "state": s["state"].values,
            "device": device.values,
            "search_time_s": search_s.values,
            "wall_s": wall.values,
            "device_time_s": dev_s.values,
            "gpu_days": (dev_s / 86400.0).where(on_gpu).values,
        }
    )
    done = table[table["state"] == "complete"]
    starts, ends = runs["start_time"].dropna(), runs["end_time"].dropna()
    summary: dict[str, Any] = {
        "trials": len(table),
        "complete": len(done),
        "devices": sorted(set(table["device"])),
        "total_device_s": float(table["device_time_s"].sum()),
        "total_trial_wall_s": float(table["wall_s"].sum()),
        "study_wall_s": float((ends.max() - starts.min()).total_seconds())
        if len(starts) and len(ends)
        else math.nan,
        "mean_search_s": float(done["search_time_s"].mean()) if len(done) else math.nan,
        "retrain_wall_s": float(
            pd.to_numeric(_col(runs[runs["kind"] == "retrain"], "wall_s"), errors="coerce").sum()
        ),
    }
    if on_gpu.all():
        per = summary["mean_search_s"] / 86400.0
        summary["gpu_days_per_search"] = per
        summary["gpu_days_total"] = summary["total_device_s"] / 86400.0
        summary["note"] = (
            f"on GPU: {per:.4f} GPU-days per complete search (mean), "
            f"{summary['gpu_days_total']:.4f} GPU-days for all {len(table)} trials; the paper reports "
            f"~{PAPER_GPU_DAYS} GPU-days per search at full size (ratio {per / PAPER_GPU_DAYS:.3g}; the "
            f"settings here may be smaller than the paper's)."
        )
    elif on_gpu.any():
        summary["note"] = (
            "trials ran on a mix of devices ("
            + ", ".join(summary["devices"])
            + "); GPU-day figures are per GPU trial only and not compared with the paper."
        )
    else:
        summary["note"] = (
            f"trials ran on {', '.join(summary['devices'])} (no GPU): device time is CPU time of one "
            f"trial slot and is not compared with the paper's ~{PAPER_GPU_DAYS} GPU-days."
        )
    return table, summary


def trials_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The search trials: state, genotype, derived accuracy, search time and sampled values."""
    s = runs[runs["kind"] == "search"]
    if s.empty:
        return pd.DataFrame(columns=["trial_id", "state", "genotype_digest", "derived_val_acc"])
    keep = [
        "trial_id",
        "state",
        "status",
        "genotype_digest",
        "derived_val_acc",
        "supernet_val_acc",
        "search_time_s",
        "packed_bytes",
        "error",
        "run_id",
    ]
    out = s[[c for c in keep if c in s]].copy()
    for c in sorted(c for c in s.columns if c.startswith("param.space.")):
        out[c[len("param.") :]] = s[c]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Optuna
# --------------------------------------------------------------------------------------------


def _study_objectives(name: str) -> list[str]:
    """The objective metric names of study ``name`` from its file in ``tune_configs/`` (if there)."""
    from bnas.config import ConfigError, read_yaml

    path = Path(__file__).resolve().parents[1] / "tune_configs" / f"{name}.yaml"
    try:
        raw = read_yaml(path) if path.is_file() else None
        objs = raw.get("objectives") if isinstance(raw, dict) else None
        return [str(o.get("metric", "")) for o in objs] if isinstance(objs, list) else []
    except (ConfigError, AttributeError):
        return []


def optuna_view(study: Any) -> dict[str, Any]:
    """Trials table, direction, target name, importances (or a note saying why there are none)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    multi = len(study.directions) > 1
    direction = "maximize" if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": (t.values[0] if t.values else math.nan),
            **{f"param.{k}": v for k, v in t.params.items()},
        }
        for t in trials
    ]
    table = pd.DataFrame(rows, columns=["number", "state", "value"] if not rows else None)
    names = getattr(study, "metric_names", None) or _study_objectives(study.study_name)
    target = names[0] if names and names[0] else ("objective 1" if multi else "objective")
    view: dict[str, Any] = {
        "trials": table,
        "direction": direction,
        "target": target,
        "importances": {},
        "note": "",
    }
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        view["note"] = (
            f"parameter importances need at least 2 complete trials; the study has {len(complete)} "
            f"(of {len(trials)})."
        )
        return view
    try:
        kwargs = {"target": (lambda t: t.values[0]), "target_name": target} if multi else {}
        imp = optuna.importance.get_param_importances(study, **kwargs)
        view["importances"] = {k: float(v) for k, v in imp.items()}
        if not imp:
            view["note"] = "no parameter varied across the complete trials: no importances."
    except Exception as e:  # noqa: BLE001 - too few or degenerate trials: say so, do not fail the report
        view["note"] = f"parameter importances could not be computed ({type(e).__name__}: {e})."
    return view


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


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


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt_table(df: pd.DataFrame, max_rows: int = 200) -> str:
    if df.empty:
        return "<p class='note'>(empty)</p>"
    shown = df.head(max_rows).copy()
    for c in shown.columns:
        if c in ("packed_bytes", "fp32_bytes", "params", "binary_params", "fp_params"):
            shown[c] = shown[c].map(lambda v: "" if _isnan(v) else f"{v:,.0f}")
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


def build_report(
    study: str,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
    report_dir: str | Path | None = None,
    log_to_mlflow: bool = True,
    log: Any = print,
) -> Report:
    """Read the study, write the report folder, log it to the parent run; see the module docstring.

    Raises :class:`~analysis.loader.StoreUnreachable` / :class:`~analysis.loader.StudyNotFound`.
    """
    from analysis import plots
    from bnas.genotype import Genotype
    from bnas.visualize import draw_cell, plot_reduction_history, save_figure

    log = log or (lambda s: None)
    data = load_study(study, tracking_uri, out_dir)
    rdir = Path(report_dir).resolve() if report_dir else (data.out_dir / "report")
    rdir.mkdir(parents=True, exist_ok=True)
    rep = Report(dir=rdir, html=rdir / "report.html")
    notes = rep.notes
    runs = data.runs
    n_search = int((runs["kind"] == "search").sum()) if len(runs) else 0
    counts = runs[runs["kind"] == "search"]["state"].value_counts().to_dict() if n_search else {}
    n_done = len(finished_search_runs(runs)) if len(runs) else 0
    if n_search == 0:
        notes.append("the study has no search trial in the store yet: nothing to rank.")
    elif n_done == 0:
        notes.append(
            "no search trial has finished yet ("
            + ", ".join(f"{v} {k or 'unknown'}" for k, v in counts.items())
            + "): the tables and curves show what there is so far."
        )

    # ---- tables
    board = (
        leaderboard(runs)
        if len(runs)
        else leaderboard(pd.DataFrame(columns=["kind", "state", "genotype_digest"]))
    )
    points, acc_desc = pareto_points(board)
    cost, cost_summary = search_cost(runs) if len(runs) else search_cost(pd.DataFrame(columns=["kind"]))
    trials = trials_table(runs) if len(runs) else pd.DataFrame()
    rep.frames = {"runs": runs, "leaderboard": board, "pareto": points, "search_cost": cost, "trials": trials}
    if len(board) and not (board["n_seeds"] > 0).any():
        notes.append("no genotype has been retrained yet: the leaderboard ranks by derived_val_acc.")
    for name, df in rep.frames.items():
        path = rdir / f"{name}.csv"
        df.to_csv(path, index=False)
        rep.tables[name] = path

    # ---- pictures
    def save(name: str, fig: Any) -> None:
        rep.pictures[name] = save_figure(fig, rdir / f"{name}.png")

    save("pareto", plots.plot_pareto(points, acc_desc or "accuracy"))
    search_runs = data.search
    curves, states = {}, {}
    for _, r in search_runs.iterrows():
        label = str(r["trial_id"] or r["run_name"])
        curves[label] = data.metric_history(r["run_id"])
        states[label] = r["state"]
    save("search_curves", plots.plot_search_curves(curves, states))
    save("search_cost", plots.plot_search_cost(cost))

    # The best derived architecture: the best searched row, binary before full precision (a control).
    searched = board[board["source"] == "search"]
    best = searched[searched["binarization"] != "fp"].head(1)
    best = best if len(best) else searched.head(1)
    best_info = ""
    if len(best):
        b = best.iloc[0]
        rid = b["search_run_id"]
        best_info = f"genotype {b['genotype_digest']} from trial {b['trial_id']} (run {rid})"
        history = data.artifact_json(rid, "history.json")
        if history is not None:
            for cell in ("normal", "reduce"):
                save(f"reduction_history_{cell}", plot_reduction_history(history, cell))
        else:
            notes.append(f"the best trial's run {rid} has no history.json artifact.")
        gdict = data.artifact_json(rid, "genotype.json")
        if gdict is not None:
            g = Genotype.from_dict(gdict)
            for cell in ("normal", "reduce"):
                save(f"best_{cell}_cell", draw_cell(g, cell))
        else:
            notes.append(f"the best trial's run {rid} has no genotype.json artifact.")

    ostudy, onote = data.optuna_study()
    oview: dict[str, Any] | None = None
    if ostudy is None:
        notes.append(f"Optuna: {onote}.")
    else:
        oview = optuna_view(ostudy)
        save(
            "optuna_history", plots.plot_optuna_history(oview["trials"], oview["direction"], oview["target"])
        )
        if oview["importances"]:
            save("optuna_importances", plots.plot_param_importances(oview["importances"], oview["target"]))
        rep.frames["optuna_trials"] = oview["trials"]
        path = rdir / "optuna_trials.csv"
        oview["trials"].to_csv(path, index=False)
        rep.tables["optuna_trials"] = path
        if oview["importances"]:
            imp = pd.DataFrame(
                {"param": list(oview["importances"]), "importance": list(oview["importances"].values())}
            )
            imp.to_csv(rdir / "optuna_importances.csv", index=False)
            rep.tables["optuna_importances"] = rdir / "optuna_importances.csv"

    (rdir / "search_cost_summary.json").write_text(json.dumps(cost_summary, indent=1, default=str))
    rep.html.write_text(_html(data, rep, acc_desc, cost_summary, oview, onote, best_info))
    log(f"report: {rep.html}")

    if log_to_mlflow:
        if data.parent_run_id is None:
            notes.append("the study has no parent run in the store: the report was not logged to MLflow.")
            log("report: no parent run to log to")
        else:
            data.client.log_artifacts(data.parent_run_id, str(rdir), artifact_path="report")
            rep.logged_to = data.parent_run_id
            log(f"report: logged as artifacts report/ of run {data.parent_run_id} in {data.tracking_uri}")
    return rep


def _html(
    data: StudyRuns,
    rep: Report,
    acc_desc: str,
    cost_summary: dict[str, Any],
    oview: dict[str, Any] | None,
    onote: str,
    best_info: str,
) -> str:
    e = html.escape

    def img(name: str, alt: str) -> str:
        p = rep.pictures.get(name)
        return f"<img alt='{e(alt)}' src='data:image/png;base64,{_png_b64(p)}'>" if p else ""

    def note(text: str) -> str:
        return f"<p class='note'>{e(text)}</p>" if text else ""

    f = rep.frames
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs = f["runs"]
    n_s = int((runs["kind"] == "search").sum()) if len(runs) else 0
    n_r = int((runs["kind"] == "retrain").sum()) if len(runs) else 0
    board_cols = [c for c in f["leaderboard"].columns if c not in ("retrain_run_ids", "search_run_id")]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>BNAS study {e(data.study)}</title><style>{_CSS}</style></head><body>",
        f"<h1>BNAS study <code>{e(data.study)}</code></h1>",
        f"<p class='meta'>MLflow store {e(data.tracking_uri)}, experiment {e(data.experiment_id)}, "
        f"parent run {e(str(data.parent_run_id))}; study folder {e(str(data.out_dir))}; "
        f"{n_s} search run(s), {n_r} retraining run(s); generated {now}.</p>",
        *[note(n) for n in rep.notes],
        "<h2>Leaderboard of derived architectures</h2>",
        "<p>One row per genotype (and retraining binarization). <b>test_acc</b>: retrained test accuracy, "
        "mean / sample std / count over seeds; <b>derived_val_acc</b>: the search's shared-weight accuracy "
        "of the derived cells; sizes of the retraining network (packed: 1 bit per binary weight). "
        "<code>setting.*</code> / <code>space.*</code>: the settings of the search run that produced it.</p>",
        _fmt_table(f["leaderboard"][board_cols] if len(f["leaderboard"]) else f["leaderboard"]),
        "<h2>Pareto front: accuracy vs packed size</h2>",
        f"<p>Accuracy: {e(acc_desc or 'n/a')}. Circled points are non-dominated (no other architecture is "
        "at least as accurate and at most as large). Full-precision retrainings and reference genotypes "
        "appear when they were retrained.</p>",
        img("pareto", "Pareto front"),
        _fmt_table(f["pareto"]),
        "<h2>Search curves</h2>",
        img("search_curves", "search curves"),
        _fmt_table(f["trials"]),
        "<h2>Best architecture</h2>",
        f"<p>{e(best_info) if best_info else 'No finished search trial yet.'}</p>",
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
        f"{cs.get('total_device_s', 0):.1f} s of device time; their runs took "
        f"{cs.get('total_trial_wall_s', 0):.1f} s of wall time in all; the study (first run start to last "
        f"run end) took {cs.get('study_wall_s', math.nan):.1f} s including "
        f"{cs.get('retrain_wall_s', 0):.1f} s of retraining runs."
        if cs.get("trials")
        else ""
    )
    parts += [
        "<h2>Search cost</h2>",
        f"<p>{e(total)}</p>",
        note(cs.get("note", "")),
        img("search_cost", "search cost"),
        _fmt_table(f["search_cost"]),
        "<p class='meta'>Tables as CSV next to this file: "
        + ", ".join(e(p.name) for p in rep.tables.values())
        + ".</p></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write a study report (HTML + PNG + CSV) from the MLflow store and log it to the "
        "study's parent run.",
    )
    p.add_argument("--study", required=True, help="study name (the MLflow experiment bnas/<study>)")
    p.add_argument(
        "--mlflow-uri",
        help="tracking server or store (default: the one recorded in the study folder, else run.py's "
        "default, sqlite ./mlflow.db)",
    )
    p.add_argument("--out", help="study folder with optuna.db (default ./bnas_runs/<study>)")
    p.add_argument("--report-dir", help="where to write the report (default <study folder>/report)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent MLflow run")
    args = p.parse_args(argv)
    try:
        rep = build_report(
            args.study, args.mlflow_uri, args.out, args.report_dir, log_to_mlflow=not args.no_log
        )
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in rep.notes:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
