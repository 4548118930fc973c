"""Studies as data: every study in tune_configs/ loads, and bad studies fail naming the file and key.

Fast: no Ray. The space is exercised through a real (in-memory) Optuna study.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from bnas.config import ConfigError
from bnas.platform.orchestrate import plan_trials
from bnas.platform.space import SearchSpace, parse_space
from bnas.platform.study import (
    STUDY_KEYS,
    Objective,
    ResourceSpec,
    RetrainStage,
    SamplerSpec,
    SchedulerSpec,
    StudyFile,
    StudySpec,
    list_studies,
    load_study,
    make_sampler,
)

STUDIES = list(list_studies())


def write_study(tmp_path: Path, text: str, name: str = "bad_study") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


MINIMAL = """
description: a test study
trials: 2
fixed:
  search: {layers: 3, init_channels: 8}
space:
  search.sampling_k: {choice: [2, 4]}
"""


def test_the_three_kinds_of_study_exist() -> None:
    assert {"bnas_cifar", "bnas_smoke"} <= set(STUDIES)
    multi = [n for n in STUDIES if load_study(n, data_root="/data").multi_objective]
    assert multi, "no multi-objective example study"


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_validates_and_describes_itself(name: str) -> None:
    spec = load_study(name, data_root="/data")
    assert spec.description and "\n" not in list_studies()[name]
    assert spec.space.params, "a study samples at least one setting"
    assert spec.base_config.data.root == "/data"
    if spec.scheduler.name == "asha":
        assert spec.grace_period > spec.max_warmup
    make_sampler(spec)  # options match the sampler


def test_smoke_and_cifar_resources() -> None:
    assert load_study("bnas_cifar").resources.gpu == 1
    smoke = load_study("bnas_smoke")
    assert smoke.concurrency == 2 and 2 <= smoke.trials <= 4 and smoke.resources.gpu == "auto"
    assert 2 <= len(smoke.base_config.search.ops) - 1 <= 3  # 2-3 reduction stages


def test_define_by_run_conditional_parameter() -> None:
    spec = load_study("bnas_smoke")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        values = spec.space.sample(study.ask())
        seen.add(values["binarization.method"])
        assert ("binarization.pcnn_lambda" in values) == (values["binarization.method"] == "pcnn")
        assert ("reduction.temperature" in values) == (values["reduction.strategy"] == "performance")
        spec.trial_config(values)  # every sample resolves to valid settings
    assert seen == {"xnor", "xnor_channel", "pcnn"}


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("fixed: {search: {layers: 3}\nspace: [", None, ["malformed YAML", "line"]),
        (MINIMAL + "trails: 3\n", "trails", ["unknown key", "did you mean 'trials'", "valid keys here"]),
        (
            MINIMAL + "  data.root: {choice: [/a, /b]}\n",
            "space.data.root",
            ["where or how a trial runs", "cannot be sampled", "set it under fixed"],
        ),
        (
            MINIMAL.replace("layers: 3,", "layers: 3, sampling_k: 2,"),
            "fixed.search.sampling_k",
            ["also sampled by space.search.sampling_k", "set it in one place"],
        ),
        (
            MINIMAL.replace("layers: 3", "layerz: 3"),
            "fixed.search.layerz",
            ["unknown key", "valid keys here: layers"],
        ),
        (MINIMAL.replace("trials: 2", "trials: many"), "trials", ["expected int"]),
        (
            MINIMAL.replace("[2, 4]", "[2, 3]"),
            "space",
            ["'search.sampling_k': 3", "not divisible by sampling_k=3"],
        ),
        (
            MINIMAL.replace("search.sampling_k", "search.samplingk"),
            "space.search.samplingk",
            ["not a setting", "did you mean 'search.sampling_k'"],
        ),
        (
            MINIMAL + "  binarization.pcnn_lambda: {float: [0.1, 0.2], when: {binarization.method: pcnn}}\n",
            "space.binarization.pcnn_lambda.when",
            ["not a parameter listed above"],
        ),
        (
            MINIMAL + "  search.lr: {float: [0.0, 0.1], log: true}\n",
            "space.search.lr.float",
            ["log domain needs low > 0"],
        ),
        (
            MINIMAL + "  search.lr: {uniform: [0.0, 0.1]}\n",
            "space.search.lr",
            ["unknown key", "choice, float, int"],
        ),
        (
            MINIMAL + "  search.ops: {choice: [[skip_connect], [max_pool_3x3]]}\n",
            "space.search.ops.choice",
            ["choices must be numbers"],
        ),
        (MINIMAL + "fixed_extra: 1\n", "fixed_extra", ["unknown key"]),
        (
            MINIMAL + "retrain: {overrides: {retrain.drop_path_prob: 1.5}}\n",
            "retrain.overrides",
            ["retrain.drop_path_prob", "must lie in [0, 1)"],
        ),
        (
            MINIMAL + "retrain: {overrides: {retrain.layer: 8}}\n",
            "retrain.overrides.retrain.layer",
            ["not a setting"],
        ),
        (MINIMAL + "retrain: {seeds: []}\n", "retrain.seeds", ["at least one seed"]),
        (MINIMAL + "scheduler: {grace_period: 1}\nfixed_: 0\n", "fixed_", ["unknown key"]),
        (
            MINIMAL.replace("fixed:", "fixed:\n  reduction: {warmup_epochs: 2}")
            + "scheduler: {name: asha, grace_period: 2}\n",
            "scheduler.grace_period",
            ["during the warm-up"],
        ),
        (
            MINIMAL + "scheduler: {metric: derived_val_acc}\n",
            "scheduler.metric",
            ["not reported every epoch"],
        ),
        (MINIMAL + "objectives: [{metric: accuracy, mode: max}]\n", "objectives[0].metric", ["not reported"]),
        (
            MINIMAL + "sampler: {name: tpe, options: {n_startup: 3}}\n",
            "sampler.options",
            ["no option(s)", "n_startup_trials"],
        ),
        (MINIMAL + "sampler: {name: cmaes}\n", "sampler.name", ["expected"]),
        (MINIMAL + "resources: {gpu: some}\n", "resources.gpu", ["expected"]),
        (
            MINIMAL.replace("search: {", "device: cuda\n  search: {") + "resources: {gpu: 0}\n",
            "fixed.device",
            ["needs a GPU"],
        ),
    ],
)
def test_bad_study_names_file_and_key(tmp_path: Path, text: str, key: str | None, words: list[str]) -> None:
    path = write_study(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study(str(path))
    msg = str(err.value)
    assert str(path) in msg
    if key:
        assert err.value.key == key, msg
    for w in words:
        assert w in msg, msg


def test_set_overrides_reach_every_part(tmp_path: Path) -> None:
    path = write_study(tmp_path, MINIMAL)
    spec = load_study(
        str(path),
        [
            "trials=3",
            "fixed.search.layers=4",
            "space.search.lr={float: [0.01, 0.1]}",
            "retrain.overrides.retrain.epochs=2",
            "retrain.seeds=[3]",
        ],
    )
    assert spec.trials == 3 and spec.base_config.search.layers == 4
    assert spec.space.names == ["search.sampling_k", "search.lr"]
    assert spec.retrain_overrides == {"retrain.epochs": 2} and spec.retrain.seeds == [3]
    retrain = spec.retrain_config(spec.base_config.to_dict(), 3).retrain
    # A retraining trial checkpoints every epoch: each report to Tune carries its checkpoint.
    assert retrain.epochs == 2 and retrain.checkpoint_every == 1


def test_unknown_study_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_study("bnas_smok")
    assert "did you mean 'bnas_smoke'" in str(err.value)
    for name in STUDIES:
        assert name in str(err.value)


def test_space_probe_falls_back_to_one_value_at_a_time() -> None:
    raw = {
        f"search.{k}": {"choice": list(range(1, 20))}
        for k in ("batch_size", "nodes", "stem_multiplier", "layers")
    }
    space = parse_space(
        raw, "x.yaml", [f"search.{k}" for k in ("batch_size", "nodes", "stem_multiplier", "layers")]
    )
    points = list(space.probe_points())
    assert space.count_combinations() > 20_000 and len(points) == 4 * 19


def test_gpu_request_against_the_cluster(tmp_path: Path) -> None:
    spec = load_study(str(write_study(tmp_path, MINIMAL + "resources: {cpu: 1, gpu: 1}\n")))
    with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
        plan_trials(spec, {"CPU": 2.0})
    assert plan_trials(spec, {"CPU": 2.0, "GPU": 4.0}).device == "cuda"
    auto = load_study(str(write_study(tmp_path, MINIMAL + "resources: {cpu: 1, gpu: auto}\n", "auto")))
    assert plan_trials(auto, {"CPU": 2.0}).resources == {"cpu": 1, "gpu": 0.0}
    assert plan_trials(auto, {"CPU": 2.0, "GPU": 1.0}).resources == {"cpu": 1, "gpu": 1.0}
    both = load_study(str(write_study(tmp_path, MINIMAL + "resources: {cpu: 8, gpu: 1}\n", "both")))
    with pytest.raises(ConfigError) as e:  # every resource problem in one error: one fix, one rerun
        plan_trials(both, {"CPU": 2.0})
    assert [k for k, _ in e.value.problems] == ["resources.gpu", "resources.cpu"]
    assert "--set resources.cpu=2" in str(e.value)
    big = load_study(str(write_study(tmp_path, MINIMAL + "resources: {cpu: 8}\n", "big")))
    with pytest.raises(ConfigError, match="wait forever"):
        plan_trials(big, {"CPU": 2.0})


def _plain(value: Any) -> Any:
    """A loaded study value as a study file writes it: sections as mappings, the space as domains."""
    if isinstance(value, SearchSpace):
        space = {}
        for p in value.params:
            domain: dict[str, Any] = (
                {"choice": list(p.choices)} if p.kind == "choice" else {p.kind: [p.low, p.high]}
            )
            if p.log:
                domain["log"] = True
            if p.step is not None:
                domain["step"] = p.step
            if p.when:
                domain["when"] = {k: v[0] if len(v) == 1 else list(v) for k, v in p.when.items()}
            space[p.name] = domain
        return space
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _holds(whole: Any, part: Any, where: str = "") -> None:
    """Every key and item of ``part`` (a study file's YAML) is in ``whole`` with the same value."""
    if isinstance(part, dict):
        assert isinstance(whole, dict), where
        for k, v in part.items():
            assert k in whole, f"{where}.{k} was lost"
            _holds(whole[k], v, f"{where}.{k}")
    elif isinstance(part, list):
        assert isinstance(whole, list) and len(whole) == len(part), where
        for i, (w, p) in enumerate(zip(whole, part, strict=True)):
            _holds(w, p, f"{where}[{i}]")
    else:
        # (A float setting may hold the file's int: 1 -> 1.0; a bool stays a bool.)
        same = whole == part and isinstance(whole, bool) == isinstance(part, bool)
        assert same, f"{where}: {whole!r} != {part!r}"


#: A study that sets every key of the file format, none to its default value.
EVERY_KEY_SET = """
description: every key set
fixed:
  search: {layers: 3, init_channels: 8}
  reduction: {epochs_per_stage: 2, warmup_epochs: 1}
space:
  search.sampling_k: {choice: [2, 4]}
  reduction.strategy: {choice: [performance, alpha, ucb]}
  reduction.temperature: {float: [0.05, 0.5], log: true, when: {reduction.strategy: [performance, ucb]}}
  reduction.rounds: {int: [1, 5], step: 2, when: {reduction.strategy: performance}}
  search.lr: {float: [0.01, 0.05], step: 0.01}
objectives:
  - {metric: derived_val_acc, mode: max}
  - {metric: packed_bytes, mode: min}
sampler: {name: nsga2, seed: 7, options: {population_size: 4}}
scheduler: {name: fifo, metric: val_loss, mode: min, grace_period: 3, reduction_factor: 3}
trials: 6
concurrency: 3
resources: {cpu: 2, gpu: 0}
max_failures: 2
retrain: {top_k: 2, seeds: [3, 4], overrides: {retrain.epochs: 2, retrain.layers: 3}}
"""


@pytest.mark.parametrize("name", [*STUDIES, "every_key_set"])
def test_study_file_round_trip_is_plain_yaml(name: str, tmp_path: Path) -> None:
    """A study loads without losing anything its file says, and the loaded study written back as plain
    YAML (every key of the file format) loads to the very same study, field by field."""
    every_key = name == "every_key_set"
    if every_key:
        (tmp_path / "in").mkdir()
        name = str(write_study(tmp_path / "in", EVERY_KEY_SET, name))
    spec = load_study(name, data_root="/data")
    name = spec.name
    raw = yaml.safe_load(Path(spec.source).read_text())
    assert set(raw) <= set(STUDY_KEYS)
    if every_key:
        assert set(raw) == set(STUDY_KEYS)
        default = StudyFile()
        for key in STUDY_KEYS:
            value, unset = getattr(spec, key), getattr(default, key)
            if dataclasses.is_dataclass(unset):  # a section: each of its fields
                for f in dataclasses.fields(value):
                    assert getattr(value, f.name) != getattr(unset, f.name), f"{key}.{f.name}"
            else:
                assert value != unset, key
    # Every field of a loaded study is a key of the file, or its name, source or a derived figure.
    assert {f.name for f in dataclasses.fields(StudySpec)} == {*STUDY_KEYS, "name", "source", "max_warmup"}
    written = {key: _plain(getattr(spec, key)) for key in STUDY_KEYS}

    # Nothing of the file is lost in loading (data.root is the one value loading replaces).
    assert spec.fixed["data"]["root"] == "/data"
    if isinstance(raw.get("fixed", {}).get("data"), dict):
        raw["fixed"]["data"]["root"] = "/data"
    _holds(written, raw)

    # Written back as plain YAML (safe_dump refuses Python objects) it loads to the same study.
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(written, sort_keys=False))
    again = load_study(str(path), data_root="/data")
    assert again.name == spec.name and again.source == str(path)
    assert dataclasses.replace(again, source=spec.source) == spec
    assert again.digest() == spec.digest()


def test_a_study_file_reports_all_its_problems(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace("trials: 2", "trials: 0").replace("layers: 3", "layers: 2")
        + "concurrency: many\nresources: {cpu: .nan}\n"
        + "retrain: {seeds: [1, 1], overrides: {retrain.layer: 8}}\n"
    )
    path = write_study(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study(str(path))
    assert [k for k, _ in err.value.problems] == [
        "trials",
        "concurrency",
        "resources.cpu",
        "retrain.seeds",
        "fixed.search.layers",
        "retrain.overrides.retrain.layer",
    ]
    lines = str(err.value).splitlines()
    assert len(lines) == 6 and all(line.startswith(f"{path}: ") for line in lines)
    assert "got NaN" in lines[2] and "lists a seed twice: [1, 1]" in lines[3]


@pytest.mark.parametrize(
    "cls, key, value, words",
    [
        (Objective, "metric", "accuracy", "'accuracy' is not reported by a search trial; valid: derived"),
        (Objective, "mode", "maximum", "expected 'max' or 'min'"),
        (SamplerSpec, "options", {"n_startup": 3}, "TPESampler has no option(s) ['n_startup']"),
        (SchedulerSpec, "metric", "derived_val_acc", "is not reported every epoch; valid: val_acc"),
        (SchedulerSpec, "reduction_factor", 1, "must be >= 2, got 1"),
        (ResourceSpec, "gpu", -1, "must be >= 0 or auto, got -1"),
        (RetrainStage, "seeds", [], "needs at least one seed"),
        (StudyFile, "trials", 0, "must be >= 1, got 0"),
    ],
)
def test_study_sections_validate_in_construction(cls: type, key: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        cls(**{key: value})
    assert err.value.key == key and words in str(err.value)


def test_study_digest_ignores_the_source_but_not_the_settings(tmp_path: Path) -> None:
    a = load_study(str(write_study(tmp_path, MINIMAL, "a")), data_root="/data")
    b = load_study(str(write_study(tmp_path, MINIMAL, "a")), ["trials=2"], data_root="/data")
    c = load_study(str(write_study(tmp_path, MINIMAL, "a")), ["sampler.options={n_startup_trials: 3}"])
    assert a.source != b.source and a.digest() == b.digest() != c.digest()
    assert c.sampler_options == {"n_startup_trials": 3} and a.sampler_options == {} == a.retrain_overrides
