"""MLflow: the one place that writes runs, and the schema the analysis relies on.

Only the driver process writes (through :class:`StudyTracker`, fed by a Tune callback), so a SQLite
store never sees two writers. Trials hand over their artifacts through their Tune checkpoints.

Schema (keep exactly; ``analysis/`` reads it):

* experiment ``bnas/<study>``; one **parent run** per study, run name ``<study>``, tags
  ``bnas.kind=study``, ``bnas.study``.
* one **search run** per search trial, run name ``search-<trial id>``: tags ``mlflow.parentRunId``,
  ``bnas.kind=search``, ``bnas.study``, ``bnas.trial_id``, ``bnas.genotype_digest`` (when derived),
  ``bnas.state`` (``running``, ``complete``, ``pruned`` = stopped early by the scheduler, or
  ``failed``; with ``bnas.error`` on failure, and run status FAILED); params: the trial's resolved
  ExperimentConfig with dotted keys (values cut at :data:`PARAM_MAX_CHARS`) plus the sampled values
  as ``space.<setting>``; metrics per super-network epoch (step = global epoch): ``train_loss``,
  ``train_acc``, ``val_loss``, ``val_acc``, ``ops_per_edge``, ``stage``; final metrics (step 0):
  ``derived_val_acc``, ``supernet_val_acc``, ``search_time_s``, ``params``, ``binary_params``,
  ``fp_params``, ``packed_bytes``, ``fp32_bytes``; artifacts ``genotype.json``, ``history.json``,
  ``metrics.jsonl``, ``config.json`` (the resolved settings), ``cells/normal.png``,
  ``cells/reduce.png``.
* one **retrain run** per (genotype, seed), run name ``retrain-<digest>-s<seed>``: tags
  ``mlflow.parentRunId`` (the study's parent run), ``bnas.kind=retrain``, ``bnas.study``,
  ``bnas.search_run_id``, ``bnas.genotype_digest``, ``bnas.seed``, ``bnas.trial_id``,
  ``bnas.config_digest``, ``bnas.state``; params: the resolved retraining ExperimentConfig;
  metrics per epoch (step = epoch): ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
  ``lr`` (the final ``test_acc``/``test_loss`` are the last epoch's); final (step 0):
  ``wall_time_s``, ``params``, ``binary_params``, ``fp_params``, ``packed_bytes``, ``fp32_bytes``;
  artifacts ``genotype.json``, ``model.bnas``.

No duplicates, also across a resumed driver and retried trials: the trial -> run id map lives in the
study folder (``mlflow_runs.json``, with the last epoch logged per run) and a trial's run is reopened,
never created twice; without the map a run is found again by its ``bnas.trial_id`` tag.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnas.config import ConfigError

PARAM_MAX_CHARS = 500
#: Model-size figures of a derived genotype's evaluation network (:func:`bnas.model_size.size_report`).
SIZE_METRICS = ("params", "binary_params", "fp_params", "packed_bytes", "fp32_bytes")
#: Per-epoch metrics logged from a search trial's results.
SEARCH_EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "ops_per_edge", "stage")
#: Final metrics of a search run (what a finished search trial reports once; objectives pick from it).
SEARCH_FINAL_METRICS = ("derived_val_acc", "supernet_val_acc", "search_time_s", *SIZE_METRICS)
SEARCH_ARTIFACTS = (
    "genotype.json",
    "history.json",
    "metrics.jsonl",
    "config.json",
    "cells/normal.png",
    "cells/reduce.png",
)
RETRAIN_EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
RETRAIN_FINAL_METRICS = ("test_acc", "test_loss", "wall_time_s", *SIZE_METRICS)
RETRAIN_ARTIFACTS = ("genotype.json", "model.bnas")
RUN_MAP = "mlflow_runs.json"


class TrackingError(ConfigError):
    """The tracking store cannot be used (unreachable server, unsupported URI, ...)."""


def default_tracking_uri() -> str:
    """MLflow's own default when nothing is set (``sqlite:///mlflow.db`` in the working directory,
    made absolute), so a plain ``mlflow ui`` started in that folder shows the runs."""
    import mlflow

    return mlflow.get_tracking_uri()


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> str:
    """Raise :class:`TrackingError` unless ``uri`` can be written; returns it (SQLite made absolute).

    Nothing is created here: a SQLite file appears only when the first run is written.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if path is None or not str(path):
            raise TrackingError(f"{uri!r}: expected sqlite:////absolute/path/mlflow.db", key="--mlflow-uri")
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.parent.is_dir():
            raise TrackingError(f"{uri!r}: folder {path.parent} does not exist", key="--mlflow-uri")
        if not os.access(path.parent, os.W_OK):
            raise TrackingError(f"{uri!r}: folder {path.parent} is not writable", key="--mlflow-uri")
        return f"sqlite:///{path.resolve()}"
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - user-given server
                if r.status != 200:
                    raise TrackingError(f"{url} answered HTTP {r.status}", key="--mlflow-uri")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"no MLflow tracking server answers at {uri} ({reason}); start one with `mlflow server "
                f"--backend-store-uri sqlite:////abs/path/mlflow.db --host 127.0.0.1 --port 5000` or leave "
                f"--mlflow-uri out to use a local SQLite store",
                key="--mlflow-uri",
            ) from None
        return uri
    if parsed.scheme in ("", "file"):
        raise TrackingError(
            f"{uri!r}: MLflow's file store (./mlruns) refuses to start since MLflow 3.13; use "
            f"sqlite:////abs/path/mlflow.db or an http:// tracking server",
            key="--mlflow-uri",
        )
    return uri  # another database URL (postgresql://, mysql://): SQLAlchemy reports problems itself


def _now_ms() -> int:
    return int(time.time() * 1000)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrackerConfig:
    """Everything needed to (re)open the tracker; picklable (it travels inside Tune's tuner.pkl)."""

    tracking_uri: str
    study: str
    state_dir: str


class StudyTracker:
    """Writes the MLflow runs of one study (see the module docstring for the schema)."""

    def __init__(self, config: TrackerConfig) -> None:
        from mlflow import MlflowClient

        self.config = config
        self.client = MlflowClient(config.tracking_uri)
        self.map_path = Path(config.state_dir) / RUN_MAP
        name = f"bnas/{config.study}"
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.parent_id = self._parent()

    # ------------------------------------------------------------------ the run-id map
    def _load(self) -> dict[str, Any]:
        if self.map_path.is_file():
            return json.loads(self.map_path.read_text())
        return {"tracking_uri": self.config.tracking_uri, "parent": None, "runs": {}}

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.map_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.map_path)

    def _entry(self, key: str) -> dict[str, Any] | None:
        return self._load()["runs"].get(key)

    def _update(self, key: str, **fields: Any) -> None:
        data = self._load()
        data["runs"].setdefault(key, {}).update(fields)
        self._save(data)

    # ------------------------------------------------------------------ runs
    def _find(self, tags: dict[str, str]) -> str | None:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=1)
        return runs[0].info.run_id if runs else None

    def _parent(self) -> str:
        """The study's parent run (found by the map or its tags, else created)."""
        data = self._load()
        run_id = data.get("parent") or self._find({"bnas.kind": "study", "bnas.study": self.config.study})
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.config.study,
                tags={"bnas.kind": "study", "bnas.study": self.config.study},
            )
            run_id = run.info.run_id
        if data.get("parent") != run_id:
            data["parent"] = run_id
            data.setdefault("tracking_uri", self.config.tracking_uri)
            self._save(data)
        return run_id

    def begin_study(self) -> None:
        """Mark the parent run RUNNING again (a rerun, resume or retraining of the study)."""
        if self.client.get_run(self.parent_id).info.status != "RUNNING":
            self.client.update_run(self.parent_id, status="RUNNING")

    def open_run(
        self, key: str, kind: str, run_name: str, tags: dict[str, str], params: dict[str, Any]
    ) -> str:
        """The run for ``key`` (``<kind>/<trial id>``), created with its tags and params the first time."""
        entry = self._entry(key)
        run_id = (
            entry["run_id"]
            if entry
            else self._find({"bnas.kind": kind, "bnas.trial_id": tags["bnas.trial_id"]})
        )
        if run_id is None:
            all_tags = {
                "mlflow.parentRunId": self.parent_id,
                "bnas.kind": kind,
                "bnas.study": self.config.study,
                "bnas.state": "running",
                **tags,
            }
            run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id
            self._update(key, run_id=run_id, last_step=0, params=False, done=False)
        elif self.client.get_run(run_id).info.status != "RUNNING" and not (entry or {}).get("done"):
            self.client.update_run(run_id, status="RUNNING")
        if not (self._entry(key) or {}).get("params"):
            self._log_params(run_id, params)
            self._update(key, run_id=run_id, params=True)
        return run_id

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, self._param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    @staticmethod
    def _param_value(v: Any) -> str:
        s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        return s if len(s) <= PARAM_MAX_CHARS else s[: PARAM_MAX_CHARS - 3] + "..."

    def log_epoch(self, key: str, metrics: dict[str, Any], step: int) -> None:
        """Per-epoch metrics; a step at or below the last one logged (a resumed trial) is skipped."""
        from mlflow.entities import Metric

        entry = self._entry(key)
        if entry is None or step <= entry.get("last_step", 0):
            return
        ts = _now_ms()
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if _finite(v)]
        if batch:
            self.client.log_batch(entry["run_id"], metrics=batch)
        self._update(key, last_step=step)

    def finish(
        self,
        key: str,
        *,
        state: str,
        final: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        artifact_dir: str | Path | None = None,
        artifacts: tuple[str, ...] = (),
        error: str | None = None,
        epoch_metrics: tuple[str, ...] = (),
        last_epoch: int = 0,
    ) -> None:
        """Final metrics (step 0), artifacts and tags, then close the run (FAILED when ``state`` is
        failed). A final figure that is also a per-epoch metric (``epoch_metrics``, e.g. a retraining's
        ``test_acc``) is its ``last_epoch`` value: logged only if that epoch is not logged yet."""
        from mlflow.entities import Metric, RunTag

        entry = self._entry(key)
        if entry is None or entry.get("done"):
            return
        run_id = entry["run_id"]
        ts = _now_ms()
        metrics = []
        for k, v in (final or {}).items():
            if not _finite(v):
                continue
            if k not in epoch_metrics:
                metrics.append(Metric(k, float(v), ts, 0))
            elif entry.get("last_step", 0) < last_epoch:
                metrics.append(Metric(k, float(v), ts, last_epoch))
        all_tags = {"bnas.state": state, **(tags or {})}
        if error:
            all_tags["bnas.error"] = error[:4000]
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        if artifact_dir is not None:
            for rel in artifacts:
                path = Path(artifact_dir) / rel
                if path.is_file():
                    parent = str(Path(rel).parent)
                    self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
        self.client.set_terminated(run_id, status="FAILED" if state == "failed" else "FINISHED")
        self._update(key, done=True)

    def close_study(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status=status)

    # ------------------------------------------------------------------ reading back
    def runs(self, kind: str, extra_filter: str = "") -> list[Any]:
        """All runs of this study of one kind (``search`` or ``retrain``), newest first."""
        flt = f"tags.`bnas.kind` = '{kind}' and tags.`bnas.study` = '{self.config.study}'"
        if extra_filter:
            flt += f" and {extra_filter}"
        out, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=flt, max_results=1000, page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                return out

    def download(self, run_id: str, path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))


def recorded_tracking_uri(state_dir: str | Path) -> str | None:
    """The tracking URI a study folder was written with (None for a new folder)."""
    path = Path(state_dir) / RUN_MAP
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("tracking_uri")
