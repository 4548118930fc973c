"""ONNX export (bnas.onnx_export) and ``python -m bnas export``: onnxruntime reproduces PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnas.__main__ import main
from bnas.binarization import BINARIZATIONS, BinarySpec
from bnas.eval_network import EvalNetwork
from bnas.export import export_packed, load_packed, read_packed
from bnas.folding import FoldedConv2d, fold_network
from bnas.genotype import GENOTYPES
from bnas.onnx_export import INPUT, OUTPUT, export_onnx, onnx_binary_initializers

ort = pytest.importorskip("onnxruntime")

IMAGE = 16


def _trained_like(method: str, activations: str, genotype: str = "bnas_xnor") -> EvalNetwork:
    """A small network with real BN statistics and affine values and a non-trivial PCNN projection."""
    torch.manual_seed(0)
    net = EvalNetwork(
        GENOTYPES.get(genotype), C=4, num_classes=10, layers=3, spec=BinarySpec(method, activations)
    )
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, IMAGE, IMAGE))
        for m in net.modules():
            if hasattr(m, "projection"):
                m.projection.uniform_(-1.5, 1.5)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    return session.run([OUTPUT], {INPUT: x.numpy()})[0]


@pytest.mark.parametrize("activations", ["real", "binary"])
@pytest.mark.parametrize("method", BINARIZATIONS.names())
def test_onnx_matches_the_trained_network(method: str, activations: str, tmp_path: Path) -> None:
    net = _trained_like(method, activations)
    path = tmp_path / "m.onnx"
    report = export_onnx(net, path, IMAGE)
    assert report["bytes"] == path.stat().st_size > 0
    assert report["max_abs_diff"] < 1e-5 * max(report["max_abs_logit"], 1.0)
    # Against the trained network itself (not only the exported module), at two batch sizes.
    for n in (1, 5):
        x = torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            ref = net(x)[0].numpy()
        out = _ort(path, x)
        assert out.shape == (n, 10)
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    # Binary weights are stored as +-s: one magnitude per output channel, one conv per binary layer.
    n_binary = sum(1 for m in fold_network(net).modules() if isinstance(m, FoldedConv2d) and m.binary)
    one_magnitude = [name for name, _, k in onnx_binary_initializers(path) if k == 1]
    assert len(one_magnitude) == n_binary
    assert (n_binary == 0) == (method == "fp")


@pytest.mark.parametrize("version", [1, 2])
def test_onnx_of_a_packed_file_matches_the_trained_network(version: int, tmp_path: Path) -> None:
    net = _trained_like("xnor_channel", "binary", genotype="darts_v2")
    export_packed(net, tmp_path / "m.bnas", version=version)
    export_onnx(load_packed(tmp_path / "m.bnas"), tmp_path / "m.onnx", IMAGE)
    x = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)[0].numpy()
    assert np.abs(_ort(tmp_path / "m.onnx", x) - ref).max() <= 1e-5 * np.abs(ref).max()


def _run_dir(tmp_path: Path, image_size: int | None = IMAGE) -> Path:
    """A retraining output folder as far as export reads it: model.bnas and config.json."""
    run = tmp_path / "run"
    run.mkdir()
    export_packed(_trained_like("xnor", "real"), run / "model.bnas")
    if image_size is not None:
        (run / "config.json").write_text(json.dumps({"data": {"image_size": image_size}}))
    return run


def test_cli_exports_onnx_and_packed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert report["input_shape"] == ["batch", 3, IMAGE, IMAGE] and report["max_abs_diff"] < 1e-5
    assert main(["export", str(run), "--format", "packed", "--out", str(tmp_path / "m.bnas")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert read_packed(tmp_path / "m.bnas")[1] == read_packed(run / "model.bnas")[1]
    assert report["version"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "valid: onnx, packed"),
        (["--format", "onnx", "--no-config"], "data.image_size"),
        (["--format", "onnx", "--empty"], "holds no model.bnas"),
        (["--format", "onnx", "--registry"], "python -m bnas.platform.models export"),
    ],
)
def test_cli_misuse_is_one_error_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path, None if "--no-config" in args else IMAGE)
    if "--empty" in args:
        (run / "model.bnas").unlink()
    flags = [a for a in args if a not in ("--no-config", "--empty", "--registry")]
    source = "models:/bnas-s@champion" if "--registry" in args else str(run)
    assert main(["export", source, *flags, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("out_is_a_folder", "is a folder; give the path of the file to write"),
        ("out_parent_missing", "does not exist; create it first"),
        ("image_size_zero", "image size 0 is outside [1, 1024]"),
        ("config_image_size_huge", "image size 30000 is outside [1, 1024]"),
    ],
)
def test_export_refuses_bad_targets_before_any_work(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path, 30000 if case == "config_image_size_huge" else IMAGE)
    out = {"out_is_a_folder": tmp_path, "out_parent_missing": tmp_path / "no" / "m.onnx"}.get(
        case, tmp_path / "m.onnx"
    )
    extra = ["--image-size", "0"] if case == "image_size_zero" else []
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "m.onnx").exists()
