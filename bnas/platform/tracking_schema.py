"""The MLflow tracking schema: the one contract between the platform (writer) and ``analysis/`` (reader).

Everything both sides must agree on lives here and nowhere else: names, the study folder's files,
where the store is, whether it answers and how runs are read back (the leaderboard built from them is
:mod:`bnas.platform.leaderboard`). Imports MLflow
lazily and never Ray or Optuna, so ``analysis/`` and the tests use it without a cluster.

Schema [D]:

* experiment ``bnas/<study>`` (tag ``mlflow.experimentKind=custom_model_development``: model
  training, :mod:`bnas.platform.mlflow_ui`); one **parent run** per study, run name ``<study>``, tags
  ``bnas.kind=study``, ``bnas.study``, ``bnas.study_identity`` (what its trials compute:
  :mod:`bnas.platform.identity`; a run of the same name with another identity is refused) with
  ``bnas.study_identity_record``, ``bnas.dataset_root``; params ``dataset.*`` (name, image size,
  class count, subsets, content fingerprint) and the dataset as an MLflow dataset input; the analysis
  report is logged to it as artifacts ``report/``.
* one **search run** per search trial, run name ``search-<trial id>``: tags ``mlflow.parentRunId``,
  ``bnas.kind=search``, ``bnas.study``, ``bnas.trial_id``, ``bnas.genotype_digest`` (when derived),
  ``bnas.state`` (``running``, ``complete``, ``pruned`` = stopped early by the scheduler, or
  ``failed``; with ``bnas.error`` on failure, and run status FAILED; a pruned run's status is
  KILLED); params: the trial's resolved
  ExperimentConfig with dotted keys (values cut at :data:`PARAM_MAX_CHARS`) plus the sampled values
  as ``space.<setting>``; metrics per super-network epoch (step = global epoch):
  :data:`SEARCH_EPOCH_METRICS`; final metrics (step 0): :data:`SEARCH_FINAL_METRICS`; artifacts
  :data:`SEARCH_ARTIFACTS` (``config.json`` holds the resolved settings).
* one **retrain run** per (genotype, seed), run name ``retrain-<digest>-s<seed>``: tags
  ``mlflow.parentRunId`` (the study's parent run), ``bnas.kind=retrain``, ``bnas.study``,
  ``bnas.search_run_id``, ``bnas.genotype_digest``, ``bnas.seed``, ``bnas.trial_id``,
  ``bnas.config_digest``, ``bnas.state`` (a retrained reference genotype has ``bnas.genotype_name``
  instead of ``bnas.search_run_id``); params: the resolved retraining ExperimentConfig; metrics per
  epoch (step = epoch): :data:`RETRAIN_EPOCH_METRICS` (the final ``test_acc``/``test_loss`` are the
  last epoch's); final (step 0): :data:`RETRAIN_FINAL_METRICS` less those two; artifacts
  :data:`RETRAIN_ARTIFACTS`; its network as an MLflow **Logged Model** named :data:`LOGGED_MODEL_NAME`
  (``mlflow.pytorch``, pt2, signature and input example at the study's image size), registered as a
  version of ``bnas-<study>`` (:func:`registered_model_name`) with :class:`ModelTag` tags (the Logged
  Model names its versions in its tag ``mlflow.modelVersions``, as MLflow's registration does); the alias
  :data:`CHAMPION_ALIAS` names the best architecture's version (:mod:`bnas.platform.models`).

Study folder (``./bnas_runs/<study>`` by default): :data:`RUN_MAP` maps each trial to its run (and
records the tracking URI the folder was written with), :data:`OPTUNA_DB` holds the Optuna study.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnas.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

EXPERIMENT_PREFIX = "bnas/"
#: [D] Values of a param are cut to this many characters (MLflow's limit is higher but varies by store).
PARAM_MAX_CHARS = 500
#: Sampled values are logged a second time as ``space.<setting>`` params.
SPACE_PREFIX = "space."
#: The setting that splits a genotype's leaderboard rows (a full-precision retraining is another row).
BINARIZATION_SETTING = "binarization.method"
#: Run records (and the analysis DataFrame) hold each param ``k`` as ``param.<k>``.
PARAM_COLUMN = "param."


class Tag:
    """Run tag keys."""

    PARENT, KIND, STUDY, STATE = "mlflow.parentRunId", "bnas.kind", "bnas.study", "bnas.state"
    TRIAL_ID, SEED, ERROR = "bnas.trial_id", "bnas.seed", "bnas.error"
    GENOTYPE_DIGEST, GENOTYPE_NAME = "bnas.genotype_digest", "bnas.genotype_name"
    SEARCH_RUN_ID, CONFIG_DIGEST = "bnas.search_run_id", "bnas.config_digest"
    #: On the parent run: what its trials compute (bnas.platform.identity) and where the data was read.
    IDENTITY, IDENTITY_RECORD = "bnas.study_identity", "bnas.study_identity_record"
    DATASET_ROOT = "bnas.dataset_root"
    #: On a retraining run whose network could not be logged as a model or registered: why.
    MODEL_ERROR = "bnas.model_error"


class State:
    """Values of the ``bnas.state`` tag."""

    RUNNING, COMPLETE, PRUNED, FAILED = "running", "complete", "pruned", "failed"


class Metric:
    """Metric names (a search or retraining trial reports them under the same names)."""

    TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC = "train_loss", "train_acc", "val_loss", "val_acc"
    OPS_PER_EDGE, STAGE = "ops_per_edge", "stage"
    DERIVED_VAL_ACC, SUPERNET_VAL_ACC, SEARCH_TIME_S = "derived_val_acc", "supernet_val_acc", "search_time_s"
    PROXY_VAL_ACC = "proxy_val_acc"
    PARAM_FREE_NORMAL, PARAM_FREE_REDUCE = "param_free_normal", "param_free_reduce"
    TEST_LOSS, TEST_ACC, LR, WALL_TIME_S = "test_loss", "test_acc", "lr", "wall_time_s"
    PARAMS, BINARY_PARAMS, FP_PARAMS = "params", "binary_params", "fp_params"
    PACKED_BYTES, FP32_BYTES = "packed_bytes", "fp32_bytes"


class Artifact:
    """Artifact paths inside a run."""

    GENOTYPE, HISTORY, METRICS, CONFIG = "genotype.json", "history.json", "metrics.jsonl", "config.json"
    DIAGNOSTICS = "diagnostics.json"
    NORMAL_CELL, REDUCE_CELL = "cells/normal.png", "cells/reduce.png"
    MODEL = "model.bnas"
    REPORT = "report"  # folder on the parent run (analysis.report)


# Models: every finished retraining logs its network as an MLflow Logged Model (``LOGGED_MODEL_NAME``,
# linked to its run) registered as a version of ``bnas-<study>``; the alias ``champion`` names the best
# architecture's version (bnas.platform.models).
LOGGED_MODEL_NAME = "model"
REGISTERED_MODEL_PREFIX = "bnas-"
CHAMPION_ALIAS = "champion"


class ModelTag:
    """Tags of a registered model version (and of its Logged Model)."""

    GENOTYPE_DIGEST, BINARIZATION = "bnas.genotype_digest", "bnas.binarization"
    ACTIVATIONS = "bnas.activations"
    SEED, TEST_ACC, PACKED_BYTES = "bnas.seed", "bnas.test_acc", "bnas.packed_bytes"
    STUDY, RUN_ID, IMAGE_SIZE = "bnas.study", "bnas.run_id", "bnas.image_size"


def registered_model_name(study: str) -> str:
    """The registered model holding a study's retrained networks: ``bnas-<study>``."""
    return f"{REGISTERED_MODEL_PREFIX}{study}"


#: Model-size figures of a derived genotype's evaluation network (:func:`bnas.model_size.size_report`).
SIZE_METRICS = (Metric.PARAMS, Metric.BINARY_PARAMS, Metric.FP_PARAMS, Metric.PACKED_BYTES, Metric.FP32_BYTES)
SEARCH_EPOCH_METRICS = (
    Metric.TRAIN_LOSS,
    Metric.TRAIN_ACC,
    Metric.VAL_LOSS,
    Metric.VAL_ACC,
    Metric.OPS_PER_EDGE,
    Metric.STAGE,
)
#: Final metrics of a search run (what a finished search trial reports once; objectives pick from it).
SEARCH_FINAL_METRICS = (
    Metric.DERIVED_VAL_ACC,
    Metric.PROXY_VAL_ACC,
    Metric.SUPERNET_VAL_ACC,
    Metric.SEARCH_TIME_S,
    Metric.PARAM_FREE_NORMAL,
    Metric.PARAM_FREE_REDUCE,
    *SIZE_METRICS,
)
#: A search run's per-stage decision diagnostics (``diagnostics.json``, :mod:`bnas.diagnostics`) are
#: logged as metrics ``diag.<name>`` with step = stage (1-based).
DIAGNOSTIC_PREFIX = "diag."
SEARCH_ARTIFACTS = (
    Artifact.GENOTYPE,
    Artifact.HISTORY,
    Artifact.DIAGNOSTICS,
    Artifact.METRICS,
    Artifact.CONFIG,
    Artifact.NORMAL_CELL,
    Artifact.REDUCE_CELL,
)
RETRAIN_EPOCH_METRICS = (Metric.TRAIN_LOSS, Metric.TRAIN_ACC, Metric.TEST_LOSS, Metric.TEST_ACC, Metric.LR)
RETRAIN_FINAL_METRICS = (Metric.TEST_ACC, Metric.TEST_LOSS, Metric.WALL_TIME_S, *SIZE_METRICS)
RETRAIN_ARTIFACTS = (Artifact.GENOTYPE, Artifact.MODEL)


@dataclass(frozen=True)
class RunKind:
    """A kind of trial run: the ``bnas.kind`` value and what such a run logs."""

    name: str
    epoch_metrics: tuple[str, ...]
    final_metrics: tuple[str, ...]
    artifacts: tuple[str, ...]

    def key(self, trial_id: str) -> str:
        """The trial's entry in the run-id map."""
        return f"{self.name}/{trial_id}"


STUDY_KIND = "study"  # the parent run
SEARCH = RunKind("search", SEARCH_EPOCH_METRICS, SEARCH_FINAL_METRICS, SEARCH_ARTIFACTS)
RETRAIN = RunKind("retrain", RETRAIN_EPOCH_METRICS, RETRAIN_FINAL_METRICS, RETRAIN_ARTIFACTS)


def experiment_name(study: str) -> str:
    return f"{EXPERIMENT_PREFIX}{study}"


def search_run_name(trial_id: str) -> str:
    return f"{SEARCH.name}-{trial_id}"


def retrain_run_name(genotype_digest: str, seed: int) -> str:
    return f"{RETRAIN.name}-{genotype_digest}-s{seed}"


#: Significant digits kept of a float written as a param or tag: more are noise (a float32 figure read
#: as a double, 0.33099999874830244 for 0.331; a sampled step of 0.1, 0.30000000000000004).
FLOAT_DIGITS = 6


def rounded(v: Any) -> Any:
    """``v`` with each finite float (numpy's too; inside lists, tuples and dict values as well) cut to
    :data:`FLOAT_DIGITS` significant digits; anything else as it is."""
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and math.isfinite(v):
        return float(f"{float(v):.{FLOAT_DIGITS}g}")
    if isinstance(v, (list, tuple)):
        return type(v)(rounded(x) for x in v) if type(v) in (list, tuple) else v
    return {k: rounded(x) for k, x in v.items()} if isinstance(v, dict) else v


def param_value(v: Any) -> str:
    """A setting as an MLflow param string: floats :func:`rounded`, lists and dicts as JSON, cut at
    :data:`PARAM_MAX_CHARS`."""
    v = rounded(v)
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= PARAM_MAX_CHARS else s[: PARAM_MAX_CHARS - 3] + "..."


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


def is_number(v: Any) -> bool:
    """A finite real number (not bool, not NaN; numpy scalars too): a metric value that can be logged
    or ranked."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------------------------
# The study folder: default place, run-id map, Optuna storage
# --------------------------------------------------------------------------------------------

DEFAULT_OUT_ROOT = Path("bnas_runs")
RUN_MAP = "mlflow_runs.json"
OPTUNA_DB = "optuna.db"


def default_study_dir(study: str) -> Path:
    """``./bnas_runs/<study>``, absolute."""
    return (DEFAULT_OUT_ROOT / study).resolve()


def read_folder_json(path: Path, shape: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any] | None:
    """A study folder's own JSON file (None when absent): a mapping whose keys in ``shape`` hold values
    of those types. Anything else (truncated, edited, another file) is a :class:`TrackingError` naming
    the file, never a traceback halfway through a resumed study."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = f"not readable as JSON: {e}"
    else:
        wrong = (
            [k for k, t in shape.items() if k in data and not isinstance(data[k], t)]
            if isinstance(data, dict)
            else ["the whole file"]
        )
        if not wrong:
            return data
        why = f"{', '.join(wrong)} not what the study writes"
    raise TrackingError(
        f"{path.name} is damaged ({why}); it records this study folder's runs: restore it, or run the study "
        "in a new folder (--out) or under another --name",
        str(path.parent),
    )


class RunMap:
    """``<study folder>/mlflow_runs.json``: the tracking URI, the parent run and, per trial key
    (:meth:`RunKind.key`), ``run_id``, ``last_step`` logged, ``params`` logged and ``done``. A resumed
    driver reopens a trial's run from it instead of creating a second one."""

    def __init__(self, study_dir: str | Path, tracking_uri: str) -> None:
        self.path = Path(study_dir) / RUN_MAP
        self.tracking_uri = tracking_uri

    def load(self) -> dict[str, Any]:
        data = read_folder_json(self.path, {"tracking_uri": str, "parent": (str, type(None)), "runs": dict})
        if data is None:
            return {"tracking_uri": self.tracking_uri, "parent": None, "runs": {}}
        data.setdefault("runs", {})
        bad = [k for k, v in data["runs"].items() if not isinstance(v, dict)]
        if bad:
            raise TrackingError(
                f"{RUN_MAP} is damaged (runs.{bad[0]} is not a mapping); restore it, or run the study in a "
                "new folder (--out) or under another --name",
                str(self.path.parent),
            )
        return data

    def save(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)  # atomic: a killed driver never leaves half a map

    def entry(self, key: str) -> dict[str, Any] | None:
        return self.load()["runs"].get(key)

    def update(self, key: str, **fields: Any) -> None:
        data = self.load()
        data["runs"].setdefault(key, {}).update(fields)
        self.save(data)

    def set_parent(self, run_id: str) -> None:
        data = self.load()
        if data.get("parent") != run_id:
            data["parent"] = run_id
            data.setdefault("tracking_uri", self.tracking_uri)
            self.save(data)


def recorded_tracking_uri(study_dir: str | Path) -> str | None:
    """The tracking URI a study folder was written with (None for a new or unreadable folder)."""
    path = Path(study_dir) / RUN_MAP
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    uri = data.get("tracking_uri") if isinstance(data, dict) else None
    return uri if isinstance(uri, str) else None


# --------------------------------------------------------------------------------------------
# Where the store is, and whether it answers
# --------------------------------------------------------------------------------------------


class TrackingError(ConfigError):
    """The tracking store cannot be used (unreachable server, unsupported URI, missing file, ...)."""


def absolute_sqlite(uri: str) -> str:
    """A ``sqlite:///relative.db`` URI made absolute (trials run in other working directories)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        return f"sqlite:///{(path if path.is_absolute() else Path.cwd() / path).resolve()}"
    return uri


def default_tracking_uri() -> str:
    """MLflow's own default (``sqlite:///mlflow.db`` in the working directory, made absolute; MLflow
    itself honours ``$MLFLOW_TRACKING_URI``), so a plain ``mlflow ui`` started there shows the runs."""
    import mlflow

    return absolute_sqlite(mlflow.get_tracking_uri())


def resolve_tracking_uri(uri: str | None = None, study_dir: str | Path | None = None) -> str:
    """``uri`` if given; else the URI recorded in the study folder; else :func:`default_tracking_uri`."""
    if uri:
        return absolute_sqlite(uri)
    recorded = recorded_tracking_uri(study_dir) if study_dir is not None else None
    return recorded or default_tracking_uri()


def probe_store(uri: str, *, write: bool, timeout_s: float = 5.0) -> str:
    """Check that the store at ``uri`` can be written (``write``) or read; returns the URI (SQLite
    made absolute). Raises :class:`TrackingError`. Never creates anything: a SQLite file appears only
    when the first run is written, and reading requires it to exist.
    """
    key = "--mlflow-uri" if write else None
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
            raise TrackingError(
                f"{uri!r} is not a SQLite file URI; expected sqlite:////absolute/path/mlflow.db", key=key
            )
        uri = absolute_sqlite(uri)
        path = Path(uri[len("sqlite:///") :])
        if write and not path.parent.is_dir():
            raise TrackingError(f"{uri!r}: folder {path.parent} does not exist", key=key)
        if write and not os.access(path.parent, os.W_OK):
            raise TrackingError(f"{uri!r}: folder {path.parent} is not writable", key=key)
        if not write and not path.is_file():
            raise TrackingError(
                f"there is no MLflow store at {path} (the SQLite file does not exist, so nothing has been "
                f"tracked there). Run a study first (`python run.py --study NAME`), or pass the store it "
                f"used with --mlflow-uri (e.g. sqlite:////abs/path/mlflow.db or http://host:5000), or the "
                f"study folder with --out."
            )
        if not write and not os.access(path, os.R_OK):
            raise TrackingError(f"the MLflow store {path} exists but cannot be read (permissions).")
        return uri
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:  # noqa: S310
                status = r.status
        except (urllib.error.URLError, OSError) as e:
            todo = "leave --mlflow-uri out to use a local SQLite store" if write else "check the address"
            raise TrackingError(
                f"no MLflow tracking server answers at {uri} ({getattr(e, 'reason', e)}); start one with "
                f"`mlflow server --backend-store-uri sqlite:////abs/path/mlflow.db --host 127.0.0.1 --port "
                f"5000`, or {todo}",
                key=key,
            ) from None
        if status != 200:
            raise TrackingError(f"the MLflow server at {uri} answered HTTP {status} on /health", key=key)
        return uri
    if parsed.scheme in ("", "file"):
        raise TrackingError(
            f"{uri!r}: MLflow's file store (./mlruns) refuses to start since MLflow 3.13, so the platform "
            f"tracks in a SQLite file or a tracking server, not in a file store; use "
            f"sqlite:////abs/path/mlflow.db or an http:// tracking server",
            key=key,
        )
    return uri  # another database URL (postgresql://, mysql://): SQLAlchemy reports problems itself


# --------------------------------------------------------------------------------------------
# Reading runs back
# --------------------------------------------------------------------------------------------


def runs_filter(
    study: str, kind: str | None = None, *, state: str | None = None, status: str | None = None
) -> str:
    """An MLflow ``filter_string`` for the runs of ``study`` (of one kind, ``bnas.state``, run status)."""
    tags = {Tag.STUDY: study, Tag.KIND: kind, Tag.STATE: state}
    parts = [f"tags.`{k}` = '{v}'" for k, v in tags.items() if v is not None]
    if status is not None:
        parts.append(f"attributes.status = '{status}'")
    return " and ".join(parts)


def search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run matching ``filter_string``, newest first, read page by page (1000 a page)."""
    out, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def list_studies(client: Any) -> list[str]:
    """Names of the studies in the store (experiments ``bnas/<study>``), sorted."""
    exps = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", max_results=1000)
    return sorted(e.name[len(EXPERIMENT_PREFIX) :] for e in exps)


def text(v: Any) -> str:
    """A tag or record value as a string; missing values (None, NaN, pandas NA) as ``""``."""
    return v if isinstance(v, str) else ""


def run_record(run: Any) -> dict[str, Any]:
    """One MLflow run as a flat record: ``run_id``, ``run_name``, ``kind``, ``status``, ``state``,
    ``study``, ``trial_id``, ``seed``, ``genotype_digest``, ``genotype_name``, ``search_run_id``,
    ``config_digest``, ``error``, ``start_time``/``end_time`` (ms), every metric's latest value under
    its own name and every param ``k`` as ``param.<k>`` (typed by :func:`parse_param`)."""
    tags, info = run.data.tags, run.info
    seed = tags.get(Tag.SEED, "")
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "kind": tags.get(Tag.KIND, ""),
        "status": info.status,
        "state": tags.get(Tag.STATE, ""),
        "study": tags.get(Tag.STUDY, ""),
        "trial_id": tags.get(Tag.TRIAL_ID),
        "seed": int(seed) if seed.lstrip("-").isdigit() else None,
        "genotype_digest": tags.get(Tag.GENOTYPE_DIGEST) or None,
        "genotype_name": tags.get(Tag.GENOTYPE_NAME) or "",
        "search_run_id": tags.get(Tag.SEARCH_RUN_ID),
        "config_digest": tags.get(Tag.CONFIG_DIGEST),
        "error": tags.get(Tag.ERROR),
        "start_time": info.start_time,
        "end_time": info.end_time,
        **run.data.metrics,
        **{f"{PARAM_COLUMN}{k}": parse_param(v) for k, v in run.data.params.items()},
    }
