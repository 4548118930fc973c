"""The study's tables, pure pandas over :func:`analysis.loader.load_study`'s runs frame.

* :func:`leaderboard` -- one row per derived architecture (genotype x retraining binarization), the
  aggregation of :func:`bnas.platform.leaderboard.leaderboard` (also the console summary's) with
  the settings of the search run behind each row;
* :func:`pareto_points` -- the leaderboard on accuracy vs packed size, non-dominated points flagged;
* :func:`search_cost` -- wall and device time per search trial, compared with the paper on GPUs;
* :func:`trials_table` -- the search trials with their sampled values;
* :func:`optuna_view` -- Optuna's trials and parameter importances.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bnas.platform import leaderboard as leaderboard_rows
from bnas.platform import tracking_schema as schema
from bnas.platform.tracking_schema import (
    PARAM_COLUMN,
    RETRAIN,
    SEARCH,
    SIZE_METRICS,
    SPACE_PREFIX,
    Metric,
    State,
    is_number,
)

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
SIZE_COLUMNS = SIZE_METRICS
#: Frame columns of the sampled values (``param.space.<setting>``).
SPACE_COLUMN = PARAM_COLUMN + SPACE_PREFIX


def _finite(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").map(lambda v: is_number(v))


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series([None] * len(df), index=df.index, dtype=object)


def runs_of_kind(runs: pd.DataFrame, kind: schema.RunKind) -> pd.DataFrame:
    """The rows of one kind of run (``SEARCH`` or ``RETRAIN``)."""
    return runs[runs["kind"] == kind.name]


def _where(runs: pd.DataFrame, keep: Any) -> pd.DataFrame:
    """The rows whose record (:func:`~bnas.platform.tracking_schema.run_record` columns) ``keep``s."""
    return runs[pd.Series([bool(keep(r)) for r in _records(runs)], index=runs.index, dtype=bool)]


def _records(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as the records the schema's aggregation reads (missing values: None/NaN)."""
    return runs.to_dict("records")


def finished_search_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Search runs that completed and derived a genotype."""
    return _where(runs, leaderboard_rows.is_finished_search)


def finished_retrain_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Retraining runs that completed with a final test accuracy."""
    return _where(runs, leaderboard_rows.is_finished_retrain)


LEADERBOARD_COLUMNS = [
    "rank",
    "genotype_digest",
    "genotype_name",
    "source",
    "binarization",
    "test_acc_mean",
    "test_acc_std",
    "n_seeds",
    Metric.DERIVED_VAL_ACC,
    Metric.PACKED_BYTES,
    Metric.PARAMS,
    Metric.SEARCH_TIME_S,
]


def leaderboard(runs: pd.DataFrame, num_classes: int | None = None) -> pd.DataFrame:
    """One row per derived architecture (genotype digest x retraining binarization method), best first.

    The rows and their order are :func:`bnas.platform.leaderboard.leaderboard`'s (the same as the
    console summary at the end of a study): retrained ``test_acc`` mean, sample standard deviation and
    count over seeds; rows without retraining keep NaN there and rank after retrained ones, by
    ``derived_val_acc``; ties go to the smaller packed size. Here each row also shows the settings of
    the search run that produced it (``setting.*`` for :data:`KEY_SETTINGS`, ``space.*`` for every
    sampled value). Retrained reference genotypes get ``source = reference``. With ``num_classes``
    (the dataset's), ``test_near_chance`` / ``val_near_chance`` flag figures within noise of chance,
    and such rows rank after the rest (:func:`bnas.platform.leaderboard.leaderboard`).
    """
    rows = []
    for row in leaderboard_rows.leaderboard(_records(runs), num_classes):
        producer = row.pop("producer")
        if producer is not None:
            for k in KEY_SETTINGS:
                row[f"setting.{k}"] = producer.get(PARAM_COLUMN + k)
            for k, v in producer.items():
                if isinstance(k, str) and k.startswith(SPACE_COLUMN) and not _isnan(v):
                    row[k[len(PARAM_COLUMN) :]] = v
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    df = pd.DataFrame(rows)
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
        pts, acc_col = board, Metric.DERIVED_VAL_ACC
        desc = "derived_val_acc (shared-weight accuracy; nothing retrained yet)"
    pts = pts[_finite(pts[acc_col]) & _finite(pts[Metric.PACKED_BYTES])].copy()

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
            "packed_bytes": pts[Metric.PACKED_BYTES].astype(float),
            "acc": pts[acc_col].astype(float),
            "acc_std": pts["test_acc_std"].astype(float) if acc_col == "test_acc_mean" else math.nan,
        }
    ).reset_index(drop=True)
    out["pareto"] = pareto_mask(out["acc"].tolist(), out["packed_bytes"].tolist())
    return out, desc


def search_cost(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per search trial: state, device, the search's own time (its device time: one device per trial)
    and the run's wall time; plus totals and the comparison with the paper where it applies."""
    s = runs_of_kind(runs, SEARCH)
    cols = ["trial_id", "state", "device", "search_time_s", "wall_s", "device_time_s", "gpu_days"]
    if s.empty:
        return pd.DataFrame(columns=cols), {"trials": 0, "note": "no search trial yet"}
    device = _col(s, "device").fillna("unknown").astype(str)
    search_s = pd.to_numeric(_col(s, Metric.SEARCH_TIME_S), errors="coerce")
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
    done = table[table["state"] == State.COMPLETE]
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
            pd.to_numeric(_col(runs_of_kind(runs, RETRAIN), "wall_s"), errors="coerce").sum()
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
    s = runs_of_kind(runs, SEARCH)
    if s.empty:
        return pd.DataFrame(columns=["trial_id", "state", "genotype_digest", Metric.DERIVED_VAL_ACC])
    keep = [
        "trial_id",
        "state",
        "status",
        "genotype_digest",
        Metric.DERIVED_VAL_ACC,
        Metric.SUPERNET_VAL_ACC,
        Metric.SEARCH_TIME_S,
        Metric.PACKED_BYTES,
        "error",
        "run_id",
    ]
    out = s[[c for c in keep if c in s]].copy()
    for c in sorted(c for c in s.columns if c.startswith(SPACE_COLUMN)):
        out[c[len(PARAM_COLUMN) :]] = s[c]
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


#: [D] A cell is flagged degenerate when one operation holds at least this share of its edges (e.g.
#: 7 of 8 edges max_pool_3x3), or when its parameter-free operations (skip, pools) do
#: (``search.degenerate_share``'s default: a uniformly random cell has 3/7): a search that learned
#: nothing that tells weighted operations apart.
DEGENERATE_SHARE = 0.75


def degenerate_cells(genotype: Any, share: float = DEGENERATE_SHARE) -> str:
    """``"normal: 6/8 parameter-free"`` / ``"normal: 7/8 max_pool_3x3"``-style flags for the cells of
    ``genotype`` at or above ``share``, ``""`` when none is."""
    from collections import Counter

    from bnas.search_space import PARAM_FREE

    flags = []
    for cell in ("normal", "reduce"):
        ops = [op for op, _ in getattr(genotype, cell)]
        if not ops:
            continue
        op, n = Counter(ops).most_common(1)[0]
        free = sum(o in PARAM_FREE for o in ops)
        if n / len(ops) >= share:
            flags.append(f"{cell}: {n}/{len(ops)} {op}")
        elif free / len(ops) >= share:
            flags.append(f"{cell}: {free}/{len(ops)} parameter-free")
    return "; ".join(flags)


def match_optuna_trials(optuna_trials: pd.DataFrame, runs: pd.DataFrame) -> pd.Series:
    """The Tune trial id (= the MLflow search run's ``bnas.trial_id``) of each Optuna trial, matched by
    the sampled values (Optuna's params = the run's ``space.*`` params); equal values are paired in
    time order. Ray's OptunaSearch keeps the pairing in memory only, so it is rebuilt here."""
    searches = runs_of_kind(runs, SEARCH) if len(runs) else runs
    if optuna_trials.empty or not len(searches):
        return pd.Series([None] * len(optuna_trials), index=optuna_trials.index, dtype=object)
    params = [c for c in optuna_trials.columns if c.startswith("param.")]

    def key(values: dict[str, Any]) -> tuple:
        return tuple(values.get(c) for c in params)

    pool: dict[tuple, list[str]] = {}
    for _, r in searches.sort_values("start_time").iterrows():
        k = key({c: _parsed(r.get(PARAM_COLUMN + SPACE_PREFIX + c[len("param.") :])) for c in params})
        pool.setdefault(k, []).append(str(r["trial_id"]))
    out = []
    for _, t in optuna_trials.sort_values("number").iterrows():
        ids = pool.get(key({c: _parsed(t[c]) for c in params}), [])
        out.append(ids.pop(0) if ids else None)
    return pd.Series(out, index=optuna_trials.sort_values("number").index, dtype=object).reindex(
        optuna_trials.index
    )


def _parsed(v: Any) -> str | None:
    """Optuna's value and the MLflow param of the same sample, made comparable: numbers to the
    significant digits a param keeps (schema.FLOAT_DIGITS; a NaN column turns the run's 2 into 2.0)."""
    if _isnan(v):
        return None
    if isinstance(v, str):
        v = schema.parse_param(v)
    if schema.is_number(v):
        return f"{float(v):.{schema.FLOAT_DIGITS}g}"
    return str(v)
