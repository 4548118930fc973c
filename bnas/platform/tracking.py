"""MLflow: the one place that writes runs, in the schema of :mod:`bnas.platform.tracking_schema`.

Only the driver process writes (through :class:`StudyTracker`, fed by the Tune callback of
:mod:`bnas.platform.callbacks`), so a SQLite store never sees two writers. Trials hand over their
artifacts through their Tune checkpoints.

No duplicates, also across a resumed driver and retried trials: the trial -> run id map lives in the
study folder (:class:`~bnas.platform.tracking_schema.RunMap`, with the last epoch logged per run) and a
trial's run is reopened, never created twice; without the map a run is found again by its
``bnas.trial_id`` tag. Imports MLflow lazily and never Ray: the analysis tests write their fake study
through this class too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnas.errors import ConfigError
from bnas.platform.mlflow_ui import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, mark_model_training
from bnas.platform.tracking_schema import (
    DIAGNOSTIC_PREFIX,
    RETRAIN,
    SEARCH,
    SEARCH_FINAL_METRICS,  # noqa: F401  (re-exported for bnas.platform.study)
    SPACE_PREFIX,
    STUDY_KIND,
    Artifact,
    RunKind,
    RunMap,
    State,
    Tag,
    experiment_name,
    is_number,
    param_value,
    retrain_run_name,
    rounded,
    runs_filter,
    search_all,
    search_run_name,
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _diagnostic_metrics(path: Path, ts: int) -> list[Any]:
    """A search's per-stage decision diagnostics (``diagnostics.json``) as ``diag.<name>`` metrics with
    step = stage; nothing when the file is missing or unreadable (older runs)."""
    from mlflow.entities import Metric

    try:
        stages = json.loads(path.read_text())["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    out = []
    for st in stages if isinstance(stages, list) else []:
        step = st.get("stage") if isinstance(st, dict) else None
        if not isinstance(step, int):
            continue
        for k, v in st.items():
            if k != "stage" and is_number(v):
                out.append(Metric(f"{DIAGNOSTIC_PREFIX}{k}", float(v), ts, step))
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two identity records
    (:func:`bnas.platform.identity.identity_record`)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


class StudyIdentityError(ConfigError):
    """A study name already names a study that computed something else (other data or settings)."""


def check_parent_identity(parent: Any, config: TrackerConfig) -> None:
    """Refuse to add to a parent run whose recorded identity differs from ``config.identity``.

    A parent without an identity (written before identities existed, or by a reader) is accepted.
    """
    recorded = parent.data.tags.get(Tag.IDENTITY)
    if not config.identity or not recorded or recorded == config.identity:
        return
    try:
        old = json.loads(parent.data.tags.get(Tag.IDENTITY_RECORD) or "{}")
        new = json.loads(config.identity_record or "{}")
        diff = differences(old, new)
    except ValueError:
        diff = []
    what = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "") if diff else "?"
    raise StudyIdentityError(
        f"the study name {config.study!r} is taken in this MLflow store by a study run with other "
        f"settings or data (identity {recorded}, this run {config.identity}; differs in: {what}). Runs "
        f"of one name must compute the same thing, or their trials would be ranked together. Give this "
        f"one its own name with --name NAME (and its own --out), or use another --mlflow-uri",
        key="--name",
    )


@dataclass(frozen=True)
class TrackerConfig:
    """Everything needed to (re)open the tracker; picklable (it travels inside Tune's tuner.pkl)."""

    tracking_uri: str
    study: str
    state_dir: str
    #: :func:`bnas.platform.identity.study_identity` of the run (None: not checked, e.g. a reader).
    identity: str | None = None
    #: What the identity digests (JSON), kept on the parent run so a refusal can name the differences.
    identity_record: str | None = None


def artifact_root(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store (``<store folder>/mlartifacts``,
    whatever the working directory; MLflow's own default is ``./mlruns`` of the process that creates
    the experiment), the server's choice for a tracking server (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()


class StudyTracker:
    """Writes the MLflow runs of one study (the schema: :mod:`bnas.platform.tracking_schema`)."""

    def __init__(self, config: TrackerConfig) -> None:
        from mlflow import MlflowClient

        self.config = config
        self.client = MlflowClient(config.tracking_uri)
        self.map = RunMap(config.state_dir, config.tracking_uri)
        self._checked_steps: set[str] = set()  # runs whose last logged step was read back (log_epoch)
        name = experiment_name(config.study)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            # A model-training experiment, not MLflow 3's default GenAI one (bnas.platform.mlflow_ui).
            self.experiment_id = self.client.create_experiment(
                name,
                artifact_location=artifact_root(config.tracking_uri),
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
            )
        else:
            self.experiment_id = exp.experiment_id
            mark_model_training(self.client, exp)  # one created before the kind was set
        self.parent_id = self._parent()

    # ------------------------------------------------------------------ the study's parent run
    def _find(self, tags: dict[str, str]) -> str | None:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=1)
        return runs[0].info.run_id if runs else None

    def _parent(self) -> str:
        """The study's parent run (found by the map or its tags, else created)."""
        tags = {Tag.KIND: STUDY_KIND, Tag.STUDY: self.config.study}
        run_id = self.map.load().get("parent") or self._find(tags)
        if run_id is None:
            if self.config.identity:
                tags[Tag.IDENTITY] = self.config.identity
                tags[Tag.IDENTITY_RECORD] = self.config.identity_record or ""
            run = self.client.create_run(self.experiment_id, run_name=self.config.study, tags=tags)
            run_id = run.info.run_id
        else:
            check_parent_identity(self.client.get_run(run_id), self.config)
        self.map.set_parent(run_id)
        return run_id

    def log_dataset(self, params: Mapping[str, Any], root: str, profile: Mapping[str, Any]) -> None:
        """The study's dataset on the parent run: ``dataset.*`` params (fixed by the study's identity),
        its root as a tag (a copy elsewhere with the same content is the same study) and an MLflow
        dataset input (name, content digest, source), shown in the UI's Datasets column."""
        from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag

        run = self.client.get_run(self.parent_id)
        if not all(k in run.data.params for k in params):
            self._log_params(self.parent_id, {k: v for k, v in params.items() if k not in run.data.params})
        self.client.log_batch(self.parent_id, tags=[RunTag(Tag.DATASET_ROOT, root)])
        name, digest = str(params.get("dataset.name")), str(params.get("dataset.fingerprint"))
        inputs = run.inputs.dataset_inputs if run.inputs else []
        logged = {(d.dataset.name, d.dataset.digest) for d in inputs}
        if (name, digest) not in logged:
            dataset = Dataset(
                name=name,
                digest=digest,
                source_type="local",
                source=json.dumps({"uri": root}),
                profile=json.dumps(rounded(dict(profile)), default=str),
            )
            context = InputTag(key="mlflow.data.context", value="search+retraining")
            self.client.log_inputs(self.parent_id, datasets=[DatasetInput(dataset, tags=[context])])

    def begin_study(self) -> None:
        """Mark the parent run RUNNING again (a rerun, resume or retraining of the study)."""
        if self.client.get_run(self.parent_id).info.status != "RUNNING":
            self.client.update_run(self.parent_id, status="RUNNING")

    def close_study(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status=status)

    def end_open_runs(self, status: str = "FAILED") -> int:
        """Mark this study's trial runs that MLflow still shows RUNNING with ``status`` (a driver that
        stops on an error would otherwise leave them running for ever; ``--resume`` reopens them, since
        the run map does not mark them done). Best effort: it never hides the error that stopped the
        study. Returns how many runs it ended."""
        ended = 0
        try:
            runs = self.map.load()["runs"]
        except Exception:  # noqa: BLE001  (a damaged map: nothing to end from it)
            return 0
        for entry in runs.values():
            run_id = entry.get("run_id")
            if not isinstance(run_id, str) or entry.get("done"):
                continue
            try:
                if self.client.get_run(run_id).info.status == "RUNNING":
                    self.client.set_terminated(run_id, status=status)
                    ended += 1
            except Exception:  # noqa: BLE001  (a store that is full or gone: leave the rest as they are)
                break
        return ended

    # ------------------------------------------------------------------ trial runs
    def open_search_run(self, trial_id: str, settings: Mapping[str, Any], sampled: Mapping[str, Any]) -> str:
        """The run of search trial ``trial_id``; params: its resolved ``settings`` (dotted keys) and the
        ``sampled`` values again as ``space.<setting>``."""
        params = {**settings, **{f"{SPACE_PREFIX}{k}": v for k, v in sampled.items()}}
        return self._open(SEARCH, trial_id, search_run_name(trial_id), {}, params)

    def open_retrain_run(
        self,
        trial_id: str,
        params: Mapping[str, Any],
        *,
        genotype_digest: str,
        seed: int,
        search_run_id: str | None = None,
        config_digest: str | None = None,
        genotype_name: str | None = None,
    ) -> str:
        """The run of retraining trial ``trial_id``: ``genotype_digest`` trained with ``seed``, found by
        the search run ``search_run_id`` (or a reference genotype ``genotype_name``)."""
        tags = {
            Tag.SEARCH_RUN_ID: search_run_id,
            Tag.GENOTYPE_DIGEST: genotype_digest,
            Tag.SEED: str(seed),
            Tag.CONFIG_DIGEST: config_digest,
            Tag.GENOTYPE_NAME: genotype_name,
        }
        name = retrain_run_name(genotype_digest, seed)
        return self._open(RETRAIN, trial_id, name, {k: v for k, v in tags.items() if v is not None}, params)

    def _open(
        self, kind: RunKind, trial_id: str, run_name: str, tags: dict[str, str], params: Mapping[str, Any]
    ) -> str:
        """The trial's run, created with its tags and params the first time, reopened afterwards."""
        key = kind.key(trial_id)
        entry = self.map.entry(key)
        run_id = entry["run_id"] if entry else self._find({Tag.KIND: kind.name, Tag.TRIAL_ID: trial_id})
        if run_id is None:
            all_tags = {
                Tag.PARENT: self.parent_id,
                Tag.KIND: kind.name,
                Tag.STUDY: self.config.study,
                Tag.STATE: State.RUNNING,
                Tag.TRIAL_ID: trial_id,
                **tags,
            }
            run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id
            self.map.update(key, run_id=run_id, last_step=0, params=False, done=False)
        elif self.client.get_run(run_id).info.status != "RUNNING" and not (entry or {}).get("done"):
            self.client.update_run(run_id, status="RUNNING")
        if not (self.map.entry(key) or {}).get("params"):
            self._log_params(run_id, params)
            self.map.update(key, run_id=run_id, params=True)
        return run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_epoch(self, kind: RunKind, trial_id: str, result: Mapping[str, Any], step: int) -> None:
        """The epoch metrics of ``kind`` found in ``result``; a step at or below the last one logged (a
        resumed trial) is skipped."""
        from mlflow.entities import Metric

        key = kind.key(trial_id)
        entry = self.map.entry(key)
        if entry is None:
            return
        last = entry.get("last_step", 0)
        if key not in self._checked_steps:
            # Once per run and driver: a driver killed between logging an epoch and recording it in
            # the map left MLflow ahead of the map; MLflow's own history decides.
            self._checked_steps.add(key)
            last = max(last, self._last_logged_step(entry["run_id"], kind))
        if step <= last:
            return
        ts = _now_ms()
        batch = [
            Metric(k, float(result[k]), ts, step) for k in kind.epoch_metrics if is_number(result.get(k))
        ]
        if batch:
            self.client.log_batch(entry["run_id"], metrics=batch)
        self.map.update(key, last_step=step)

    def _last_logged_step(self, run_id: str, kind: RunKind) -> int:
        """The highest step of ``kind``'s epoch metrics in ``run_id`` (0: none logged)."""
        steps = [m.step for name in kind.epoch_metrics for m in self.client.get_metric_history(run_id, name)]
        return max(steps, default=0)

    def finish(
        self,
        kind: RunKind,
        trial_id: str,
        *,
        state: str,
        result: Mapping[str, Any] | None = None,
        genotype_digest: str | None = None,
        artifact_dir: str | Path | None = None,
        error: str | None = None,
        last_epoch: int = 0,
        register_model: bool = False,
    ) -> None:
        """Final metrics of ``kind`` found in ``result`` (step 0), artifacts and tags, then close the run
        (FAILED when ``state`` is failed, KILLED when pruned). A final figure that is also a per-epoch
        metric (a retraining's ``test_acc``) is its ``last_epoch`` value: logged only if that epoch is not
        logged yet.

        ``register_model`` (a completed retraining with ``model.bnas`` in ``artifact_dir``): its network
        becomes the run's Logged Model and a version of ``bnas-<study>``, and the ``champion`` alias is
        updated (:mod:`bnas.platform.models`)."""
        from mlflow.entities import Metric, RunTag

        key = kind.key(trial_id)
        entry = self.map.entry(key)
        if entry is None or entry.get("done"):
            return
        run_id = entry["run_id"]
        ts = _now_ms()
        metrics = []
        for k in kind.final_metrics:
            v = (result or {}).get(k)
            if not is_number(v):
                continue
            if k not in kind.epoch_metrics:
                metrics.append(Metric(k, float(v), ts, 0))
            elif entry.get("last_step", 0) < last_epoch:
                metrics.append(Metric(k, float(v), ts, last_epoch))
        tags = {Tag.STATE: state}
        if genotype_digest:
            tags[Tag.GENOTYPE_DIGEST] = genotype_digest
        if error:
            tags[Tag.ERROR] = error[:4000]
        if kind.name == SEARCH.name and artifact_dir is not None:
            metrics += _diagnostic_metrics(Path(artifact_dir) / Artifact.DIAGNOSTICS, ts)
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        if artifact_dir is not None:
            for rel in kind.artifacts:
                path = Path(artifact_dir) / rel
                if path.is_file():
                    parent = str(Path(rel).parent)
                    self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
        if register_model and state == State.COMPLETE and artifact_dir is not None:
            self._register_model(run_id, Path(artifact_dir) / Artifact.MODEL, result or {})
        # A pruned trial is KILLED in MLflow's terms (stopped before its end), not a green "Finished".
        status = {State.FAILED: "FAILED", State.PRUNED: "KILLED"}.get(state, "FINISHED")
        self.client.set_terminated(run_id, status=status)
        self.map.update(key, done=True)

    def _register_model(self, run_id: str, packed: Path, result: Mapping[str, Any]) -> None:
        """Log and register the run's network (see :meth:`finish`). A failure here is recorded on the
        run (tag ``bnas.model_error``) and printed, not raised: the retraining itself succeeded."""
        from bnas.platform.models import log_retrained_model

        if not packed.is_file():
            return
        run = self.client.get_run(run_id)
        try:
            log_retrained_model(
                self.client,
                self.config.tracking_uri,
                self.experiment_id,
                self.config.study,
                run_id,
                packed,
                result=result,
                params=run.data.params,
                seed=run.data.tags.get(Tag.SEED, ""),
            )
        except Exception as e:  # any failure: the study goes on, and the run says why
            message = f"{type(e).__name__}: {e}"[:4000]
            self.client.set_tag(run_id, Tag.MODEL_ERROR, message)
            print(f"warning: run {run_id}: the model was not logged/registered: {message}", file=sys.stderr)

    # ------------------------------------------------------------------ reading back
    def runs(self, kind: RunKind, *, state: str | None = None, status: str | None = None) -> list[Any]:
        """All runs of this study of one kind (optionally in one ``bnas.state`` / run status), newest
        first."""
        flt = runs_filter(self.config.study, kind.name, state=state, status=status)
        return search_all(self.client, self.experiment_id, flt)

    def download(self, run_id: str, path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))
