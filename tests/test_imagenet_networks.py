"""The ImageNet layouts: evaluation network, super-network, the ``network`` setting and its protocol,
and a search and a retraining through them on generated JPEG/PNG class folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bnas.__main__ import main
from bnas.binarization import BINARIZATIONS, BinaryConv2d, BinarySpec
from bnas.config import IMAGENET_PROTOCOL_KEYS, ConfigError, ImageNetProtocol, config_from_dict, load_config
from bnas.data import clear_cache
from bnas.eval_network import EvalNetwork, EvalNetworkImageNet
from bnas.export import export_packed, load_packed
from bnas.genotype import GENOTYPES
from bnas.model_size import size_report
from bnas.networks import NETWORKS, build_eval_network, resolve_network
from bnas.operations import FactorizedReduce
from bnas.retrain import retrain
from bnas.search import run_search
from bnas.search_space import OPS
from bnas.supernet import SuperNetwork, SuperNetworkImageNet
from bnas.testing import make_image_folder

#: Published parameter counts of the ImageNet (mobile) models, 14 cells, C = 48, auxiliary head
#: excluded: DARTS (2nd order) 4.7 M (Liu et al. 2019, Table 3); PC-DARTS (CIFAR-10 cells) 5.3 M
#: (Xu et al. 2020, Table 3).
PUBLISHED_IMAGENET_PARAMS_M = {"darts_v2": 4.7, "pc_darts": 5.3}


def _binary_convs(module: nn.Module) -> list[BinaryConv2d]:
    return [m for m in module.modules() if isinstance(m, BinaryConv2d) and m.method.binary]


# ------------------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("method", BINARIZATIONS.names())
@pytest.mark.parametrize("name", GENOTYPES.names())
def test_eval_network_shapes_and_full_precision_parts(name: str, method: str) -> None:
    torch.manual_seed(0)
    net = EvalNetworkImageNet(GENOTYPES.get(name), C=8, num_classes=5, layers=3, spec=BinarySpec(method))
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and aux.shape == (2, 5)
    net.eval()
    assert net(torch.randn(2, 3, 40, 40))[1] is None
    # Binarization placed as for CIFAR: stems, the first cell's reduce, heads in full precision.
    for part in (net.stem0, net.stem1, net.auxiliary_head, net.classifier):
        assert not _binary_convs(part)
    first = net.cells[0].preprocess0
    assert isinstance(first, FactorizedReduce) and not _binary_convs(first)
    assert bool(_binary_convs(net.cells)) == BINARIZATIONS.get(method).binary


def test_stems_stride_eight() -> None:
    net = EvalNetworkImageNet(GENOTYPES.get("pc_darts"), C=8, num_classes=3, layers=3)
    s0 = net.stem0(torch.randn(1, 3, 64, 64))
    assert s0.shape[-1] == 16 and net.stem1(s0).shape[-1] == 8


@pytest.mark.parametrize("name", sorted(PUBLISHED_IMAGENET_PARAMS_M))
def test_parameter_count_matches_the_published_model(name: str) -> None:
    net = EvalNetworkImageNet(
        GENOTYPES.get(name), C=48, num_classes=1000, layers=14, auxiliary=False, spec=BinarySpec("fp")
    )
    params_m = size_report(net)["params"] / 1e6
    # Published figures are rounded to 0.1 M.
    assert params_m == pytest.approx(PUBLISHED_IMAGENET_PARAMS_M[name], abs=0.05)


@pytest.mark.parametrize("method", ["xnor", "xnor_channel", "fp"])
def test_packed_export_round_trip(tmp_path: Path, method: str) -> None:
    torch.manual_seed(0)
    net = EvalNetworkImageNet(
        GENOTYPES.get("bnas_xnor"), C=8, num_classes=4, layers=3, spec=BinarySpec(method)
    )
    net.train()
    for _ in range(2):  # move the BN statistics away from their initial values
        net(torch.randn(4, 3, 32, 32))
    net.eval()
    export_packed(net, tmp_path / "m.bnas")
    loaded = load_packed(tmp_path / "m.bnas")
    assert isinstance(loaded, EvalNetworkImageNet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], net(x)[0], rtol=1e-4, atol=1e-4)


def test_odd_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        EvalNetworkImageNet(GENOTYPES.get("pc_darts"), C=7, layers=3)
    with pytest.raises(ValueError, match="even"):
        SuperNetworkImageNet(6 + 1, 3, 3, list(OPS), 1, BinarySpec("xnor"))


# ------------------------------------------------------------------------------------------ search
@pytest.mark.parametrize("method", BINARIZATIONS.names())
def test_imagenet_supernetwork_runs_shrinks_and_keeps_fp_stems(method: str) -> None:
    torch.manual_seed(0)
    net = SuperNetworkImageNet(8, 3, 3, list(OPS), 2, BinarySpec(method))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert not _binary_convs(net.stem0) and not _binary_convs(net.stem1)
    assert not any(p is a for p in net.weight_parameters() for a in net.arch_parameters())
    net.remove_op("normal", 0, "sep_conv_5x5")
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_cifar_supernetwork_keeps_its_parameter_names() -> None:
    net = SuperNetwork(4, 3, 3, ["skip_connect", "sep_conv_3x3"], 2, BinarySpec("xnor"))
    names = [n for n, _ in net.named_parameters()]
    assert names[:3] == ["stem.0.weight", "stem.1.weight", "stem.1.bias"]


# ------------------------------------------------------------------------------------------ setting
def test_network_registry_and_auto_resolution() -> None:
    assert NETWORKS.names() == ["cifar", "imagenet"]
    assert resolve_network("auto", "cifar10") == "cifar"
    assert resolve_network("auto", "folder") == "cifar"
    assert resolve_network("auto", "imagenet") == "imagenet"
    assert resolve_network("imagenet", "cifar10") == "imagenet"
    with pytest.raises(ConfigError, match="valid: cifar, imagenet"):
        config_from_dict({"network": "resnet"})


@pytest.mark.parametrize("layout", NETWORKS.names())
def test_build_eval_network_per_layout(layout: str) -> None:
    net = build_eval_network(
        layout, GENOTYPES.get("pc_darts"), C=8, num_classes=3, layers=3, stem_multiplier=3
    )
    assert type(net) is NETWORKS.get(layout).eval_network
    assert net(torch.randn(2, 3, 32, 32))[0].shape == (2, 3)


def test_imagenet_protocol_fills_in_only_what_is_not_set() -> None:
    protocol = ImageNetProtocol()
    cfg = config_from_dict({"network": "imagenet", "retrain": {"layers": 5}})
    for name, section in IMAGENET_PROTOCOL_KEYS.items():
        got = getattr(getattr(cfg, section), name)
        assert got == (5 if name == "layers" else getattr(protocol, name)), name
    cifar = config_from_dict({})
    assert cifar.retrain.layers == 20 and cifar.retrain.label_smoothing == 0 and cifar.network == "auto"
    assert load_config(None, ["data.dataset=imagenet"]).retrain.epochs == protocol.epochs


def test_imagenet_shape_rules() -> None:
    with pytest.raises(ConfigError, match="image_size >= 32"):
        config_from_dict({"network": "imagenet", "data": {"image_size": 16}})
    with pytest.raises(ConfigError, match="retrain.init_channels=9 must be even"):
        config_from_dict({"network": "imagenet", "retrain": {"init_channels": 9}})


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imgs"), per_class=8, n_test=3)


def _tiny(images: Path, storage: str) -> dict:
    return {
        "seed": 0,
        "device": "cpu",
        "network": "imagenet",
        "data": {"dataset": "folder", "root": str(images), "image_size": 32, "storage": storage},
        "search": {
            "layers": 3,
            "init_channels": 4,
            "batch_size": 8,
            "ops": ["max_pool_3x3", "skip_connect", "sep_conv_3x3"],
        },
        "reduction": {
            "epochs_per_stage": 1,
            "warmup_epochs": 0,
            "rounds": 1,
            "subnet_batch_size": 8,
            "subnet_max_batches": 1,
        },
        "retrain": {"layers": 3, "init_channels": 4, "epochs": 2, "batch_size": 8, "eval_batch_size": 16},
    }


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_search_then_retrain_through_the_imagenet_networks(
    images: Path, tmp_path: Path, storage: str
) -> None:
    clear_cache()
    cfg = config_from_dict(_tiny(images, storage))
    assert cfg.retrain.label_smoothing == 0.1 and cfg.retrain.lr_schedule == "step"  # the protocol
    res = run_search(cfg, tmp_path / "search", log=None)
    assert 0.0 <= res.final["derived_val_acc"] <= 1.0
    final = retrain(cfg, res.genotype, tmp_path / "retrain", log=None)
    assert final["epochs"] == 2 and 0.0 <= final["test_acc"] <= 1.0
    assert isinstance(load_packed(tmp_path / "retrain" / "model.bnas"), EvalNetworkImageNet)
    lines = (tmp_path / "retrain" / "metrics.jsonl").read_text().splitlines()
    lrs = [json.loads(line)["lr"] for line in lines]
    assert lrs[1] == pytest.approx(lrs[0] * cfg.retrain.lr_gamma)


def test_cli_retrain_on_a_class_folder(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [
        "retrain",
        "--genotype",
        "pc_darts",
        "--network",
        "imagenet",
        "--channels",
        "8",
        "--layers",
        "3",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--dataset",
        "folder",
        "--data-root",
        str(images),
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    assert main(argv, {}) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["dataset"] == "folder" and final["params"] > 0


def test_cli_reports_an_unreadable_image_in_one_line(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    root = shutil.copytree(images, tmp_path / "bad")
    (root / "train" / "bee" / "0003.jpg").write_bytes(b"garbage")
    clear_cache()
    argv = [
        "retrain",
        "--genotype",
        "pc_darts",
        "--network",
        "imagenet",
        "--channels",
        "4",
        "--layers",
        "3",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--dataset",
        "folder",
        "--data-root",
        str(root),
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--set",
        "data.storage=stream",
        "--set",
        "data.num_workers=1",
    ]
    assert main(argv, {}) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "0003.jpg" in err and len(err.splitlines()) == 1


def test_cli_summary_keys_do_not_depend_on_the_layout(capsys: pytest.CaptureFixture) -> None:
    reports = []
    for layout in NETWORKS.names():
        assert (
            main(
                [
                    "summary",
                    "--genotype",
                    "bnas_xnor",
                    "--network",
                    layout,
                    "--channels",
                    "8",
                    "--layers",
                    "5",
                ],
                {},
            )
            == 0
        )
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0].keys() == reports[1].keys()
    assert reports[0]["num_classes"] == 10 and reports[1]["num_classes"] == 1000
    assert main(["summary", "--genotype", "bnas_xnor", "--network", "imagenet", "--channels", "9"], {}) == 2
    assert "even" in capsys.readouterr().err
    assert main(["summary", "--genotype", "bnas_xnor", "--network", "vgg"], {}) == 2


def test_summary_of_the_cifar_layout_is_the_cifar_network() -> None:
    net = build_eval_network("cifar", GENOTYPES.get("pc_darts"), C=8, num_classes=10, layers=5)
    assert type(net) is EvalNetwork
