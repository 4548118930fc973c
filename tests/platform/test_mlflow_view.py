"""What MLflow shows of a study (issue 22): a model-training experiment, trial runs found without
expanding the parent, Logged Models linked to their registered versions, params without float noise,
and a champion that a PyTorch user loads and serves.

One tiny study is written once (module fixture) by the platform's own :class:`StudyTracker` into a
real MLflow SQLite store in a temporary folder: a parent run, a search run and a retraining run whose
packed network is logged, registered and made champion (no Ray, no training, no mocks).
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from bnas.binarization import BinarySpec
from bnas.eval_network import EvalNetwork
from bnas.export import export_packed
from bnas.genotype import GENOTYPES
from bnas.platform.cluster import ClusterInfo
from bnas.platform.mlflow_ui import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    RETRAIN_RUNS_FILTER,
    SEARCH_RUNS_FILTER,
    TRIAL_RUNS_FILTER,
    logged_model_id,
)
from bnas.platform.models import inference_network, log_retrained_model
from bnas.platform.summary import where_to_look
from bnas.platform.tracking import StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import (
    CHAMPION_ALIAS,
    RETRAIN,
    SEARCH,
    ModelTag,
    State,
    Tag,
    param_value,
    registered_model_name,
    rounded,
)

pytestmark = pytest.mark.platform

STUDY, IMAGE_SIZE, CLASSES = "view", 16, 10
CHAMPION = f"models:/{registered_model_name(STUDY)}@{CHAMPION_ALIAS}"
NOISY_ACC = float(np.float32(0.331))  # 0.33099999874830244: a float32 accuracy read as a double


@dataclass
class Study:
    tracker: StudyTracker
    uri: str
    packed: Path
    search_run: str
    retrain_run: str


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    tmp = tmp_path_factory.mktemp("mlflow_view")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = StudyTracker(TrackerConfig(uri, STUDY, str(tmp)))
    dataset = {"dataset.name": "fake", "dataset.fraction": 0.1 + 0.2}
    tracker.log_dataset(dataset, str(tmp), {"mean": NOISY_ACC})
    search = tracker.open_search_run("s0", {"optim.lr": 0.025}, {"optim.lr": 0.1 + 0.2, "drop": NOISY_ACC})
    tracker.finish(SEARCH, "s0", state=State.COMPLETE, result={"derived_val_acc": 0.5})
    params = {
        "data.image_size": IMAGE_SIZE,
        "binarization.method": "xnor",
        "binarization.activations": "binary",
        "optim.lr": 3.1622776601683794e-05,
        "optim.betas": [0.1 + 0.2, 0.999],
    }
    retrain = tracker.open_retrain_run("r0", params, genotype_digest="abc", seed=0, search_run_id=search)
    trial_dir = tmp / "trial"
    trial_dir.mkdir()
    torch.manual_seed(0)
    net = EvalNetwork(GENOTYPES.get("pc_darts"), C=4, layers=3, spec=BinarySpec("xnor", "binary"))
    with torch.no_grad():
        net.train()(torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE))  # non-trivial BN statistics to fold
    export_packed(net.eval(), trial_dir / "model.bnas")
    result = {"test_acc": NOISY_ACC, "packed_bytes": 1000, "genotype_digest": "abc", "epochs": 1}
    tracker.log_epoch(RETRAIN, "r0", result, step=1)
    done = {"state": State.COMPLETE, "result": result, "last_epoch": 1, "register_model": True}
    tracker.finish(RETRAIN, "r0", artifact_dir=trial_dir, **done)
    assert Tag.MODEL_ERROR not in tracker.client.get_run(retrain).data.tags
    return Study(tracker, uri, trial_dir / "model.bnas", search, retrain)


def test_the_experiment_is_a_model_training_one_new_or_existing(study: Study, tmp_path: Path) -> None:
    client = study.tracker.client
    assert client.get_experiment(study.tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # An experiment made before the kind was set gets it when a tracker opens it again; a chosen kind stays.
    old = client.create_experiment("bnas/old")
    chosen = client.create_experiment("bnas/chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("old", "chosen"):
        (tmp_path / name).mkdir()
        StudyTracker(TrackerConfig(study.uri, name, str(tmp_path / name)))
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_printed_link_and_filters_list_the_trial_runs_without_the_parent(study: Study) -> None:
    client, exp = study.tracker.client, study.tracker.experiment_id

    def found(flt: str) -> set[str]:
        return {r.info.run_id for r in client.search_runs([exp], flt)}

    assert found(TRIAL_RUNS_FILTER) == {study.search_run, study.retrain_run}  # no parent: nothing nests
    assert found(RETRAIN_RUNS_FILTER) == {study.retrain_run}
    assert found(SEARCH_RUNS_FILTER) == {study.search_run}
    cluster = ClusterInfo("127.0.0.1:6379", None, False, {}, started_here=True)
    for uri in ("http://host:5000", study.uri):
        text = where_to_look(cluster, exp, uri, ended=True)
        urls = [w for w in text.split() if f"/#/experiments/{exp}/runs?" in w]
        queries = [urllib.parse.parse_qs(u.split("?", 1)[1]) for u in urls]
        assert queries[0] == {"workflowType": ["machine_learning"], "searchFilter": [TRIAL_RUNS_FILTER]}
        # Sorted by a metric (not by date), the UI fetches no parent run: the runs are listed flat.
        assert [(q["searchFilter"], q["orderByKey"], q["orderByAsc"]) for q in queries[1:]] == [
            ([RETRAIN_RUNS_FILTER], ["metrics.`test_acc`"], ["false"]),
            ([SEARCH_RUNS_FILTER], ["metrics.`derived_val_acc`"], ["false"]),
        ]
        assert all(q["workflowType"] == ["machine_learning"] for q in queries) and "Models tab" in text


def test_the_logged_model_names_its_registered_version_once(study: Study) -> None:
    client, name = study.tracker.client, registered_model_name(STUDY)
    version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    model_id = logged_model_id(version)  # (a SQLite registry keeps no model_id on the version)
    key, link = "mlflow.modelVersions", [{"name": name, "version": str(version.version)}]
    assert json.loads(client.get_logged_model(model_id).tags[key]) == link

    def log_again() -> int:  # a resumed driver reaching the same finished retraining
        params = client.get_run(study.retrain_run).data.params
        return log_retrained_model(
            client, study.uri, study.tracker.experiment_id, STUDY, study.retrain_run, study.packed,
            result={"test_acc": 0.5}, params=params, seed="0",
        )  # fmt: skip

    assert log_again() == int(version.version)
    assert json.loads(client.get_logged_model(model_id).tags[key]) == link  # not twice
    client.delete_logged_model_tag(model_id, key)  # a version registered before the link existed
    log_again()
    assert json.loads(client.get_logged_model(model_id).tags[key]) == link


def test_floats_are_written_without_noise(study: Study) -> None:
    client, name = study.tracker.client, registered_model_name(STUDY)
    assert param_value(NOISY_ACC) == "0.331" and param_value(np.float32(0.331)) == "0.331"
    assert param_value(1 / 3) == "0.333333" and param_value(3.1622776601683794e-05) == "3.16228e-05"
    assert param_value(7) == "7" and param_value(True) == "True" and param_value(float("nan")) == "nan"
    assert rounded({"a": (0.1 + 0.2, 2)}) == {"a": (0.3, 2)}
    search = client.get_run(study.search_run).data.params
    assert search["space.optim.lr"] == "0.3" and search["space.drop"] == "0.331"
    retrain = client.get_run(study.retrain_run).data.params
    assert retrain["optim.lr"] == "3.16228e-05" and retrain["optim.betas"] == "[0.3, 0.999]"
    parent = client.get_run(study.tracker.parent_id)
    assert parent.data.params["dataset.fraction"] == "0.3"
    assert json.loads(parent.inputs.dataset_inputs[0].dataset.profile) == {"mean": 0.331}
    version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    assert version.tags[ModelTag.TEST_ACC] == "0.331"
    logged = client.get_logged_model(logged_model_id(version))
    assert logged.tags[ModelTag.TEST_ACC] == "0.331" and logged.params["optim.lr"] == "3.16228e-05"


def _images(n: int = 5) -> np.ndarray:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen).numpy()  # float32


def _load_champion(study: Study) -> Any:
    import mlflow.pytorch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(study.uri):
        return mlflow.pytorch.load_model(CHAMPION)


def test_the_champion_loads_as_a_pytorch_module(study: Study) -> None:
    """The README's recipe: ``mlflow.pytorch.load_model`` gives an inference-only module that needs no
    ``.eval()`` (torch.export forbids it); ``del model.train, model.eval`` lets code that calls it run."""
    model = _load_champion(study)
    x = torch.from_numpy(_images())
    with torch.no_grad():
        ref = inference_network(study.packed)(x)
        assert torch.allclose(model(x), ref, rtol=0, atol=1e-5)
    with pytest.raises(NotImplementedError):  # torch.export's module: why the README's extra line
        model.eval()
    del model.train, model.eval
    assert model.eval() is model and isinstance(model, nn.Module) and not model.training
    with torch.no_grad():
        out = model(x)
    assert out.shape == (5, CLASSES) and torch.allclose(out, ref, rtol=0, atol=1e-5)


def test_the_champion_serves_through_pyfunc(study: Study) -> None:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    batch = _images()
    with _use_tracking_uri(study.uri):
        served = mlflow.pyfunc.load_model(CHAMPION, model_config={"device": "cpu"})
        # What a plain load picks on a CUDA machine: the pt2 network's weights stay on the CPU.
        with pytest.raises(MlflowException, match="can't be loaded on 'cuda' device"):
            mlflow.pyfunc.load_model(CHAMPION, model_config={"device": "cuda"})
    out = served.predict(batch)
    assert isinstance(out, np.ndarray) and out.shape == (5, CLASSES)
    with torch.no_grad():  # the torch module it serves (mlflow.pytorch's load), and the network logged
        logits = served.get_raw_model()(torch.from_numpy(batch)).numpy()
        ref = inference_network(study.packed)(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(out, logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
