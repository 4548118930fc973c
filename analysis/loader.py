"""Read a study's MLflow runs (search and retraining) into one pandas DataFrame.

The schema is the platform's (``bnas/platform/tracking.py``): experiment ``bnas/<study>``, a parent
run (tag ``bnas.kind=study``), one search run per search trial and one retraining run per (genotype,
seed), linked to its search run by the tag ``bnas.search_run_id``. :func:`load_study` returns a
:class:`StudyRuns` whose ``runs`` frame has one row per search or retraining run:

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
search_trial_id           retraining: that search run's trial id
start_time, end_time      pandas timestamps (UTC); ``wall_s`` their difference
device                    the ``device`` setting the trial ran with (``cpu``, ``cuda``, ...)
<metric>                  final figures (``derived_val_acc``, ``test_acc``, ``packed_bytes``, ...);
                          a metric that is also logged per epoch (``test_acc``) takes its final
                          value (step 0) when the run logged one, else its last epoch's
param.<dotted key>        every MLflow param: the resolved settings (``param.binarization.method``)
                          and the sampled values (``param.space.search.sampling_k``), typed
========================  ===================================================================

Works against a local SQLite store and a tracking server alike (only the MLflow client API is used).
Nothing here writes to the store; a SQLite file that does not exist is reported, never created.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

EXPERIMENT_PREFIX = "bnas/"
DEFAULT_OUT_ROOT = Path("bnas_runs")
OPTUNA_DB = "optuna.db"
RUN_MAP = "mlflow_runs.json"
#: Metrics that a run logs both per epoch (step >= 1) and as a final figure (step 0).
FINAL_AT_STEP0 = ("test_acc", "test_loss")
#: Search-run metric histories that :meth:`StudyRuns.search_histories` reads.
SEARCH_CURVE_METRICS = ("val_acc", "train_acc", "stage", "ops_per_edge")


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


# --------------------------------------------------------------------------------------------
# Which store, which folder
# --------------------------------------------------------------------------------------------


def default_out_dir(study: str) -> Path:
    """The platform's default study folder: ``./bnas_runs/<study>`` (absolute)."""
    return (DEFAULT_OUT_ROOT / study).resolve()


def recorded_tracking_uri(out_dir: str | Path) -> str | None:
    """The tracking URI a study folder was written with (``mlflow_runs.json``), or None."""
    path = Path(out_dir) / RUN_MAP
    try:
        return json.loads(path.read_text()).get("tracking_uri") if path.is_file() else None
    except (OSError, ValueError):
        return None


def default_tracking_uri() -> str:
    """What ``run.py`` uses when no ``--mlflow-uri`` is given: MLflow's own default (``sqlite`` file
    ``mlflow.db`` in the working directory, absolute), or ``$MLFLOW_TRACKING_URI``."""
    import mlflow

    return _absolute_sqlite(mlflow.get_tracking_uri())


def _absolute_sqlite(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        return f"sqlite:///{(path if path.is_absolute() else Path.cwd() / path).resolve()}"
    return uri


def resolve_tracking_uri(uri: str | None = None, out_dir: str | Path | None = None) -> str:
    """``uri`` if given; else the URI recorded in the study folder ``out_dir``; else run.py's default."""
    if uri:
        return _absolute_sqlite(uri)
    if out_dir is not None:
        recorded = recorded_tracking_uri(out_dir)
        if recorded:
            return recorded
    return default_tracking_uri()


def _check_store(uri: str, timeout_s: float) -> None:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
            raise StoreUnreachable(
                f"{uri!r} is not a SQLite file URI; expected sqlite:////absolute/path/mlflow.db."
            )
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise StoreUnreachable(
                f"there is no MLflow store at {path} (the SQLite file does not exist, so nothing has been "
                f"tracked there). Run a study first (`python run.py --study NAME`), or pass the store it "
                f"used with --mlflow-uri (e.g. sqlite:////abs/path/mlflow.db or http://host:5000), or the "
                f"study folder with --out."
            )
        if not os.access(path, os.R_OK):
            raise StoreUnreachable(f"the MLflow store {path} exists but cannot be read (permissions).")
    elif parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - a user-given server
                if r.status != 200:
                    raise StoreUnreachable(f"the MLflow server at {uri} answered HTTP {r.status} on /health.")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StoreUnreachable(
                f"no MLflow tracking server answers at {uri} ({reason}). Start it (`mlflow server "
                f"--backend-store-uri sqlite:////abs/path/mlflow.db --host 127.0.0.1 --port 5000`), check "
                f"the address, or leave --mlflow-uri out to read the local store."
            ) from None
    elif parsed.scheme in ("", "file"):
        raise StoreUnreachable(
            f"{uri!r}: the platform tracks in a SQLite file or a tracking server, not in a file store; "
            f"pass --mlflow-uri sqlite:////abs/path/mlflow.db or http://host:port."
        )


def connect(uri: str, timeout_s: float = 5.0) -> Any:
    """An ``MlflowClient`` for ``uri`` that has been seen to answer; else :class:`StoreUnreachable`."""
    _check_store(uri, timeout_s)
    _quiet_mlflow()
    from mlflow import MlflowClient

    # A server that stops answering mid-way should fail in seconds, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - whatever the store raises, the user gets one paragraph
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreUnreachable(f"the MLflow store {uri} cannot be read: {first}") from None
    return client


def list_studies(client: Any) -> list[str]:
    """Names of the studies in the store (experiments ``bnas/<study>``), sorted."""
    exps = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", max_results=1000)
    return sorted(e.name[len(EXPERIMENT_PREFIX) :] for e in exps)


# --------------------------------------------------------------------------------------------
# Runs -> DataFrame
# --------------------------------------------------------------------------------------------


def parse_param(value: str) -> Any:
    """An MLflow param string back to a Python scalar: ``"4"`` -> 4, ``"0.025"`` -> 0.025, ``"True"``
    -> True, ``"None"`` -> None; anything else (lists, names) stays a string."""
    if value in ("True", "False"):
        return value == "True"
    if value in ("None", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def _reference_digests() -> dict[str, str]:
    from bnas.genotype import GENOTYPES

    return {GENOTYPES.get(n).digest: n for n in GENOTYPES.names()}


def _final_value(client: Any, run_id: str, key: str) -> float | None:
    """The step-0 (final) value of ``key`` if the run logged one, else None."""
    hist = client.get_metric_history(run_id, key)
    finals = [m for m in hist if m.step == 0]
    if not finals:
        return None
    return max(finals, key=lambda m: m.timestamp).value


def _search_all(client: Any, experiment_id: str, flt: str) -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=flt, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def runs_frame(client: Any, runs: list[Any]) -> pd.DataFrame:
    """One row per run (columns: see the module docstring), search runs first, each kind by start."""
    refs = _reference_digests()
    rows = []
    for r in runs:
        tags, info = r.data.tags, r.info
        kind = tags.get("bnas.kind", "")
        digest = tags.get("bnas.genotype_digest") or None
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "kind": kind,
            "status": info.status,
            "state": tags.get("bnas.state", ""),
            "study": tags.get("bnas.study", ""),
            "trial_id": tags.get("bnas.trial_id"),
            "seed": int(tags["bnas.seed"]) if tags.get("bnas.seed", "").lstrip("-").isdigit() else None,
            "genotype_digest": digest,
            "genotype_name": tags.get("bnas.genotype_name") or refs.get(digest or "", ""),
            "search_run_id": tags.get("bnas.search_run_id"),
            "error": tags.get("bnas.error"),
            "start_time": info.start_time,
            "end_time": info.end_time,
        }
        metrics = dict(r.data.metrics)
        if kind == "retrain":
            for key in FINAL_AT_STEP0:
                if key in metrics:
                    final = _final_value(client, info.run_id, key)
                    if final is not None:
                        metrics[key] = final
        row.update(metrics)
        row.update({f"param.{k}": parse_param(v) for k, v in r.data.params.items()})
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
    df["device"] = df["param.device"] if "param.device" in df else None
    trial_of = dict(zip(df["run_id"], df["trial_id"]))
    df["search_trial_id"] = [trial_of.get(s) if isinstance(s, str) else None for s in df["search_run_id"]]
    order = {"search": 0, "retrain": 1}
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
        return self.runs[self.runs["kind"] == "search"].reset_index(drop=True)

    @property
    def retrain(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == "retrain"].reset_index(drop=True)

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
        with tempfile.TemporaryDirectory() as tmp:
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
        return load_optuna_study(self.study, self.out_dir or default_out_dir(self.study))


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
    out = Path(out_dir).resolve() if out_dir is not None else default_out_dir(study)
    uri = resolve_tracking_uri(tracking_uri, out)
    client = connect(uri)
    exp = client.get_experiment_by_name(f"{EXPERIMENT_PREFIX}{study}")
    if exp is None or exp.lifecycle_stage != "active":
        raise StudyNotFound(study, uri, list_studies(client))
    parents = _search_all(client, exp.experiment_id, "tags.`bnas.kind` = 'study'")
    parent = next((p for p in parents if p.data.tags.get("bnas.study") == study), None)
    runs = [
        r
        for r in _search_all(client, exp.experiment_id, f"tags.`bnas.study` = '{study}'")
        if r.data.tags.get("bnas.kind") in ("search", "retrain")
    ]
    return StudyRuns(
        study=study,
        tracking_uri=uri,
        experiment_id=exp.experiment_id,
        parent_run_id=parent.info.run_id if parent else None,
        runs=runs_frame(client, runs),
        client=client,
        out_dir=out,
    )


def is_number(v: Any) -> bool:
    """A finite int or float (not bool, not NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
