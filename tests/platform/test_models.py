"""Retrained networks as MLflow Logged Models and registry versions; the ``champion`` alias.

The rule (bnas.platform.models.choose_champion) is tested as a function; the registry and the model
logging on a real MLflow SQLite store in a temporary folder (no mocks). The smoke study's registry is
checked in test_platform_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bnas.binarization import BinarySpec
from bnas.eval_network import EvalNetwork
from bnas.export import export_packed
from bnas.genotype import GENOTYPES
from bnas.platform.models import (
    VersionInfo,
    choose_champion,
    export_model_version,
    inference_network,
    log_retrained_model,
    main,
    update_champion,
)
from bnas.platform.tracking_schema import CHAMPION_ALIAS, ModelTag, registered_model_name


def _v(version: int, arch: str, acc: float, size: float = 100.0) -> VersionInfo:
    return VersionInfo(version, (arch, "xnor", "real"), acc, size)


def test_the_best_mean_over_seeds_wins_not_the_best_single_seed() -> None:
    # a: seeds 0.9 and 0.1 (mean 0.5); b: 0.6 and 0.6 (mean 0.6)
    versions = [_v(1, "a", 0.9), _v(2, "a", 0.1), _v(3, "b", 0.6), _v(4, "b", 0.6)]
    assert choose_champion(versions) in (3, 4)
    assert choose_champion(versions) == 3  # equal seeds: the older version


def test_ties_go_to_the_smaller_packed_size_then_the_older_architecture() -> None:
    assert choose_champion([_v(1, "a", 0.5, 200), _v(2, "b", 0.5, 100)]) == 2
    assert choose_champion([_v(1, "a", 0.5, 100), _v(2, "b", 0.5, 100)]) == 1


def test_the_alias_moves_only_when_another_architecture_beats_it() -> None:
    first = [_v(1, "a", 0.5), _v(2, "a", 0.7)]
    assert choose_champion(first) == 2
    # A later run adds an equal architecture: no move; a worse one: no move.
    assert choose_champion([*first, _v(3, "b", 0.6), _v(4, "b", 0.6)], current=2) == 2
    assert choose_champion([*first, _v(3, "b", 0.1)], current=2) == 2
    # A better one: the alias moves to its best seed.
    assert choose_champion([*first, _v(3, "c", 0.8), _v(4, "c", 0.9)], current=2) == 4
    # A new seed of the champion's own architecture does not move it within the architecture.
    assert choose_champion([*first, _v(3, "a", 0.95)], current=2) == 2
    assert choose_champion([]) is None


def test_versions_without_accuracy_are_ignored() -> None:
    class Fake:  # an MLflow ModelVersion as far as VersionInfo reads it (attributes only)
        def __init__(self, version: str, tags: dict[str, str]) -> None:
            self.version, self.tags = version, tags

    assert VersionInfo.from_version(Fake("1", {})) is None
    assert VersionInfo.from_version(Fake("1", {ModelTag.TEST_ACC: "x"})) is None
    info = VersionInfo.from_version(Fake("3", {ModelTag.TEST_ACC: "0.5", ModelTag.GENOTYPE_DIGEST: "d"}))
    assert info is not None and info.version == 3 and info.architecture[0] == "d"


def _packed(tmp_path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = EvalNetwork(GENOTYPES.get("pc_darts"), C=4, layers=3, spec=BinarySpec("xnor", "binary"))
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 16, 16))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / f"trial{seed}" / "model.bnas"  # a retraining trial's artifacts
    path.parent.mkdir()
    export_packed(net.eval(), path)
    return path


@pytest.mark.platform
@pytest.mark.slow
def test_logged_models_registry_and_champion_on_a_real_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (./mlruns, ./mlflow.db)
    (tmp_path / "cwd_before").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    client = MlflowClient(uri)
    exp = client.create_experiment("bnas/t", artifact_location=str(tmp_path / "store" / "artifacts"))
    study, name = "t", registered_model_name("t")

    def retrain_run(seed: int, digest: str, acc: float, packed: Path) -> tuple[str, int]:
        run = client.create_run(exp, tags={"bnas.seed": str(seed)}).info.run_id
        for k, v in {"data.image_size": "16", "binarization.method": "xnor"}.items():
            client.log_param(run, k, v)
        client.log_metric(run, "test_acc", acc, step=1)  # the last (only) epoch's figure
        version = log_retrained_model(
            client,
            uri,
            exp,
            study,
            run,
            packed,
            result={"test_acc": acc, "packed_bytes": 1000, "genotype_digest": digest, "epochs": 1},
            params=client.get_run(run).data.params,
            seed=str(seed),
        )
        client.log_artifact(run, str(packed))  # as StudyTracker.finish logs it, beside the model
        client.set_terminated(run)
        return run, version

    first, second = _packed(tmp_path, 0), _packed(tmp_path, 1)
    run_a, v_a = retrain_run(0, "aaa", 0.5, first)
    assert int(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == v_a
    # Logging the same run again (a resumed driver) adds nothing.
    assert (
        log_retrained_model(
            client, uri, exp, study, run_a, first, result={"test_acc": 0.5}, params={}, seed="0"
        )
        == v_a
    )
    # A worse architecture does not take the alias; a better one does.
    _, v_b = retrain_run(0, "bbb", 0.4, second)
    assert int(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == v_a
    run_c, v_c = retrain_run(0, "ccc", 0.9, second)
    assert int(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == v_c
    assert update_champion(client, study) == (v_c, v_c)

    # The version is tagged, linked to its run and its Logged Model (named "model", in the experiment).
    version = client.get_model_version(name, str(v_c))
    assert version.run_id == run_c and version.tags[ModelTag.TEST_ACC] == "0.9"
    assert version.tags[ModelTag.GENOTYPE_DIGEST] == "ccc" and version.tags[ModelTag.SEED] == "0"
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == "model" and logged.source_run_id == run_c and logged.experiment_id == exp
    assert logged.params["data.image_size"] == "16"  # the run's settings
    assert [(m.key, m.value, m.step) for m in logged.metrics] == [("test_acc", 0.9, 1)]
    assert [o.model_id for o in client.get_run(run_c).outputs.model_outputs] == [logged.model_id]

    # load_model through the alias gives the packed network's outputs, at any batch size.
    with _use_tracking_uri(uri):
        loaded = mlflow.pytorch.load_model(f"models:/{name}@{CHAMPION_ALIAS}")
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = inference_network(second)(x)
        assert torch.allclose(loaded(x), ref, rtol=0, atol=1e-6 * float(ref.abs().max()))

    # The registered version exports like a run folder (ONNX checked with onnxruntime).
    report = export_model_version(f"models:/{name}@{CHAMPION_ALIAS}", "onnx", tmp_path / "c.onnx", uri)
    assert report["max_abs_diff"] < 1e-5 and (tmp_path / "c.onnx").is_file()
    assert main(["export", f"models:/{name}/99", "--out", str(tmp_path / "x"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err  # (MLflow's own INFO lines may come first)
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cwd_before", "store", "trial0", "trial1", "c.onnx"]
    )
