"""What MLflow's web UI reads to show a study as model training, and the links and filters to give.

Read from MLflow 3.17's own sources (``mlflow/server/js/build``, ``mlflow/utils/mlflow_tags.py``,
``mlflow/store/tracking/abstract_store.py``), not from its documentation:

* an experiment's kind is its tag ``mlflow.experimentKind``; ``custom_model_development`` is "Machine
  learning" (model training), ``genai_development`` "GenAI apps & agents". MLflow 3.17's UI shows it
  but lays the page out by its sidebar switch "GenAI | Model training" (kept per browser, GenAI by
  default) or by the URL parameter ``workflowType=machine_learning``, which the printed links carry;
* the runs view fetches the parents of the runs it shows, and nests the children under them, only
  while it is sorted by start time (its default; ``shouldFetchParents`` in the UI's sources): sorted
  by a metric (URL parameters ``orderByKey=metrics.`<name>``` and ``orderByAsc``) with a filter that
  leaves the parent out, it lists the trial runs flat, best first, and shows the metric's column;
* a Logged Model's "Registered models" column reads its tag ``mlflow.modelVersions`` (a JSON list of
  ``{"name", "version"}``), which ``mlflow.register_model`` and a tracking server write but a
  client's ``create_model_version`` on a database store does not: :func:`link_logged_model`.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from bnas.platform.tracking_schema import RETRAIN, SEARCH, STUDY_KIND, Metric, Tag

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
#: The URL parameter that opens the UI in its model-training layout.
WORKFLOW_QUERY = {"workflowType": "machine_learning"}

# Filters to type in the runs view's search box (the backend's syntax; a dotted tag key needs no quotes).
TRIAL_RUNS_FILTER = f"tags.{Tag.KIND} != '{STUDY_KIND}'"
RETRAIN_RUNS_FILTER = f"tags.{Tag.KIND} = '{RETRAIN.name}'"
SEARCH_RUNS_FILTER = f"tags.{Tag.KIND} = '{SEARCH.name}'"


#: (what, filter, metric to sort by, best first) of the runs-view links a study prints.
VIEWS = (
    ("retrained networks", RETRAIN_RUNS_FILTER, Metric.TEST_ACC),
    ("searches", SEARCH_RUNS_FILTER, Metric.DERIVED_VAL_ACC),
)


def runs_view_url(
    base_url: str, experiment_id: str, search_filter: str = TRIAL_RUNS_FILTER, order_by: str | None = None
) -> str:
    """The runs view of an experiment in the model-training layout, filtered by ``search_filter`` and,
    with ``order_by``, sorted by that metric, highest first (which lists the runs flat)."""
    params = {**WORKFLOW_QUERY, "searchFilter": search_filter}
    if order_by is not None:
        params |= {"orderByKey": f"metrics.`{order_by}`", "orderByAsc": "false"}
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def runs_view_lines(base_url: str, experiment_id: str) -> list[str]:
    """One console line per :data:`VIEWS` entry: what it lists and its link."""
    return [
        f"  {what}, best {metric} first: {runs_view_url(base_url, experiment_id, flt, metric)}"
        for what, flt, metric in VIEWS
    ]


def runs_view_hint() -> str:
    """What the links show and where the rest is (one console line)."""
    return (
        "  (sorted by a metric the runs are listed flat; sorted by date, MLflow's default, they nest "
        "under the study's parent run. The retrained networks and their registered versions: the "
        "experiment's Models tab)"
    )


def mark_model_training(client: Any, experiment: Any) -> None:
    """Tag ``experiment`` (an MLflow ``Experiment``) as model training when it has no kind yet (a
    kind someone chose is kept)."""
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def logged_model_id(version: Any) -> str | None:
    """The Logged Model a registered ``version`` was made from: its ``model_id``, else (a database
    registry keeps none) the id in its source ``models:/<model id>``."""
    source = version.source or ""
    ref = source.removeprefix("models:/")
    if version.model_id or not source.startswith("models:/") or "/" in ref or "@" in ref:
        return version.model_id
    return ref


def link_logged_model(client: Any, model_id: str, name: str, version: int | str) -> None:
    """Add version ``version`` of registered model ``name`` to the Logged Model's
    ``mlflow.modelVersions`` tag, as MLflow's own registration does; a link already there (written by
    a tracking server, or a resumed driver) is not added twice."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    raw = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    try:
        links = json.loads(raw) if raw else []
    except ValueError:  # damaged by hand: rewritten with this link
        links = []
    links = [v for v in links if isinstance(v, dict)] if isinstance(links, list) else []
    if any(str(v.get("name")) == name and str(v.get("version")) == str(version) for v in links):
        return
    links.append({"name": name, "version": str(version)})
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(links)})
