"""A study name holds one study: the same name with other data or settings is refused, ``--name`` gives
a study run its own name, and the dataset is described from what is on disk.

``run.py --check`` runs in-process (preflight only: no Ray), against a real MLflow SQLite store in
which a first study run's parent was written by the platform's own :class:`StudyTracker`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from platform_helpers import isolate_run_env, load_run_main

from bnas.config import PLACEMENT_KEYS
from bnas.platform.callbacks import retrain_key_digest
from bnas.platform.identity import describe_dataset, identity_record, study_identity
from bnas.platform.study import load_study
from bnas.platform.tracking import StudyIdentityError, StudyTracker, TrackerConfig
from bnas.platform.tracking_schema import Tag
from bnas.testing import make_fake_cifar, make_fake_folder

pytestmark = [pytest.mark.platform, pytest.mark.filterwarnings("ignore::bnas.data.DataIntegrityWarning")]


@pytest.fixture(scope="module")
def run_main():
    return load_run_main("bnas_run_py_identity")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """run.main sets environment variables: give them back afterwards; run in ``tmp_path``."""
    isolate_run_env(monkeypatch, tmp_path)


def _tracker_config(spec, root: Path, uri: str, state_dir: Path) -> TrackerConfig:
    dataset = describe_dataset(spec, root)
    return TrackerConfig(
        uri,
        spec.name,
        str(state_dir),
        identity=study_identity(spec, dataset),
        identity_record=json.dumps(identity_record(spec, dataset), sort_keys=True),
    )


@pytest.fixture(scope="module")
def first_study(tmp_path_factory: pytest.TempPathFactory, fake_cifar_root: Path) -> tuple[str, Path, Path]:
    """A bnas_smoke parent run on the session's fake CIFAR-10, as run.py writes it (one store per
    module: creating one costs seconds); ``(uri, data root, its study folder)``."""
    work = tmp_path_factory.mktemp("identity")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = load_study("bnas_smoke", data_root=fake_cifar_root)
    (work / "first").mkdir()
    StudyTracker(_tracker_config(spec, fake_cifar_root, uri, work / "first"))
    return uri, fake_cifar_root, work / "first"


def _check(run_main, uri: str, root: Path, out: Path, *extra: str) -> int:
    return run_main(
        [
            "--study",
            "bnas_smoke",
            "--check",
            "--mlflow-uri",
            uri,
            "--data-root",
            str(root),
            "--out",
            str(out),
            *extra,
        ]
    )


def test_same_name_with_other_data_is_refused(
    run_main, capsys, clean_env, first_study, tmp_path: Path
) -> None:
    uri, _, _ = first_study
    other = make_fake_cifar(tmp_path / "other_cifar", seed=1)  # same layout and size, other images
    capsys.readouterr()  # MLflow's lines from creating the store above
    assert _check(run_main, uri, other, tmp_path / "second") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "'bnas_smoke' is taken" in err and "dataset_fingerprint" in err and "--name" in err
    assert not (tmp_path / "second").exists()  # refused before anything was created

    assert _check(run_main, uri, other, tmp_path / "second", "--name", "bnas_smoke_other") == 0
    assert "ok" in capsys.readouterr().out


def test_same_name_with_another_dataset_kind_is_refused(
    run_main, capsys, clean_env, first_study, tmp_path: Path
) -> None:
    """The issue's case: a class-folder dataset run under the CIFAR study's name."""
    uri, _, _ = first_study
    folder = make_fake_folder(tmp_path / "folder", per_class=70, n_test=40)
    capsys.readouterr()
    rc = _check(run_main, uri, folder, tmp_path / "second", "--set", "fixed.data.dataset=folder")
    err = capsys.readouterr().err
    assert rc == 2 and "'cifar10' -> 'folder'" in err, err


def test_same_content_elsewhere_and_placement_settings_are_the_same_study(
    run_main, capsys, clean_env, first_study, tmp_path: Path
) -> None:
    """A copy of the data at another path, another device or more trials: the same study (no refusal)."""
    uri, root, first = first_study
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    rc = _check(run_main, uri, copy, first, "--set", "trials=6", "--set", "fixed.device=cpu")
    assert rc == 0, capsys.readouterr().err


def test_same_name_with_other_settings_is_refused_by_the_tracker_too(first_study, tmp_path: Path) -> None:
    """The parent run is checked again where it is opened (a second line of defence after preflight)."""
    uri, root, first = first_study
    spec = load_study("bnas_smoke", ["fixed.search.layers=4"], data_root=root)
    with pytest.raises(StudyIdentityError, match=r"fixed\.search\.layers: 3 -> 4"):
        StudyTracker(_tracker_config(spec, root, uri, first))


def test_the_parent_run_records_identity_and_dataset(first_study, tmp_path: Path) -> None:
    uri, root, first = first_study
    spec = load_study("bnas_smoke", data_root=root)
    config = _tracker_config(spec, root, uri, first)
    tracker = StudyTracker(config)
    dataset = describe_dataset(spec, root)
    tracker.log_dataset(dataset.params(), dataset.root, dataset.params())
    tracker.log_dataset(dataset.params(), dataset.root, dataset.params())  # a rerun: nothing twice
    run = tracker.client.get_run(tracker.parent_id)
    assert run.data.tags[Tag.IDENTITY] == config.identity
    p = run.data.params
    assert (p["dataset.name"], p["dataset.image_size"], p["dataset.num_classes"]) == ("cifar10", "16", "10")
    inputs = run.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("cifar10", dataset.fingerprint)]
    assert json.loads(inputs[0].dataset.source)["uri"] == str(root)


@pytest.mark.parametrize("name", ["", "a b", "../x", "_x", "x" * 101])
def test_bad_names_are_refused(
    run_main, capsys, clean_env, fake_cifar_root: Path, tmp_path: Path, name: str
) -> None:
    rc = _check(run_main, f"sqlite:///{tmp_path / 'm.db'}", fake_cifar_root, tmp_path / "s", "--name", name)
    err = capsys.readouterr().err
    assert rc == 2 and "--name" in err and "not a usable study name" in err, err


@pytest.mark.parametrize("key", sorted(PLACEMENT_KEYS))
def test_one_identity_rule_for_study_checkpoint_and_retraining(fake_cifar_root: Path, key: str) -> None:
    """Every placement setting (``affects_results=False``) is outside all three identities, and a
    setting that changes results is inside all three."""
    changed = {
        "device": "cpu",
        "threads": 2,
        "data.download": True,
        "data.num_workers": 1,
        "search.checkpoint_every": 3,
        "retrain.checkpoint_every": 3,
        "runtime.amp": "bf16",
        "runtime.channels_last": True,
        "runtime.cudnn_benchmark": False,
        "runtime.data_on_device": "off",
        "runtime.data_device_fraction": 0.2,
        "runtime.compile": True,
        "runtime.subnet_batch": 2,
        "runtime.batch_edges": False,
    }
    value = str(fake_cifar_root / "elsewhere") if key == "data.root" else changed[key]
    base = load_study("bnas_smoke", data_root=fake_cifar_root)
    moved = load_study("bnas_smoke", [f"fixed.{key}={json.dumps(value)}"], data_root=fake_cifar_root)
    other = load_study("bnas_smoke", ["fixed.search.weight_decay=0.001"], data_root=fake_cifar_root)
    dataset = describe_dataset(base, fake_cifar_root)
    assert study_identity(base, dataset) == study_identity(moved, dataset) != study_identity(other, dataset)
    cfgs = [s.trial_config({}) for s in (base, moved, other)]
    assert cfgs[0].result_digest() == cfgs[1].result_digest() != cfgs[2].result_digest()
    keys = [retrain_key_digest(s, s.trial_config({}).to_dict(), 0) for s in (base, moved, other)]
    assert keys[0] == keys[1] != keys[2]


def test_placement_keys_are_the_declared_ones() -> None:
    assert {"device", "threads", "data.root", "data.num_workers", "search.checkpoint_every"} <= PLACEMENT_KEYS
    assert not {"search.lr", "seed", "reduction.strategy", "binarization.method"} & PLACEMENT_KEYS
