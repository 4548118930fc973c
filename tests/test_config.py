"""Configuration as data: typed loading, misuse caught before any work, with file and key named."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path
from typing import Any

import pytest

from bnas.binarization import BINARIZATIONS
from bnas.config import (
    ALL_OPS,
    BinarizationConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ReductionConfig,
    RetrainConfig,
    SearchConfig,
    config_from_dict,
    describe_settings,
    load_config,
    parse_overrides,
    phase_problems,
    read_yaml,
    setting,
)
from bnas.data import DATASETS
from bnas.reduction import REDUCTIONS
from bnas.registry import Registry
from bnas.search_space import OPS


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_papers_settings_where_no_measurement_moved_them() -> None:
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.binarization.method, cfg.binarization.activations) == ("xnor", "real")
    assert (cfg.search.layers, cfg.search.init_channels) == (6, 16)
    assert (cfg.retrain.layers, cfg.retrain.init_channels, cfg.retrain.auxiliary_weight) == (20, 36, 0.4)
    assert (cfg.reduction.epochs_per_stage, cfg.reduction.rounds) == (5, 3)
    # Moved by measurement (README "Search signal"), each marked [D]; the paper's values in
    # configs/search_paper.yaml.
    assert (cfg.search.sampling_k, cfg.reduction.subnet_epochs, cfg.search.none_op) == (4, 0, "exclude")
    paper = load_config(Path(__file__).resolve().parents[1] / "configs" / "search_paper.yaml")
    assert (paper.search.sampling_k, paper.reduction.subnet_epochs, paper.search.none_op) == (
        2,
        1,
        "candidate",
    )
    assert (paper.reduction.subnet_weights, paper.reduction.subnet_score, paper.reduction.min_pool) == (
        "shared",
        "accuracy",
        1,
    )


def test_file_and_overrides(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        "seed: 3\nsearch:\n  sampling_k: 4\n  none_op: candidate\n  ops: [none, sep_conv_3x3]\n"
        "retrain:\n  lr: 1\n",
    )
    cfg = load_config(path, ["retrain.epochs=2", "binarization.method=pcnn", "data.train_subset=null"])
    assert (cfg.seed, cfg.search.sampling_k, cfg.search.ops) == (3, 4, ["none", "sep_conv_3x3"])
    assert cfg.retrain.lr == 1.0 and isinstance(cfg.retrain.lr, float)  # ints are accepted as floats
    assert (cfg.retrain.epochs, cfg.binarization.method, cfg.data.train_subset) == (2, "pcnn", None)
    assert load_config(path, {"seed": 5}).seed == 5


def test_flat_and_digest() -> None:
    a, b = load_config(), load_config(None, ["seed=1"])
    assert a.flat()["search.sampling_k"] == 4
    assert a.digest() == load_config().digest() != b.digest()


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "search:\n  sampling_kk: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "search.sampling_kk" in msg and "did you mean 'sampling_k'" in msg
    assert e.value.key == "search.sampling_kk"


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trainig.*unknown key"):
        load_config(_yaml(tmp_path, "trainig: {}\n"))


@pytest.mark.parametrize(
    "text,key,match",
    [
        ("retrain:\n  epochs: ten\n", "retrain.epochs", "expected int"),
        ("retrain:\n  epochs: 2.5\n", "retrain.epochs", "expected int"),
        ("retrain:\n  auxiliary: 1\n", "retrain.auxiliary", "expected bool"),
        ("search:\n  ops: sep_conv_3x3\n", "search.ops", "expected list of str"),
        ("binarization:\n  activations: ternary\n", "binarization.activations", "'real' or 'binary'"),
        ("search: 3\n", "search", "expected"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, key: str, match: str) -> None:
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(path)
    assert e.value.key == key and str(path) in str(e.value)


@pytest.mark.parametrize(
    "overrides,key,match",
    [
        (
            {"search.init_channels": 15, "search.sampling_k": 4},
            "search.init_channels",
            "not divisible by sampling_k=4",
        ),
        ({"retrain.epochs": -1}, "retrain.epochs", ">= 1"),
        ({"reduction.warmup_epochs": -2}, "reduction.warmup_epochs", ">= 0"),
        ({"search.ops": ["sep_conv_3x3", "conv_9x9"]}, "search.ops", "unknown operation.*sep_conv_5x5"),
        ({"search.ops": ["none"]}, "search.ops", "other than 'none'"),
        ({"retrain.drop_path_prob": 1.0}, "retrain.drop_path_prob", r"\[0, 1\)"),
        ({"data.val_fraction": 0.0}, "data.val_fraction", "strictly between"),
        (
            {"binarization.method": "xnr"},
            "binarization.method",
            "unknown name 'xnr'; valid: xnor, xnor_channel",
        ),
        ({"reduction.strategy": "greedy"}, "reduction.strategy", "valid: performance, alpha"),
        ({"data.dataset": "mnist"}, "data.dataset", "valid: cifar10"),
        ({"device": "gpu"}, "device", "auto, cpu, cuda or cuda:N"),
    ],
)
def test_impossible_values(overrides: dict, key: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        load_config(None, overrides)
    assert e.value.key == key


def test_malformed_yaml_gives_the_line(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "seed: 1\nsearch:\n  layers: [1, 2\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+, column \d+") as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_missing_file_and_top_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_yaml(tmp_path, "- 1\n- 2\n"))
    assert load_config(_yaml(tmp_path, "")) == ExperimentConfig()


def test_override_syntax() -> None:
    assert parse_overrides(["a.b=1", "c=[x, y]", "d=", "e=on"]) == {
        "a.b": 1,
        "c": ["x", "y"],
        "d": None,
        "e": True,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["seed"])
    with pytest.raises(ConfigError, match="seed: expected int"):
        load_config(None, {"seed.x": 1})


def test_config_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError, match="^study.yaml: retrain.lr: must be > 0"):
        config_from_dict({"retrain": {"lr": 0}}, source="study.yaml")


def test_every_setting_has_a_source_mark() -> None:
    rows = describe_settings()
    assert len(rows) > 50
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys)) and "search.sampling_k" in keys and "retrain.bn_eps" in keys
    assert all(mark in ("[P]", "[C]", "[R]", "[D]") for _, _, mark, _ in rows)
    assert all(doc for *_, doc in rows)


# --------------------------------------------------------------------------------------------
# The declarative layer: validation in construction, all problems at once, marks drive identity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, key, value, match",
    [
        (DataConfig, "image_size", 4, "must lie in \\[8, 1024\\], got 4"),
        (DataConfig, "val_fraction", 1.0, "strictly between 0 and 1"),
        (DataConfig, "dataset", "mnist", "unknown name 'mnist'; valid: cifar10"),
        (BinarizationConfig, "method", "xnr", "valid: xnor, xnor_channel"),
        (BinarizationConfig, "activations", "ternary", "expected 'real' or 'binary'"),
        (SearchConfig, "layers", 2, "must lie in \\[3, 100\\], got 2"),
        (SearchConfig, "ops", [], "needs at least one operation"),
        (SearchConfig, "ops", ["skip_connect", "skip_connect"], "lists an operation twice"),
        (SearchConfig, "lr", "fast", "expected float"),
        (ReductionConfig, "rounds", 0, "must be >= 1, got 0"),
        (ReductionConfig, "stages", 0, "must be >= 1 or null, got 0"),
        (ReductionConfig, "strategy", "greedy", "valid: performance, alpha, none, ucb"),
        (RetrainConfig, "drop_path_prob", -0.1, r"must lie in \[0, 1\)"),
        (RetrainConfig, "auxiliary", 1, "expected bool"),
        (ExperimentConfig, "threads", 0, "must be >= 1 or null"),
        (ExperimentConfig, "device", "gpu", "auto, cpu, cuda or cuda:N"),
    ],
)
def test_direct_construction_validates(cls: type, key: str, value: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        cls(**{key: value})
    assert e.value.key == key and e.value.source == cls.__name__


@pytest.mark.parametrize("section", ["data", "binarization", "search", "reduction", "retrain"])
def test_replace_validates_every_section(section: str) -> None:
    cfg = ExperimentConfig()
    sec = getattr(cfg, section)
    floats = [f.name for f in dataclasses.fields(sec) if isinstance(getattr(sec, f.name), float)]
    with pytest.raises(ConfigError, match="NaN") as e:
        dataclasses.replace(sec, **{floats[0]: math.nan})
    assert e.value.key == floats[0]
    with pytest.raises(ConfigError, match="expected a"):
        dataclasses.replace(cfg, **{section: None})
    assert dataclasses.replace(sec) == sec  # a valid copy is fine


def test_cross_field_rules_run_in_construction() -> None:
    with pytest.raises(ConfigError, match="not divisible by sampling_k=4") as e:
        SearchConfig(init_channels=6, sampling_k=4)
    assert e.value.key == "init_channels"
    with pytest.raises(ConfigError, match="exceeds epochs_per_stage=2"):
        dataclasses.replace(ReductionConfig(), epochs_per_stage=2)
    with pytest.raises(ConfigError, match="reduction.stages: 3 stages would remove more than the 2 ops"):
        ExperimentConfig(
            search=SearchConfig(ops=["none", "skip_connect", "sep_conv_3x3"], none_op="candidate"),
            reduction=ReductionConfig(stages=3),
        )
    # Without `none` (the default) one op fewer can go.
    with pytest.raises(ConfigError, match="reduction.stages: 2 stages would remove more than the 1 ops"):
        ExperimentConfig(
            search=SearchConfig(ops=["none", "skip_connect", "sep_conv_3x3"]),
            reduction=ReductionConfig(stages=2),
        )


def test_ints_become_floats_in_construction_too() -> None:
    cfg = SearchConfig(lr=1)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert ExperimentConfig(search=cfg).digest() == load_config(None, {"search.lr": 1}).digest()


def test_a_file_reports_all_its_problems(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        "search:\n  sampling_kk: 2\n  lr: -1\nretrain:\n  epochs: ten\nreduction:\n  strategy: greedy\n",
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    keys = [k for k, _ in e.value.problems]
    assert keys == ["search.sampling_kk", "search.lr", "reduction.strategy", "retrain.epochs"]
    lines = str(e.value).splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{path}: ") for line in lines)
    assert "did you mean 'sampling_k'" in lines[0] and "must be > 0, got -1.0" in lines[1]
    assert "'greedy'; valid: performance" in lines[2] and "expected int, got 'ten'" in lines[3]
    assert (e.value.key, e.value.problem) == e.value.problems[0]


def test_a_rule_is_skipped_when_what_it_reads_is_wrong() -> None:
    # init_channels is no int: the divisibility rule would only repeat that with a stale value.
    with pytest.raises(ConfigError) as e:
        load_config(None, {"search.init_channels": "x", "search.sampling_k": 3})
    assert [k for k, _ in e.value.problems] == ["search.init_channels"]


@pytest.mark.parametrize("value", [".nan", ".NaN"])
def test_nan_is_refused(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"retrain.lr: expected float, got NaN"):
        load_config(_yaml(tmp_path, f"retrain:\n  lr: {value}\n"))
    with pytest.raises(ConfigError, match="got NaN"):
        load_config(None, [f"search.max_batches_per_epoch={value}"])
    with pytest.raises(ConfigError, match="got NaN"):
        BinarizationConfig(pcnn_eta=math.nan)  # no bounds declared: still no NaN


@pytest.mark.parametrize(
    "text, key, close",
    [
        ("serch: {}\n", "serch", "search"),
        ("search:\n  sampling_kk: 4\n", "search.sampling_kk", "sampling_k"),
        ("reduction:\n  warmup_epoch: 1\n", "reduction.warmup_epoch", "warmup_epochs"),
        ("binarization:\n  pcnn_lamda: 0.1\n", "binarization.pcnn_lamda", "pcnn_lambda"),
    ],
)
def test_unknown_keys_suggest_the_close_match(tmp_path: Path, text: str, key: str, close: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{close}'") as e:
        load_config(_yaml(tmp_path, text))
    assert e.value.key == key


@pytest.mark.parametrize(
    "key, registry",
    [("binarization.method", BINARIZATIONS), ("reduction.strategy", REDUCTIONS), ("data.dataset", DATASETS)],
)
def test_registries_validate_their_own_names(key: str, registry: Registry) -> None:
    assert all(registry.check(name) is None for name in registry.names())
    assert registry.check("nope") == f"unknown name 'nope'; valid: {', '.join(registry.names())}"
    assert registry.check(["x"]) is not None  # unhashable: a problem, not a crash
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: "nope"})
    assert e.value.problems == [(key, registry.check("nope"))]


def test_result_identity_follows_the_marks() -> None:
    cfg = load_config(None, {"device": "cpu", "threads": 1, "data.root": "/x", "data.num_workers": 2})
    skipped = {"device", "threads", "data.root", "data.download", "data.num_workers"}
    skipped |= {k for k in cfg.flat() if k.startswith("runtime.")}  # the fast path (bnas.accel)
    skipped |= {"search.checkpoint_every", "retrain.checkpoint_every"}  # how often a run saves
    assert cfg.result_identity() == {k: v for k, v in cfg.flat().items() if k not in skipped}
    assert cfg.result_identity() == ExperimentConfig().result_identity()
    assert cfg.result_identity() != load_config(None, {"data.image_size": 16}).result_identity()


def test_the_search_space_owns_the_operations() -> None:
    assert ALL_OPS == list(OPS) and SearchConfig().ops == list(OPS)
    with pytest.raises(ConfigError, match="unknown operation 'conv_9x9'; valid: none, max_pool_3x3"):
        SearchConfig(ops=["conv_9x9", "skip_connect"])


def test_config_error_without_problems_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least one problem"):
        ConfigError.collect([])
    err = ConfigError("must be >= 1", "f.yaml", "seed")
    assert err.problems == [("seed", "must be >= 1")] and str(err) == "f.yaml: seed: must be >= 1"


def test_config_error_keeps_its_problems_across_processes() -> None:
    err = pickle.loads(pickle.dumps(ConfigError.collect([("a.b", "bad"), ("c", "worse")], "f.yaml")))
    assert (err.source, err.key, err.problems) == ("f.yaml", "a.b", [("a.b", "bad"), ("c", "worse")])
    assert str(err) == "f.yaml: a.b: bad\nf.yaml: c: worse"


def test_a_setting_needs_a_known_source_mark() -> None:
    with pytest.raises(ValueError, match="source mark 'paper'"):
        setting(1, "paper", "a constant without a valid mark")


# --------------------------------------------------------------------------------------------
# Hardening: the YAML loader, rules between settings, and what each phase needs (issue 13)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, key, words",
    [
        (b"seed: 1\nseed: 2\n", "seed", ["given twice", "line 1 ('1') and line 2 ('2')"]),
        (b"search:\n  layers: 3\n  layers: 5\n", "search.layers", ["given twice", "'3'", "'5'"]),
        (b"search: {ops: [skip_connect], ops: [none]}\n", "search.ops", ["given twice"]),
        (b"a:\n  - {b: 1, b: 2}\n", "a[0].b", ["given twice"]),
        (b"\x80\x81 garbage", None, ["is not UTF-8 text", "byte 0x80 at offset 0, line 1"]),
        (b"seed: 1\n# caf\xe9\n", None, ["is not UTF-8 text", "byte 0xe9", "line 2"]),
        (b"seed: \x00\n", None, ["malformed YAML", "#x0000"]),
        (b"search: {layers: 3\n", None, ["malformed YAML at line 2"]),
        (b"!!python/object/apply:os.system [echo hi]\n", None, ["malformed YAML", "python/object"]),
    ],
)
def test_read_yaml_refuses_what_it_cannot_read_faithfully(
    tmp_path: Path, content: bytes, key: str | None, words: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and err.value.key == key, msg
    for w in words:
        assert w in msg, msg


def test_read_yaml_accepts_merge_keys_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_bytes(b"\xef\xbb\xbfbase: &b {layers: 3, nodes: 4}\nsearch:\n  <<: *b\n  layers: 5\n")
    assert read_yaml(path) == {"base": {"layers": 3, "nodes": 4}, "search": {"layers": 5, "nodes": 4}}


def test_set_values_with_a_duplicate_key_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_overrides(["search={layers: 3, layers: 4}"])
    assert err.value.key == "search.layers" and "given twice" in str(err.value)


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"search": {"ops": ["skip_connect"]}}, "search.ops", "leaves the 'performance' strategy nothing"),
        ({"search": {"ops": ["max_pool_3x3"]}, "reduction": {"strategy": "alpha"}}, "search.ops", "'alpha'"),
        ({"search": {"ops": ALL_OPS[:3]}, "reduction": {"stages": 3}}, "reduction.stages", "3 stages"),
        ({"data": {"train_subset": 9}}, "data.train_subset", "9 images cannot hold one of each of the 10"),
        ({"data": {"dataset": "cifar100", "train_subset": 64}}, "data.train_subset", "the 100 classes"),
    ],
)
def test_rules_between_settings(data: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, "x.yaml")
    assert err.value.key == key and words in str(err.value)


def test_one_op_without_reduction_is_a_valid_search() -> None:
    cfg = config_from_dict({"search": {"ops": ["sep_conv_3x3"]}, "reduction": {"strategy": "none"}})
    assert cfg.search.ops == ["sep_conv_3x3"]


@pytest.mark.parametrize(
    "data, phase, words",
    [
        ({"data": {"train_subset": 100}, "search": {"batch_size": 64}}, "search", "100 images leave 50"),
        (
            {"data": {"train_subset": 100, "val_fraction": 0.8}, "search": {"batch_size": 32}},
            "search",
            "leave 20",
        ),
        ({"data": {"train_subset": 64}, "retrain": {"batch_size": 96}}, "retrain", "fewer than one retrain"),
        ({"data": {"train_subset": 128}, "search": {"batch_size": 64}}, "search", None),
        ({"data": {"train_subset": 64}, "retrain": {"batch_size": 64}}, "retrain", None),
        ({"data": {"train_subset": None}, "search": {"batch_size": 4096}}, "search", None),
    ],
)
def test_phase_problems(data: dict, phase: str, words: str | None) -> None:
    problems = phase_problems(config_from_dict(data), phase)
    if words is None:
        assert problems == []
    else:
        assert [k for k, _ in problems] == ["data.train_subset"] and words in problems[0][1]


@pytest.mark.parametrize(
    "command, settings, words",
    [
        ("search", "seed: 0\nseed: 1\n", "seed: given twice"),
        ("search", "search: {ops: [skip_connect]}\n", "search.ops: ['skip_connect'] leaves"),
        ("search", "data: {train_subset: 64}\nsearch: {batch_size: 64}\n", "64 images leave 32"),
        ("search", "data: {train_subset: 5}\n", "cannot hold one of each"),
        ("search", "search: {lr: .nan}\n", "search.lr: expected float, got NaN"),
        ("retrain", "data: {train_subset: 32}\nretrain: {batch_size: 64}\n", "fewer than one retraining"),
        ("retrain", b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_core_cli_refuses_before_any_folder(
    tmp_path: Path, fake_cifar_root: Path, capsys, command: str, settings: str | bytes, words: str
) -> None:
    from bnas.__main__ import main

    path = tmp_path / "exp.yaml"
    (path.write_bytes if isinstance(settings, bytes) else path.write_text)(settings)
    out = tmp_path / "run"
    argv = [command, "--config", str(path), "--out", str(out), "--data-root", str(fake_cifar_root)]
    if command == "retrain":
        argv += ["--genotype", "bnas_xnor"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "value, valid, hint",
    [
        ("trails", ["trials", "seed"], " (did you mean 'trials'?)"),
        ("zzz", ["trials", "seed"], ""),
        ("sampling_kk", ["sampling_k", "sampling_t", "lr"], " (did you mean 'sampling_k' or 'sampling_t'?)"),
    ],
)
def test_one_did_you_mean_for_every_unknown_name(value: str, valid: list[str], hint: str) -> None:
    from bnas.errors import did_you_mean

    assert did_you_mean(value, valid, n=2 if "sampling_t" in valid else 1) == hint


@pytest.mark.parametrize(
    "text, match",
    [
        # "Billion laughs": nine aliases per level, nine levels; a few hundred bytes.
        (
            'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
            + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
            + "trials: *i\n",
            "holds more than 100,000 values",
        ),
        ("a: " + "[" * 5000 + "]" * 5000, "nested more than 32 levels deep"),
        ("a: &a [*a]", "recursive alias"),
        ("a: '" + "x" * 100_001 + "'", "at most 100,000"),
    ],
)
def test_yaml_work_is_bounded_whatever_the_file(tmp_path: Path, text: str, match: str) -> None:
    """A small hostile file costs little: refused with one error naming it, within a second here."""
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        read_yaml(path)
    assert str(e.value).startswith(str(path))


def test_yaml_merge_keys_still_work() -> None:
    from bnas.yaml_files import parse_yaml_text

    assert parse_yaml_text("b: &b {x: 1}\no:\n  <<: *b\n  y: 2\n") == {"b": {"x": 1}, "o": {"x": 1, "y": 2}}


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("search.lr", float("inf"), "expected float, got an infinity"),
        ("search.lr", float("-inf"), "expected float, got an infinity"),
        ("seed", 2**64, r"seed: must lie in \[0, 4294967295\]"),
        ("seed", -1, r"seed: must lie in \[0, 4294967295\]"),
    ],
)
def test_infinities_and_unseedable_seeds_are_refused(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, {key: value})
