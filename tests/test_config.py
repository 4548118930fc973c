"""Configuration as data: typed loading, misuse caught before any work, with file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnas.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    describe_settings,
    load_config,
    parse_overrides,
)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_papers_settings() -> None:
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.binarization.method, cfg.binarization.activations) == ("xnor", "real")
    assert (cfg.search.sampling_k, cfg.search.layers, cfg.search.init_channels) == (2, 6, 16)
    assert (cfg.retrain.layers, cfg.retrain.init_channels, cfg.retrain.auxiliary_weight) == (20, 36, 0.4)
    assert (cfg.reduction.epochs_per_stage, cfg.reduction.rounds, cfg.reduction.subnet_epochs) == (5, 3, 1)


def test_file_and_overrides(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path, "seed: 3\nsearch:\n  sampling_k: 4\n  ops: [none, sep_conv_3x3]\nretrain:\n  lr: 1\n"
    )
    cfg = load_config(path, ["retrain.epochs=2", "binarization.method=pcnn", "data.train_subset=null"])
    assert (cfg.seed, cfg.search.sampling_k, cfg.search.ops) == (3, 4, ["none", "sep_conv_3x3"])
    assert cfg.retrain.lr == 1.0 and isinstance(cfg.retrain.lr, float)  # ints are accepted as floats
    assert (cfg.retrain.epochs, cfg.binarization.method, cfg.data.train_subset) == (2, "pcnn", None)
    assert load_config(path, {"seed": 5}).seed == 5


def test_flat_and_digest() -> None:
    a, b = load_config(), load_config(None, ["seed=1"])
    assert a.flat()["search.sampling_k"] == 2
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
