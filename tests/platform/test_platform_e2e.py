"""End to end on real Ray, a real Optuna storage and a real MLflow store (no mocks), CPU-sized.

* the session's smoke study (through ``--address`` on a Ray head started here): one MLflow run per
  trial with its artifacts, retraining runs pointing at their search runs, Optuna holding the trials;
* a driver killed with SIGKILL mid-search, then ``--resume``: nothing lost, nothing duplicated;
* a trial that raises: the others finish, the failure is recorded in MLflow and Optuna.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState
from platform_helpers import REPO, SMOKE_TEST_SETTINGS, SmokeStudy, end_group, run_cli, smoke_args, start_cli

from bnas.platform.tracking_schema import (
    CHAMPION_ALIAS,
    ModelTag,
    experiment_name,
    registered_model_name,
    search_all,
)

pytestmark = pytest.mark.platform  # every test here runs a study on a Ray head


def _runs(uri: str, study: str = "bnas_smoke"):
    """Every run of the study's experiment (through a client: MLflow's global tracking URI stays as is)."""
    client = mlflow.MlflowClient(uri)
    return search_all(client, client.get_experiment_by_name(experiment_name(study)).experiment_id, "")


def _by_kind(runs, kind: str):
    return [r for r in runs if r.data.tags.get("bnas.kind") == kind]


def _artifacts(uri: str, run_id: str) -> set[str]:
    client = mlflow.MlflowClient(uri)
    out = set()
    for a in client.list_artifacts(run_id):
        if a.is_dir:
            out |= {b.path for b in client.list_artifacts(run_id, a.path)}
        else:
            out.add(a.path)
    return out


def _check_study_consistent(uri: str, out_dir: Path, trials: int) -> list:
    """One finished MLflow run per Tune trial, each also in Optuna; returns the search runs."""
    runs = _runs(uri)
    parents = _by_kind(runs, "study")
    assert len(parents) == 1 and parents[0].info.run_name == "bnas_smoke"
    searches = _by_kind(runs, "search")
    trial_ids = [r.data.tags["bnas.trial_id"] for r in searches]
    assert len(trial_ids) == len(set(trial_ids)) == trials, trial_ids
    for r in searches:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.info.status in ("FINISHED", "FAILED", "KILLED")  # KILLED: pruned by the scheduler
        assert r.data.tags["bnas.state"] in ("complete", "pruned", "failed")
        steps = [m.step for m in mlflow.MlflowClient(uri).get_metric_history(r.info.run_id, "val_acc")]
        assert steps == sorted(set(steps)), f"duplicated or unordered epochs {steps}"
    study = optuna.load_study(study_name="bnas_smoke", storage=f"sqlite:///{out_dir / 'optuna.db'}")
    assert len(study.trials) == trials
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    return searches


def test_smoke_study_search_runs(smoke_study: SmokeStudy) -> None:
    searches = _check_study_consistent(smoke_study.tracking_uri, smoke_study.out_dir, trials=3)
    complete = [r for r in searches if r.data.tags["bnas.state"] == "complete"]
    assert complete, "no trial finished its search"
    for r in complete:
        assert r.info.status == "FINISHED"
        assert len(r.data.tags["bnas.genotype_digest"]) == 12
        assert {
            "genotype.json",
            "history.json",
            "metrics.jsonl",
            "cells/normal.png",
            "cells/reduce.png",
        } <= _artifacts(smoke_study.tracking_uri, r.info.run_id)
        m = r.data.metrics
        assert 0.0 <= m["derived_val_acc"] <= 1.0 and m["search_time_s"] > 0
        assert m["packed_bytes"] < m["fp32_bytes"] and m["params"] == m["binary_params"] + m["fp_params"]
        p = r.data.params
        assert p["search.layers"] == "3" and p["data.train_subset"] == "192"
        assert p["space.binarization.method"] == p["binarization.method"]
        # PCNN's lambda is sampled only when PCNN is (define-by-run).
        assert ("space.binarization.pcnn_lambda" in p) == (p["binarization.method"] == "pcnn")
        assert p["data.root"].startswith("/")  # made absolute in the driver
        assert p["device"] == "cpu" and p["threads"] == "1"  # what the trial was given (1 CPU, no GPU)


def test_smoke_study_optuna_states_match_mlflow(smoke_study: SmokeStudy) -> None:
    searches = _runs(smoke_study.tracking_uri)
    study = optuna.load_study(study_name="bnas_smoke", storage=smoke_study.optuna_storage)
    expect = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    mlflow_states = sorted(expect[r.data.tags["bnas.state"]].name for r in _by_kind(searches, "search"))
    assert sorted(t.state.name for t in study.trials) == mlflow_states
    best = max(
        (r for r in _by_kind(searches, "search") if r.data.tags["bnas.state"] == "complete"),
        key=lambda r: r.data.metrics["derived_val_acc"],
    )
    assert study.best_value == pytest.approx(best.data.metrics["derived_val_acc"])


def test_smoke_study_retraining_runs(smoke_study: SmokeStudy) -> None:
    runs = _runs(smoke_study.tracking_uri)
    parent = _by_kind(runs, "study")[0].info.run_id
    searches = {r.info.run_id: r for r in _by_kind(runs, "search")}
    retrains = _by_kind(runs, "retrain")
    complete_digests = {
        r.data.tags["bnas.genotype_digest"]
        for r in searches.values()
        if r.data.tags["bnas.state"] == "complete"
    }
    assert len(retrains) == min(2, len(complete_digests)) * 2  # top-2 distinct genotypes x 2 seeds
    for r in retrains:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent
        search = searches[r.data.tags["bnas.search_run_id"]]
        assert r.data.tags["bnas.genotype_digest"] == search.data.tags["bnas.genotype_digest"]
        assert r.data.tags["bnas.seed"] in ("0", "1")
        assert {"genotype.json", "model.bnas"} <= _artifacts(smoke_study.tracking_uri, r.info.run_id)
        assert 0.0 <= r.data.metrics["test_acc"] <= 1.0
        assert r.data.metrics["packed_bytes"] == search.data.metrics["packed_bytes"]


def _champion(uri: str) -> tuple[str, int]:
    """(run id, version) of the smoke study's champion, with how many versions the model has."""
    client = mlflow.MlflowClient(uri)
    name = registered_model_name("bnas_smoke")
    champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    return champion.run_id, len(client.search_model_versions(f"name='{name}'"))


def test_smoke_study_registers_its_retrained_networks(smoke_study: SmokeStudy, tmp_path: Path) -> None:
    """One Logged Model and one registered version per retraining; the champion is the rule's choice and
    mlflow.pytorch.load_model through the alias gives the retrained network's outputs."""
    import torch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from bnas.export import load_packed
    from bnas.platform.models import VersionInfo, choose_champion

    uri = smoke_study.tracking_uri
    client = mlflow.MlflowClient(uri)
    name = registered_model_name("bnas_smoke")
    retrains = {r.info.run_id: r for r in _by_kind(_runs(uri), "retrain")}
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(v.run_id for v in versions) == sorted(retrains)
    for v in versions:
        run = retrains[v.run_id]
        assert v.tags[ModelTag.GENOTYPE_DIGEST] == run.data.tags["bnas.genotype_digest"]
        assert v.tags[ModelTag.SEED] == run.data.tags["bnas.seed"]
        assert v.tags[ModelTag.BINARIZATION] == run.data.params["binarization.method"]
        assert float(v.tags[ModelTag.TEST_ACC]) == pytest.approx(run.data.metrics["test_acc"], abs=5e-7)
        assert len(v.tags[ModelTag.TEST_ACC]) <= 8  # "0.331", not the float32 noise 0.33099999874830244
        logged = client.get_logged_model(v.source.removeprefix("models:/"))
        assert logged.source_run_id == v.run_id and logged.name == "model"
        # The run's last-epoch figures are linked to the model (its page and the models table show them).
        linked = {m.key: m.value for m in logged.metrics}
        assert linked["test_acc"] == pytest.approx(run.data.metrics["test_acc"])
        assert "model.bnas" in _artifacts(uri, v.run_id)  # the packed file stays beside the model
    infos = [VersionInfo.from_version(v) for v in versions]
    champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    assert int(champion.version) == choose_champion([i for i in infos if i is not None])

    with _use_tracking_uri(uri):
        loaded = mlflow.pytorch.load_model(f"models:/{name}@{CHAMPION_ALIAS}")
    client.download_artifacts(champion.run_id, "model.bnas", str(tmp_path))
    size = int(retrains[champion.run_id].data.params["data.image_size"])
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = load_packed(tmp_path / "model.bnas")(x)[0]
        out = loaded(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_smoke_study_prints_where_to_look_and_summary(smoke_study: SmokeStudy) -> None:
    assert "MLflow UI:" in smoke_study.stdout and "Ray dashboard:" in smoke_study.stdout
    assert "summary (search trials:" in smoke_study.stdout


def test_retrain_stage_alone_skips_what_is_done(
    smoke_study: SmokeStudy, ray_head: str, fake_cifar_root: Path
) -> None:
    """Retraining alone on a finished study reads its search runs; pairs already retrained are skipped."""
    args = smoke_args(
        smoke_study.out_dir,
        smoke_study.tracking_uri,
        fake_cifar_root,
        "--stage",
        "retrain",
        "--address",
        ray_head,
        "--quiet",
        settings=SMOKE_TEST_SETTINGS,
    )
    before = len(_by_kind(_runs(smoke_study.tracking_uri), "retrain"))
    champion_before = _champion(smoke_study.tracking_uri)
    res = run_cli(args, cwd=smoke_study.out_dir.parent, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "already retrained" in res.stdout
    assert len(_by_kind(_runs(smoke_study.tracking_uri), "retrain")) == before
    # Nothing retrained, nothing beaten: no new version, the alias stays where it was.
    assert _champion(smoke_study.tracking_uri) == champion_before


@pytest.mark.parametrize("lost", [("ray", "optuna.db"), ("ray",), ("optuna.db",)], ids="+".join)
@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_resume_refuses_a_folder_that_lost_its_experiment(
    smoke_study: SmokeStudy, ray_head: str, fake_cifar_root: Path, tmp_path: Path, lost: tuple, check: bool
) -> None:
    """A finished study's folder without ray/ (or optuna.db): --resume would search again from nothing
    and record every trial twice; it is refused (exit 2, one error line), nothing run or recorded."""
    out = tmp_path / "study"
    shutil.copytree(smoke_study.out_dir, out)
    store = Path(smoke_study.tracking_uri.removeprefix("sqlite:///"))
    shutil.copy(store, tmp_path / store.name)
    uri = f"sqlite:///{tmp_path / store.name}"
    run_map = json.loads((out / "mlflow_runs.json").read_text())
    (out / "mlflow_runs.json").write_text(json.dumps({**run_map, "tracking_uri": uri}))  # the copied store
    for name in lost:
        (shutil.rmtree if (out / name).is_dir() else Path.unlink)(out / name)
    extra = ["--check"] if check else ["--address", ray_head, "--quiet"]
    before = len(_runs(uri))
    args = smoke_args(out, uri, fake_cifar_root, "--resume", *extra, settings=SMOKE_TEST_SETTINGS)
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stderr.startswith(f"error: {out}: --resume: study_state.json records "), res.stderr
    assert "record its trials twice" in res.stderr and "Traceback" not in res.stderr, res.stderr
    for name in lost:
        assert str(out / name) in res.stderr and not (out / name).exists()
    assert len(_runs(uri)) == before


def test_killed_driver_resumes_without_lost_or_duplicated_runs(
    tmp_path: Path, ray_head: str, fake_cifar_root: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "study"
    # 2 trials of one reduction stage of 4 epochs: long enough to be killed in the middle.
    settings = [
        "trials=2",
        "fixed.search.ops=[skip_connect,max_pool_3x3]",
        "fixed.reduction.epochs_per_stage=4",
        "fixed.data.train_subset=192",
        "fixed.data.test_subset=100",
    ]
    args = smoke_args(
        out, uri, fake_cifar_root, "--address", ray_head, "--quiet", "--stage", "search", settings=settings
    )
    proc = start_cli(args, tmp_path, tmp_path / "first.log")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if list(out.glob("ray/search-1/*/checkpoint_*")):  # an epoch is done
                break
            time.sleep(0.2)
        log = (tmp_path / "first.log").read_text()
        assert proc.poll() is None, f"the study ended before it could be killed:\n{log}"
    finally:
        end_group(proc)  # SIGKILL to the driver (and its process group)
        proc.wait(timeout=30)
    runs_before = {r.data.tags["bnas.trial_id"]: r.info.run_id for r in _by_kind(_runs(uri), "search")}
    assert runs_before, "no trial had started"

    res = run_cli([*args, "--resume"], cwd=tmp_path, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming search-1" in res.stdout
    searches = _check_study_consistent(uri, out, trials=2)
    after = {r.data.tags["bnas.trial_id"]: r.info.run_id for r in searches}
    assert all(after[t] == rid for t, rid in runs_before.items()), "a trial's run was replaced"
    assert all(r.data.tags["bnas.state"] in ("complete", "pruned") for r in searches)
    assert json.loads((out / "study_state.json").read_text())["search"] == ["search-1"]


def test_failing_trial_is_recorded_and_the_others_finish(
    tmp_path: Path, ray_head: str, fake_cifar_root: Path
) -> None:
    """One sampled value asks for more images than the dataset has: that trial raises inside Ray.
    (The random sampler with seed 0 draws 100000000 first, then 64.)
    """
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "study"
    settings = [
        "trials=2",
        "max_failures=0",
        "sampler={name: random, seed: 0}",
        "scheduler.name=fifo",
        "fixed.search.ops=[skip_connect,max_pool_3x3]",
        "fixed.reduction.epochs_per_stage=1",
        "fixed.reduction.warmup_epochs=0",
        "fixed.data.test_subset=100",
        "space={data.train_subset: {choice: [64, 100000000]}}",
    ]
    args = smoke_args(
        out, uri, fake_cifar_root, "--address", ray_head, "--quiet", "--stage", "search", settings=settings
    )
    # The sampled setting is not fixed as well (a study may not set a value in both places).
    study_file = tmp_path / "studies" / "bnas_smoke.yaml"
    study_file.parent.mkdir()
    text = (REPO / "tune_configs" / "bnas_smoke.yaml").read_text()
    kept = [line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("train_subset:")]
    assert len(kept) == len(text.splitlines()) - 1
    study_file.write_text("".join(kept))
    args[args.index("--study") + 1] = str(study_file)
    res = run_cli(args, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    searches = _by_kind(_runs(uri), "search")
    by_subset = {r.data.params["space.data.train_subset"]: r for r in searches}
    assert set(by_subset) == {"64", "100000000"}
    failed, ok = by_subset["100000000"], by_subset["64"]
    assert failed.info.status == "FAILED" and failed.data.tags["bnas.state"] == "failed"
    assert "exceeds" in failed.data.tags["bnas.error"]
    assert ok.info.status == "FINISHED" and ok.data.tags["bnas.state"] == "complete"
    study = optuna.load_study(study_name="bnas_smoke", storage=f"sqlite:///{out / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
