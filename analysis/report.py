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
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.loader import AnalysisError, StudyRuns, load_study
from analysis.report_html import Report, render
from analysis.tables import (
    degenerate_cells,
    finished_search_runs,
    leaderboard,
    match_optuna_trials,
    optuna_view,
    pareto_points,
    runs_of_kind,
    search_cost,
    trials_table,
)
from bnas.platform.tracking_schema import (
    DEFAULT_OUT_ROOT,
    OPTUNA_DB,
    RETRAIN,
    SEARCH,
    Artifact,
    Metric,
    Tag,
    is_number,
    parse_param,
)

# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


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
    n_search = len(runs_of_kind(runs, SEARCH)) if len(runs) else 0
    counts = runs_of_kind(runs, SEARCH)["state"].value_counts().to_dict() if n_search else {}
    n_done = len(finished_search_runs(runs)) if len(runs) else 0
    if n_search == 0:
        notes.append("the study has no search trial in the store yet: nothing to rank.")
    elif n_done == 0:
        notes.append(
            "no search trial has finished yet ("
            + ", ".join(f"{v} {k or 'unknown'}" for k, v in counts.items())
            + "): the tables and curves show what there is so far."
        )

    # ---- the dataset (the parent run's dataset.* params, written by run.py since study identities)
    dataset = _dataset_params(data)
    num_classes = dataset.get("dataset.num_classes")
    num_classes = int(num_classes) if is_number(num_classes) else None

    # ---- tables
    board = (
        leaderboard(runs, num_classes)
        if len(runs)
        else leaderboard(pd.DataFrame(columns=["kind", "state", "genotype_digest"]))
    )
    if len(board) and "test_near_chance" in board:
        at_chance = board[board["test_near_chance"] | (board["n_seeds"].eq(0) & board["val_near_chance"])]
        if len(at_chance):
            notes.append(
                f"{len(at_chance)} of {len(board)} leaderboard row(s) are within noise of chance "
                f"(1/{num_classes}: 2 standard errors of guessing on their test or validation images, or 2 "
                "seed standard deviations): they are listed after the rest, and their order among "
                "themselves means nothing. Retrain longer (retrain.* overrides) for figures that rank."
            )
    if len(board):
        board["degenerate_cells"] = [
            _degenerate(data, r["search_run_id"]) if i < DEGENERATE_CHECK_ROWS else ""
            for i, (_, r) in enumerate(board.iterrows())
        ]
        flagged = board[board["degenerate_cells"] != ""]
        if len(flagged):
            notes.append(
                f"{len(flagged)} genotype(s) have a cell dominated by one operation or by parameter-free "
                "operations (degenerate_cells column, e.g. "
                f"{flagged.iloc[0]['degenerate_cells']}): the search "
                "told the operations apart poorly, typically because its epochs were too short to learn "
                "(search.max_param_free caps them at derivation)."
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
    retrain_curves = {}
    retrain_runs = runs_of_kind(runs, RETRAIN) if len(runs) else runs
    for _, r in retrain_runs.iterrows() if len(retrain_runs) else iter(()):
        label = f"{r['genotype_digest'] or r['genotype_name']} s{r['seed']}"
        retrain_curves[label] = data.metric_history(r["run_id"], RETRAIN_CURVE_METRICS)
    chance = 1 / num_classes if num_classes else None
    save("retrain_curves", plots.plot_retrain_curves(retrain_curves, chance))
    save("search_cost", plots.plot_search_cost(cost))

    # ---- does the search's proxy rank as retraining does (Kendall tau, analysis.proxy)
    from analysis.proxy import plot_proxy_correlation, proxy_correlations, proxy_points

    proxy = proxy_points(runs)
    rep.proxy = proxy_correlations(proxy)
    rep.frames["proxy_correlation"] = proxy
    proxy.to_csv(rdir / "proxy_correlation.csv", index=False)
    rep.tables["proxy_correlation"] = rdir / "proxy_correlation.csv"
    (rdir / "proxy_correlation.json").write_text(json.dumps(rep.proxy, indent=1, default=str))
    save("proxy_correlation", plot_proxy_correlation(proxy, rep.proxy))

    # The best derived architecture: the best searched row, binary before full precision (a control).
    searched = board[board["source"] == "search"]
    best = searched[searched["binarization"] != "fp"].head(1)
    best = best if len(best) else searched.head(1)
    best_info = ""
    if len(best):
        b = best.iloc[0]
        rid = b["search_run_id"]
        best_info = f"genotype {b['genotype_digest']} from trial {b['trial_id']} (run {rid})"
        diag = _artifact(data, rid, Artifact.DIAGNOSTICS, notes)
        if isinstance(diag, dict) and isinstance(diag.get("stages"), list) and diag["stages"]:
            rep.frames["best_diagnostics"] = diagnostics_frame(diag["stages"])
            path = rdir / "best_diagnostics.csv"
            rep.frames["best_diagnostics"].to_csv(path, index=False)
            rep.tables["best_diagnostics"] = path
        history = _artifact(data, rid, Artifact.HISTORY, notes)
        gdict = _artifact(data, rid, Artifact.GENOTYPE, notes)
        # An artifact edited or damaged after the run leaves its picture out, with a note, not the report.
        try:
            if history is not None:
                for cell in ("normal", "reduce"):
                    save(f"reduction_history_{cell}", plot_reduction_history(history, cell))
        except Exception as e:  # noqa: BLE001 (any shape of damage: the report goes on)
            notes.append(f"the best trial's {Artifact.HISTORY} cannot be drawn ({type(e).__name__}: {e}).")
        try:
            if gdict is not None:
                g = Genotype.from_dict(gdict)
                for cell in ("normal", "reduce"):
                    save(f"best_{cell}_cell", draw_cell(g, cell))
        except Exception as e:  # noqa: BLE001
            notes.append(f"the best trial's {Artifact.GENOTYPE} cannot be drawn ({type(e).__name__}: {e}).")

    ostudy, onote = data.optuna_study()
    oview: dict[str, Any] | None = None
    if ostudy is None:
        notes.append(f"Optuna: {onote}.")
    else:
        oview = optuna_view(ostudy)
        # Which Tune trial (MLflow run search-<id>) each Optuna trial number is.
        oview["trials"].insert(1, "tune_trial_id", match_optuna_trials(oview["trials"], runs))
        complete = int((oview["trials"]["state"] == "COMPLETE").sum()) if len(oview["trials"]) else 0
        if oview["importances"] and complete < IMPORTANCE_MIN_TRIALS:
            oview["note"] = (
                f"the importances come from {complete} complete trial(s): with fewer than "
                f"{IMPORTANCE_MIN_TRIALS}, a random forest over so few points ranks noise; read them as an "
                "example of the plot, not as evidence about the settings."
            )
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
    rep.html.write_text(render(data, rep, dataset, acc_desc, cost_summary, oview, onote, best_info))
    log(f"report: {rep.html}")

    if log_to_mlflow:
        if data.parent_run_id is None:
            notes.append("the study has no parent run in the store: the report was not logged to MLflow.")
            log("report: no parent run to log to")
        else:
            data.client.log_artifacts(data.parent_run_id, str(rdir), artifact_path=Artifact.REPORT)
            rep.logged_to = data.parent_run_id
            where = f"run {data.parent_run_id} in {data.tracking_uri}"
            log(f"report: logged as artifacts {Artifact.REPORT}/ of {where}")
    return rep


#: [D] Below this many complete Optuna trials the importances get a caveat (fANOVA's forest over
#: fewer points ranks noise).
IMPORTANCE_MIN_TRIALS = 10
#: Leaderboard rows whose genotype is fetched to flag degenerate cells (one artifact read each).
DEGENERATE_CHECK_ROWS = 20
RETRAIN_CURVE_METRICS = (Metric.TEST_ACC, Metric.TRAIN_LOSS)


def _dataset_params(data: StudyRuns) -> dict[str, Any]:
    """The parent run's ``dataset.*`` params (typed) and its data root tag; ``{}`` for older studies."""
    if data.parent_run_id is None:
        return {}
    run = data.client.get_run(data.parent_run_id)
    out: dict[str, Any] = {k: parse_param(v) for k, v in run.data.params.items() if k.startswith("dataset.")}
    if Tag.DATASET_ROOT in run.data.tags:
        out["dataset.root"] = run.data.tags[Tag.DATASET_ROOT]
    return out


#: Columns of the best trial's per-stage diagnostics table, in order (those present).
DIAGNOSTIC_COLUMNS = (
    "stage",
    "subnets",
    "order_rho",
    "order_p",
    "snr",
    "score_sd",
    "score_se",
    "removed_lowest_alpha",
    "alpha_entropy_normal",
    "alpha_entropy_reduce",
    "beta_entropy",
    "param_free_normal",
    "param_free_reduce",
    "none_spared",
)


def diagnostics_frame(stages: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per stage of a search's ``diagnostics.json``, numbers rounded to 3 digits."""
    df = pd.DataFrame([s for s in stages if isinstance(s, dict)])
    df = df[[c for c in DIAGNOSTIC_COLUMNS if c in df.columns]]
    return df.round(3)


def _artifact(data: StudyRuns, run_id: str, name: str, notes: list[str]) -> Any:
    """A run's JSON artifact, or None with a note when it is missing or not JSON."""
    try:
        value = data.artifact_json(run_id, name)
    except ValueError as e:
        notes.append(f"run {run_id}: {name} is not valid JSON ({e}); left out.")
        return None
    if value is None:
        notes.append(f"the best trial's run {run_id} has no {name} artifact.")
    return value


def _degenerate(data: StudyRuns, search_run_id: Any) -> str:
    from bnas.genotype import Genotype

    if not isinstance(search_run_id, str) or not search_run_id:
        return ""
    try:
        gdict = data.artifact_json(search_run_id, Artifact.GENOTYPE)
        return degenerate_cells(Genotype.from_dict(gdict)) if gdict is not None else ""
    except Exception:  # noqa: BLE001 (a damaged genotype: no flag, the picture section notes it)
        return "?"


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
    p.add_argument("--out", help=f"study folder with {OPTUNA_DB} (default ./{DEFAULT_OUT_ROOT}/<study>)")
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
