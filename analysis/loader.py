"""Read a study's MLflow runs (search and retraining) into one pandas DataFrame.

The schema is the platform's, and it is read through its owner :mod:`bnas.platform.tracking_schema`
(names, store probe, paginated reads, run records): experiment ``bnas/<study>``, a parent run (tag
``bnas.kind=study``), one search run per search trial and one retraining run per (genotype, seed),
linked to its search run by the tag ``bnas.search_run_id``. :func:`load_study` returns a
:class:`StudyRuns` whose ``runs`` frame has one row per search or retraining run
(:func:`~bnas.platform.tracking_schema.run_record`, plus the columns marked below):

========================  ===================================================================
column                    meaning
========================  ===================================================================
run_id, run_name          the MLflow run
kind                      ``search`` or ``retrain``
status, state             MLflow status (FINISHED, FAILED, RUNNING, ...) and ``bnas.state``
                          (``running``, ``complete``, ``pruned``, ``failed``)
trial_id, seed            ``bnas.trial_id``; ``bnas.seed`` (retraining)
genotype_digest           ``bnas.genotype_digest``
genotype_name             ``bnas.genotype_name`` if set, else the reference genotype
                          (``bnas.genotype.GENOTYPES``) with the same digest, else empty
search_run_id             retraining: the search run whose genotype it trained
search_trial_id           retraining: that search run's trial id (added here)
start_time, end_time      pandas timestamps (UTC); ``wall_s`` their difference
device                    the ``device`` setting the trial ran with (``cpu``, ``cuda``, ...; added here)
<metric>                  final figures (``derived_val_acc``, ``test_acc``, ``packed_bytes``, ...);
                          a metric that is also logged per epoch (``test_acc``) is its last
                          epoch's value, which the platform logs as the final figure
param.<dotted key>        every MLflow param: the resolved settings (``param.binarization.method``)
                          and the sampled values (``param.space.search.sampling_k``), typed
========================  ===================================================================

Works against a local SQLite store and a tracking server alike (only the MLflow client API is used).
Nothing here writes to the store; a SQLite file that does not exist is reported, never created.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bnas.platform.tracking_schema import (
    OPTUNA_DB,
    PARAM_COLUMN,
    RETRAIN,
    SEARCH,
    STUDY_KIND,
    Metric,
    Tag,
    TrackingError,
    default_study_dir,
    experiment_name,
    is_number,
    list_studies,
    probe_store,
    resolve_tracking_uri,
    run_record,
    runs_filter,
    search_all,
)

__all__ = [
    "AnalysisError",
    "StoreUnreachable",
    "StudyNotFound",
    "StudyRuns",
    "connect",
    "is_number",
    "list_studies",
    "load_optuna_study",
    "load_study",
    "resolve_tracking_uri",
    "runs_frame",
]

#: Search-run metric histories that :meth:`StudyRuns.search_histories` reads.
SEARCH_CURVE_METRICS = (Metric.VAL_ACC, Metric.TRAIN_ACC, Metric.STAGE, Metric.OPS_PER_EDGE)


class AnalysisError(Exception):
    """A problem to report in one paragraph (no traceback): ``str(e)`` is the whole message."""


class StoreUnreachable(AnalysisError):
    """The tracking store cannot be read (no server answers, no such SQLite file, bad URI)."""


class StudyNotFound(AnalysisError):
    """No experiment ``bnas/<study>`` in the store; ``available`` lists the studies that exist."""

    def __init__(self, study: str, uri: str, available: list[str]) -> None:
        self.study, self.uri, self.available = study, uri, available
        there = ", ".join(available) if available else "none (nothing has been run against this store)"
        super().__init__(
            f"no study {study!r} in the MLflow store {uri}. Studies there: {there}. Run it with "
            f"`python run.py --study {study}`, or point --mlflow-uri/--out at the store it was tracked in."
        )


def _quiet_mlflow() -> None:
    for name in ("alembic", "mlflow", "mlflow.store.db.utils", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(uri: str, timeout_s: float = 5.0) -> Any:
    """An ``MlflowClient`` for ``uri`` that has been seen to answer; else :class:`StoreUnreachable`.

    The store is probed first (:func:`~bnas.platform.tracking_schema.probe_store`: the SQLite file
    must exist, a server must answer ``/health`` within ``timeout_s``), so a wrong address fails in
    seconds; later requests follow MLflow's own retry settings (``MLFLOW_HTTP_REQUEST_*``).
    """
    try:
        uri = probe_store(uri, write=False, timeout_s=timeout_s)
    except TrackingError as e:
        raise StoreUnreachable(e.problem) from None
    _quiet_mlflow()
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - whatever the store raises, the user gets one paragraph
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreUnreachable(f"the MLflow store {uri} cannot be read: {first}") from None
    return client


# --------------------------------------------------------------------------------------------
# Runs -> DataFrame
# --------------------------------------------------------------------------------------------


def _reference_digests() -> dict[str, str]:
    from bnas.genotype import GENOTYPES

    return {GENOTYPES.get(n).digest: n for n in GENOTYPES.names()}


def runs_frame(runs: list[Any]) -> pd.DataFrame:
    """One row per run (columns: see the module docstring), search runs first, each kind by start."""
    refs = _reference_digests()
    rows = []
    for r in runs:
        row = run_record(r)
        row["genotype_name"] = row["genotype_name"] or refs.get(row["genotype_digest"] or "", "")
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(
            columns=["run_id", "run_name", "kind", "status", "state", "trial_id", "genotype_digest"]
        )
    for c in ("start_time", "end_time"):
        df[c] = pd.to_datetime(pd.to_numeric(df[c], errors="coerce"), unit="ms", utc=True)
    df["wall_s"] = (df["end_time"] - df["start_time"]).dt.total_seconds()
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    device = PARAM_COLUMN + "device"
    df["device"] = df[device] if device in df else None
    trial_of = dict(zip(df["run_id"], df["trial_id"]))
    df["search_trial_id"] = [trial_of.get(s) if isinstance(s, str) else None for s in df["search_run_id"]]
    order = {SEARCH.name: 0, RETRAIN.name: 1}
    df["_k"] = df["kind"].map(lambda k: order.get(k, 2))
    df = (
        df.sort_values(["_k", "start_time", "run_name"], kind="stable")
        .drop(columns="_k")
        .reset_index(drop=True)
    )
    return df


@dataclass
class StudyRuns:
    """A study's runs as read from the store, plus what is needed to read more (artifacts, histories)."""

    study: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    runs: pd.DataFrame
    client: Any = field(repr=False)
    out_dir: Path | None = None

    @property
    def search(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == SEARCH.name].reset_index(drop=True)

    @property
    def retrain(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == RETRAIN.name].reset_index(drop=True)

    def metric_history(self, run_id: str, keys: tuple[str, ...] = SEARCH_CURVE_METRICS) -> pd.DataFrame:
        """Per-step values of ``keys`` for one run: columns ``step`` and one per key (NaN if absent).

        Step-0 entries (final figures) are left out; for a search run the steps are global epochs.
        """
        series = {}
        for key in keys:
            hist = [m for m in self.client.get_metric_history(run_id, key) if m.step > 0]
            latest: dict[int, Any] = {}
            for m in sorted(hist, key=lambda m: m.timestamp):
                latest[m.step] = m.value
            series[key] = pd.Series(latest, dtype=float)
        df = pd.DataFrame(series)
        df.index.name = "step"
        return df.sort_index().reset_index()

    def search_histories(self) -> dict[str, pd.DataFrame]:
        """run_id -> :meth:`metric_history` of every search run."""
        return {rid: self.metric_history(rid) for rid in self.search["run_id"]}

    def artifact_text(self, run_id: str, path: str) -> str | None:
        """The text of artifact ``path`` of a run, or None when the run has no such artifact."""
        # MLflow draws a tqdm progress bar on stderr for every download, switchable only through an
        # environment variable; for these small files it is noise, so it goes to a buffer instead.
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception:  # noqa: BLE001 - missing artifact (pruned or running trial)
                return None
            p = Path(local)
            return p.read_text() if p.is_file() else None

    def artifact_json(self, run_id: str, path: str) -> Any:
        text = self.artifact_text(run_id, path)
        return None if text is None else json.loads(text)

    def optuna_study(self) -> tuple[Any, str]:
        """``(optuna.Study or None, note)``: the study's Optuna storage ``<out>/optuna.db``."""
        return load_optuna_study(self.study, self.out_dir or default_study_dir(self.study))


def load_optuna_study(study: str, out_dir: str | Path) -> tuple[Any, str]:
    """The Optuna study ``study`` in ``<out_dir>/optuna.db`` -> ``(study or None, note)``."""
    path = Path(out_dir) / OPTUNA_DB
    if not path.is_file():
        return None, f"no Optuna storage at {path} (pass the study folder with --out)"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=f"sqlite:///{path.resolve()}"), str(path)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{path.resolve()}")]
        return None, f"{path} holds no Optuna study {study!r} (it holds: {', '.join(names) or 'none'})"
    except Exception as e:  # noqa: BLE001 - a broken storage is a note in the report, not a crash
        return None, f"{path} could not be read: {e}"


def load_study(study: str, tracking_uri: str | None = None, out_dir: str | Path | None = None) -> StudyRuns:
    """Every search and retraining run of ``study`` (see the module docstring).

    ``tracking_uri`` defaults to the URI recorded in the study folder, else run.py's default;
    ``out_dir`` (the study folder with ``optuna.db``) defaults to ``./bnas_runs/<study>``. Raises
    :class:`StoreUnreachable` or :class:`StudyNotFound`.
    """
    out = Path(out_dir).resolve() if out_dir is not None else default_study_dir(study)
    uri = resolve_tracking_uri(tracking_uri, out)
    client = connect(uri)
    exp = client.get_experiment_by_name(experiment_name(study))
    if exp is None or exp.lifecycle_stage != "active":
        raise StudyNotFound(study, uri, list_studies(client))
    parents = search_all(client, exp.experiment_id, runs_filter(study, STUDY_KIND))
    parent = parents[0] if parents else None
    runs = [
        r
        for r in search_all(client, exp.experiment_id, runs_filter(study))
        if r.data.tags.get(Tag.KIND) in (SEARCH.name, RETRAIN.name)
    ]
    return StudyRuns(
        study=study,
        tracking_uri=uri,
        experiment_id=exp.experiment_id,
        parent_run_id=parent.info.run_id if parent else None,
        runs=runs_frame(runs),
        client=client,
        out_dir=out,
    )
