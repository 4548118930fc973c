"""Bad input refused before any work: one ``error:`` paragraph naming file, key and value, exit 2, and
nothing created -- no study folder, no MLflow store, no Optuna storage, no Ray process.

Each case runs through ``run.py --check`` and through a real run (``run.py`` without ``--check``), in
process (``run.main``): both must refuse it the same way, ``--check`` included the checks against the
cluster's resources (a local cluster's, detected as Ray would, without starting one).
No Ray starts here, so these tests carry no ``platform`` marker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from platform_helpers import load_run_main, mounted_tmpfs, smoke_args

from bnas.config import ConfigError
from bnas.platform import orchestrate
from bnas.platform.cluster import _single_machine_cluster, check_cluster, is_loopback, probe_resources
from bnas.platform.study import STUDIES_DIR, load_study

SMOKE = STUDIES_DIR / "bnas_smoke.yaml"


@pytest.fixture(scope="module")
def run_main():
    return load_run_main("bnas_run_py_hardening")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """run.main sets Ray's environment variables; give them back afterwards. Run in ``tmp_path``.
    A run that gets as far as connecting to Ray fails the test at once (the input was not refused)."""

    def no_cluster(*_args: object, **_kwargs: object) -> None:
        pytest.fail("run.py went on to start Ray: the input was not refused before work")

    monkeypatch.setattr(orchestrate, "connect", no_cluster)
    monkeypatch.chdir(tmp_path)
    for var in (
        "RAY_USAGE_STATS_ENABLED",
        "RAY_AUTH_MODE",
        "RAY_ADDRESS",
        "BNAS_DATA_ROOT",
        "MLFLOW_TRACKING_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def _children() -> set[int]:
    """Processes whose parent is this test process (a Ray head started here would be one)."""
    me, out = os.getpid(), set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(d))
    return out


def _smoke_text(**replace: str) -> str:
    """bnas_smoke.yaml with some lines replaced (``old line`` -> ``new line``, by exact text)."""
    text = SMOKE.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def _smoke_text_without_space() -> str:
    """bnas_smoke.yaml without its ``space:`` block."""
    lines, out, skipping = SMOKE.read_text().splitlines(keepends=True), [], False
    for line in lines:
        if line.startswith("space:"):
            skipping = True
            continue
        if skipping and line.startswith((" ", "#")):
            continue
        skipping = False
        out.append(line)
    return "".join(out)


# (id, study text or None for bnas_smoke, --set items, key, words in the message)
CASES = [
    (
        "duplicate_top_level_key",
        _smoke_text(**{"trials: 4\n": "trials: 4\ntrials: 40\n"}),
        [],
        "trials",
        ["given twice", "'4'", "'40'", "each key may appear once"],
    ),
    (
        "duplicate_nested_key",
        _smoke_text(**{"    layers: 3\n": "    layers: 3\n    layers: 5\n"}),
        [],
        "fixed.search.layers",
        ["given twice", "'3'", "'5'"],
    ),
    ("space_empty_mapping", None, ["space={}"], "space", ["samples nothing ({})"]),
    ("space_null", None, ["space=null"], "space", ["samples nothing (null)"]),
    ("space_null_in_file", _smoke_text_without_space() + "space:\n", [], "space", ["samples nothing (null)"]),
    ("top_k_above_trials", None, ["retrain.top_k=5"], "retrain.top_k", ["5 genotypes", "4 search trial"]),
    ("nan_learning_rate", None, ["fixed.search.lr=.nan"], "fixed.search.lr", ["got NaN"]),
    (
        "infinite_learning_rate",
        None,
        ["fixed.search.weight_decay=.inf"],
        "fixed.search.weight_decay",
        ["infinity"],
    ),
    (
        "seed_beyond_numpy",
        None,
        ["fixed.seed=18446744073709551616"],
        "fixed.seed",
        ["must lie in [0, 4294967295]"],
    ),
    (
        "sampler_option_of_the_wrong_type",
        None,
        ["sampler.options={n_startup_trials: abc}"],
        "sampler.options",
        ["n_startup_trials expects int (default 10), got 'abc'"],
    ),
    (
        "retrain_device_override",
        None,
        ["retrain.overrides.device=cuda"],
        "retrain.overrides.device",
        ["which the cluster decides"],
    ),
    (
        "sampled_placement",
        None,
        ["space.device={choice: [cpu, cuda]}"],
        "space.device",
        ["cannot be sampled"],
    ),
    (
        "fixed_and_sampled",
        None,
        ["fixed.search.sampling_k=2"],
        "fixed.search.sampling_k",
        ["also sampled by space.search.sampling_k"],
    ),
    (
        "nan_in_the_space",
        None,
        ["space.search.lr={float: [.nan, 0.05]}"],
        "space",
        ["search.lr", "got NaN"],
    ),
    (
        "one_op_for_the_stages",
        None,
        ["fixed.search.ops=[skip_connect]"],
        "fixed.search.ops",
        ["['skip_connect']", "nothing to remove", "at least 2 operations"],
    ),
    (
        "more_stages_than_ops",
        None,
        ["fixed.reduction.stages=4"],
        "fixed.reduction.stages",
        ["4 stages would remove more than the 3 ops"],
    ),
    (
        "train_subset_below_the_batch",
        None,
        ["fixed.data.train_subset=40"],
        "fixed.data.train_subset",
        ["40 images leave 20", "search.batch_size=32", "at least 64"],
    ),
    (
        "train_subset_below_the_sampled_batch",
        _smoke_text(**{"    batch_size: 32\n    ops": "    ops"}),  # sampled, so not fixed as well
        ["fixed.data.train_subset=128", "space.search.batch_size={choice: [32, 128]}"],
        "space",
        ["'search.batch_size': 128", "128 images leave 64", "search.batch_size=128"],
    ),
    (
        "train_subset_below_the_retraining_batch",
        None,
        ["retrain.overrides.data.train_subset=128", "retrain.overrides.retrain.batch_size=256"],
        "retrain.overrides",
        ["128 images are fewer than one retraining batch", "retrain.batch_size=256"],
    ),
    (
        "train_subset_below_the_classes",
        None,
        ["fixed.data.train_subset=8", "fixed.search.batch_size=2", "fixed.retrain.batch_size=2"],
        "fixed.data.train_subset",
        ["8 images cannot hold one of each of the 10 classes"],
    ),
    ("more_cpus_than_the_cluster", None, ["resources.cpu=64"], "resources.cpu", ["64 CPUs", "wait forever"]),
    (
        "search_step_beyond_the_memory",
        None,
        ["fixed.data.image_size=512", "fixed.search.init_channels=256"],
        "space",
        ["one search step needs at least", "GiB", "data.image_size=512", "more than the memory Ray gives"],
    ),
    ("more_gpus_than_the_cluster", None, ["resources.gpu=4096"], "resources.gpu", ["4096 GPU"]),
    (
        "not_utf8",
        b"\x80\x81 garbage",
        [],
        None,
        ["is not UTF-8 text", "byte 0x80 at offset 0"],
    ),
    (
        "nul_character",
        b"description: x\x00\n",
        [],
        None,
        ["malformed YAML", "#x0000"],
    ),
]
if not torch.cuda.is_available():  # where there is a GPU, one per trial is a valid request
    CASES.append(("gpu_where_none_exists", None, ["resources.gpu=1"], "resources.gpu", ["has no GPU"]))


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_exists(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path, case: tuple, check: bool
) -> None:
    name, text, sets, key, words = case
    study = "bnas_smoke"
    if text is not None:
        path = tmp_path / f"{name}.yaml"
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        study = str(path)
    argv = smoke_args(
        tmp_path / "study", f"sqlite:///{tmp_path / 'mlflow.db'}", fake_cifar_root, settings=sets
    )
    argv[argv.index("--study") + 1] = study
    before = sorted(p.name for p in tmp_path.iterdir())
    children = _children()

    rc = run_main([*argv, "--check"] if check else [*argv, "--no-dashboard", "--quiet"])

    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert (study if text is not None else "bnas_smoke.yaml") in err.splitlines()[0]
    if key:
        assert f": {key}: " in err, err
    for w in words:
        assert w in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, no mlflow.db, no optuna.db
    assert _children() <= children  # no Ray process


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
@pytest.mark.parametrize("file_name", ["...yaml", "a b<i>.yaml", "-x.yaml"], ids=["dots", "html", "dash"])
def test_a_study_named_by_its_file_obeys_the_name_rules(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path, file_name: str, check: bool
) -> None:
    """A study's name is its file's name unless --name gives one: the same rules apply to both (a file
    ``...yaml`` would otherwise name the study ``..``, and spaces or HTML would reach MLflow)."""
    path = tmp_path / file_name
    path.write_text(SMOKE.read_text())
    argv = smoke_args(tmp_path / "study", f"sqlite:///{tmp_path / 'mlflow.db'}", fake_cifar_root)
    argv[argv.index("--study") + 1] = str(path)
    before = sorted(p.name for p in tmp_path.iterdir())

    rc = run_main([*argv, "--check"] if check else [*argv, "--no-dashboard", "--quiet"])

    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"error: {path}: study name") and "Traceback" not in err, err
    assert repr(path.name[: -len(".yaml")]) in err and "--name gives another" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # The same file under a valid --name passes the check.
    assert run_main([*argv, "--name", "renamed", "--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_an_output_folder_that_is_a_file_is_one_error(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path, check: bool
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = smoke_args(afile, f"sqlite:///{tmp_path / 'mlflow.db'}", fake_cifar_root)
    rc = run_main([*argv, "--check"] if check else [*argv, "--no-dashboard", "--quiet"])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and err
        == f"error: --out: {afile} is a file, not a folder; give --out a folder (new or the study's)\n"
    )
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_read_only_output_folder_is_one_error(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path
) -> None:
    """A read-only file system (root writes through permissions, so a read-only tmpfs): exit 2, one
    line naming the folder, no MLflow store created; skipped where mounting is not allowed."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        argv = smoke_args(ro / "study", f"sqlite:///{tmp_path / 'mlflow.db'}", fake_cifar_root)
        rc = run_main([*argv, "--no-dashboard", "--quiet"])
        err = capsys.readouterr().err
        assert (
            rc == 2
            and err
            == f"error: {ro / 'study'}: Read-only file system; free space or choose a "
            "writable folder, then rerun (it resumes)\n"
        ), err
        assert not (tmp_path / "mlflow.db").exists()


def test_every_problem_of_a_duplicated_file_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "dups.yaml"
    path.write_text("trials: 2\nfixed:\n  search: {layers: 3, layers: 4}\ntrials: 3\n")
    with pytest.raises(ConfigError) as err:
        load_study(str(path))
    assert [k for k, _ in err.value.problems] == ["fixed.search.layers", "trials"]
    assert "lines" not in err.value.problems[1][1] and "line 1 ('2') and line 4 ('3')" in str(err.value)


@pytest.mark.parametrize(
    "resources, words",
    [
        ({"cpu": 1, "gpu": "auto"}, None),
        ({"cpu": 1000}, "1000 CPUs per trial but the cluster has"),
        ({"gpu": 1000}, "1000 GPU"),
    ],
)
def test_check_cluster_uses_the_local_machine_without_starting_ray(
    tmp_path: Path, resources: dict, words: str | None
) -> None:
    children = _children()
    spec = load_study("bnas_smoke", [f"resources={resources}"])
    local = probe_resources(None)
    assert local is not None and local["CPU"] >= 1 and local["GPU"] == torch.cuda.device_count()
    if words is None:
        plan = check_cluster(spec, None)
        assert plan is not None and plan.resources["cpu"] == 1
    else:
        with pytest.raises(ConfigError, match=words):
            check_cluster(spec, None)
    assert _children() <= children


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("::ffff:192.0.2.2", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.platform
@pytest.mark.parametrize("address", ["10.0.0.1:6379", "example.org:6379", ":6379", "auto"])
def test_only_a_loopback_address_names_a_single_machine_cluster(address: str) -> None:
    """A driver joins as a single-machine one (node IP 127.0.0.1) only a cluster at a loopback address
    whose nodes all registered loopback IPs; any other address is not even asked."""
    assert not _single_machine_cluster(address)


@pytest.mark.parametrize(
    "sets, rc, words",
    [
        ([], 0, ["ok ("]),
        (["resources.cpu=64"], 2, ["resources.cpu: asks for 64 CPUs per trial but the cluster has 2"]),
    ],
)
def test_check_reads_an_address_cluster_without_joining_it(
    tmp_path: Path, ray_head: str, fake_cifar_root: Path, sets: list[str], rc: int, words: list[str]
) -> None:
    """``--check --address``: the cluster's resources come from its GCS (the fixture's head has 2 CPUs)."""
    from platform_helpers import run_cli

    argv = smoke_args(
        tmp_path / "study", f"sqlite:///{tmp_path / 'mlflow.db'}", fake_cifar_root, "--address", ray_head,
        "--check", settings=sets,
    )  # fmt: skip
    res = run_cli(argv, cwd=tmp_path, timeout=120)
    assert res.returncode == rc, res.stdout[-2000:] + res.stderr[-2000:]
    for w in words:
        assert w in res.stdout + res.stderr
    assert not (tmp_path / "study").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_second_driver_on_a_running_study_is_refused(
    run_main, capsys, clean_env, tmp_path: Path, fake_cifar_root: Path
) -> None:
    """While one driver holds the study folder, another run.py on it stops with one error naming the
    holder, before Ray starts; the lock dies with its holder (the kernel's flock)."""
    from bnas.platform.orchestrate import LOCK_FILE, study_lock

    out = tmp_path / "study"
    argv = smoke_args(out, f"sqlite:///{tmp_path / 'mlflow.db'}", fake_cifar_root, settings=[])
    children = _children()
    with study_lock(out):
        rc = run_main([*argv, "--no-dashboard", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
        assert f"{out}: this study folder is being run by run.py (pid {os.getpid()}" in err, err
        assert _children() <= children  # no Ray process
    with study_lock(out):  # released: the next driver gets it
        assert (out / LOCK_FILE).is_file()
