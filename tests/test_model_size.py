"""Model size accounting (method.md section 10) and the packed export that backs it."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from bnas.binarization import BINARIZATIONS, BinaryConv2d, BinarySpec
from bnas.eval_network import EvalNetwork
from bnas.export import MAGIC, MAGIC_V1, PackedFormatError, export_packed, load_packed, read_packed
from bnas.folding import ChannelAffine, FoldedConv2d, fold_network, is_folded
from bnas.genotype import GENOTYPES
from bnas.model_size import size_report
from bnas.testing import rewrite_packed_header

METHODS = BINARIZATIONS.names()
KEYS = {
    "params",
    "binary_params",
    "fp_params",
    "scales",
    "bn_stats",
    "packed_bytes",
    "fp32_bytes",
    "compression",
    "folded_floats",
    "packed_bytes_unfolded",
    "fp32_bytes_unfolded",
    "compression_unfolded",
}


def _net(
    method: str = "xnor",
    activations: str = "real",
    auxiliary: bool = True,
    C: int = 8,
    layers: int = 5,
    genotype: str = "pc_darts",
) -> EvalNetwork:
    torch.manual_seed(0)
    return EvalNetwork(
        GENOTYPES.get(genotype),
        C=C,
        num_classes=10,
        layers=layers,
        auxiliary=auxiliary,
        spec=BinarySpec(method, activations),
    )


def _trained_like(net: EvalNetwork) -> EvalNetwork:
    """Give BN real running statistics and PCNN a non-trivial projection, as training would."""
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, 16, 16))
        for m in net.modules():
            if hasattr(m, "projection"):
                m.projection.uniform_(-1.5, 1.5)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("method", METHODS)
def test_report_follows_the_documented_rule(method: str) -> None:
    net = _net(method)
    r = size_report(net)
    assert set(r) == KEYS
    # Independent recount: 1 bit per binary weight, 32 bits for every other inference value.
    binary = [
        m
        for n, m in net.named_modules()
        if isinstance(m, BinaryConv2d) and m.method.binary and not n.startswith("auxiliary")
    ]
    n_binary = sum(m.weight.numel() for m in binary)
    n_scales = sum(m.weight.shape[0] if method == "xnor_channel" else 1 for m in binary)
    inference = [
        (n, p)
        for n, p in net.named_parameters()
        if not n.startswith("auxiliary") and not n.endswith("projection")
    ]
    n_params = sum(p.numel() for _, p in inference)
    n_stats = sum(
        b.numel()
        for n, b in net.named_buffers()
        if not n.startswith("auxiliary") and n.endswith(("running_mean", "running_var"))
    )
    assert r["binary_params"] == n_binary
    assert r["params"] == n_params == r["binary_params"] + r["fp_params"]
    assert r["scales"] == n_scales and r["bn_stats"] == n_stats
    unfolded = math.ceil(n_binary / 8) + 4 * (n_params - n_binary + n_scales + n_stats)
    assert r["packed_bytes_unfolded"] == unfolded
    assert r["fp32_bytes_unfolded"] == 4 * (n_params + n_stats)
    # Folded (v2): per BN channel 2 values instead of 4; a binary conv before a BN keeps no scale of
    # its own; a binary conv without BN keeps its scales; an fp conv before a BN gains a bias.
    bns = [m for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d) and not n.startswith("aux")]
    bn_channels = sum(m.num_features for m in bns)
    folded = fold_network(net)
    convs = [m for m in folded.modules() if isinstance(m, FoldedConv2d)]
    kept_scales = sum(m.weight_scale.numel() for m in convs if m.weight_scale is not None)
    fp_conv_biases = sum(m.bias.numel() for m in convs if not m.binary and m.bias is not None)
    n_bn_affine = 2 * bn_channels  # BN weight and bias are fp params in the unfolded count
    n_floats = (n_params - n_binary - n_bn_affine) + 2 * bn_channels + kept_scales
    # an fp conv folded with its BN: the BN's 2 values become the conv's bias (1) and its weight (0)
    n_floats -= sum(m.bias.numel() for m in convs if not m.binary and m.bias is not None)
    assert fp_conv_biases > 0 and r["folded_floats"] == n_floats
    assert r["packed_bytes"] == math.ceil(n_binary / 8) + 4 * n_floats
    assert r["fp32_bytes"] == 4 * (n_binary + n_floats)
    assert r["packed_bytes"] < r["packed_bytes_unfolded"]


def test_fp_has_no_binary_params_and_no_saving() -> None:
    r = size_report(_net("fp"))
    assert r["binary_params"] == 0 and r["scales"] == 0
    assert r["packed_bytes"] == r["fp32_bytes"] and r["compression"] == 1.0


def test_xnor_packs_much_smaller_than_fp32() -> None:
    xnor, fp = size_report(_net("xnor", C=16, layers=8)), size_report(_net("fp", C=16, layers=8))
    assert xnor["params"] == fp["params"]
    assert xnor["binary_params"] > 0.8 * xnor["params"]
    assert xnor["packed_bytes"] < 0.3 * xnor["fp32_bytes"]


def test_auxiliary_head_and_pcnn_projection_are_excluded() -> None:
    assert size_report(_net("xnor", auxiliary=True)) == size_report(_net("xnor", auxiliary=False))
    pcnn, xnor = size_report(_net("pcnn")), size_report(_net("xnor"))
    assert pcnn == xnor  # same weights, one scale per layer; P is not kept at inference
    assert sum(p.numel() for p in _net("pcnn").parameters()) > sum(
        p.numel() for p in _net("xnor").parameters()
    )


def test_per_channel_scales_cost_more_than_per_layer() -> None:
    ch, layer = size_report(_net("xnor_channel")), size_report(_net("xnor"))
    assert ch["scales"] > layer["scales"] and ch["packed_bytes"] > layer["packed_bytes"]


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|: the "relative" of the packed format's 1e-5 promise."""
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("activations", ["real", "binary"])
@pytest.mark.parametrize("method", METHODS)
def test_packed_export_round_trip(method: str, activations: str, tmp_path: Path) -> None:
    net = _trained_like(_net(method, activations, genotype="bnas_xnor"))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref, _ = net(x)
    path = tmp_path / "model.bnas"
    header = export_packed(net, path)
    assert path.read_bytes()[:8] == MAGIC and header["version"] == 2
    loaded = load_packed(path)
    assert not loaded.training and loaded.auxiliary_head is None and is_folded(loaded)
    with torch.no_grad():
        out, aux = loaded(x)
    assert aux is None
    assert _rel_err(out, ref) < 1e-5

    report = size_report(net)
    # The payload is exactly the accounted (folded) packed size; the rest is a small header.
    _, payload = read_packed(path)
    assert len(payload) == report["packed_bytes"] == header["payload_bytes"]
    assert path.stat().st_size - report["packed_bytes"] < 2048
    assert header["binary_params"] == report["binary_params"]
    assert header["genotype_digest"] == GENOTYPES.get("bnas_xnor").digest
    # Folded means no BN statistics in the file: 2 values per BN channel, not 4.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert any(isinstance(m, ChannelAffine) for m in loaded.modules())
    # The loaded network exports to the same payload again.
    export_packed(loaded, tmp_path / "again.bnas")
    assert read_packed(tmp_path / "again.bnas")[1] == payload


@pytest.mark.parametrize("activations", ["real", "binary"])
@pytest.mark.parametrize("method", METHODS)
def test_v1_files_still_load(method: str, activations: str, tmp_path: Path) -> None:
    """A file in the old unfolded layout loads to the exported network's exact eval outputs."""
    net = _trained_like(_net(method, activations, genotype="pc_darts"))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref, _ = net(x)
    path = tmp_path / "v1.bnas"
    header = export_packed(net, path, version=1)
    assert path.read_bytes()[:8] == MAGIC_V1 and header["version"] == 1
    assert header["payload_bytes"] == size_report(net)["packed_bytes_unfolded"]
    loaded = load_packed(path)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], ref)
    assert size_report(loaded) == size_report(net)


def test_v1_headers_without_network_key_load(tmp_path: Path) -> None:
    """v1 files written before the header named the network class still load (as EvalNetwork)."""
    net = _trained_like(_net("xnor", C=4, layers=3))
    path = tmp_path / "old.bnas"
    export_packed(net, path, version=1)
    header, payload = read_packed(path)
    del header["network"]
    head = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(MAGIC_V1 + struct.pack("<I", len(head)) + head + payload)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_packed(path)(x)[0], net(x)[0])


def test_folded_network_cannot_be_written_as_v1_or_accounted(tmp_path: Path) -> None:
    folded = fold_network(_net("xnor", C=4, layers=3))
    with pytest.raises(PackedFormatError, match="folded"):
        export_packed(folded, tmp_path / "x.bnas", version=1)
    with pytest.raises(ValueError, match="unfolded"):
        size_report(folded)
    with pytest.raises(ValueError, match="version"):
        export_packed(_net("xnor", C=4, layers=3), tmp_path / "x.bnas", version=3)


def _with_payload(path: Path, payload: bytes, out: Path) -> Path:
    """A copy of a packed file with another payload (header checksum updated)."""
    header, _ = read_packed(path)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    head = json.dumps(header, sort_keys=True).encode()
    out.write_bytes(path.read_bytes()[:8] + struct.pack("<I", len(head)) + head + payload)
    return out


def test_the_file_holds_bits(tmp_path: Path) -> None:
    """Flipping the first bit of the payload flips the sign of exactly one weight of the loaded net."""
    net = _trained_like(_net("xnor", genotype="darts_v2"))
    path = tmp_path / "m.bnas"
    export_packed(net, path)
    payload = bytearray(read_packed(path)[1])
    payload[0] ^= 0x80  # the first weight of the first binary layer
    loaded = load_packed(_with_payload(path, bytes(payload), tmp_path / "flipped.bnas"))
    first = next(m for m in fold_network(net).modules() if isinstance(m, FoldedConv2d) and m.binary)
    flipped = next(m for m in loaded.modules() if isinstance(m, FoldedConv2d) and m.binary)
    w0, w1 = first.weight, flipped.weight
    assert set(w0.unique().tolist()) == {-1.0, 1.0}
    assert (w0 != w1).nonzero().tolist() == [[0, 0, 0, 0]]
    assert w1.flatten()[0] == -w0.flatten()[0]


def test_damaged_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.bnas"
    export_packed(_net("xnor", C=4, layers=3), path)
    data = path.read_bytes()
    (tmp_path / "trunc.bnas").write_bytes(data[:-10])
    with pytest.raises(PackedFormatError, match="truncated or damaged"):
        load_packed(tmp_path / "trunc.bnas")
    (tmp_path / "other.bnas").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(PackedFormatError, match="not a packed BNAS export"):
        load_packed(tmp_path / "other.bnas")


@pytest.mark.parametrize("version", [1, 2])
def test_loaded_network_runs_on_a_given_device(version: int, tmp_path: Path) -> None:
    """``device`` places every parameter and buffer of the rebuilt network there, in both formats.

    The default (cpu) cannot tell a loader that honours ``device`` from one that ignores it, so the
    check uses torch's ``meta`` device, which every machine has: tensors there have shapes but no data.
    """
    path = tmp_path / "m.bnas"
    export_packed(_trained_like(_net("xnor_channel", C=4, layers=3)), path, version=version)
    x = torch.randn(2, 3, 16, 16)
    on_cpu = load_packed(path)  # the default device
    tensors = [*on_cpu.parameters(), *on_cpu.buffers()]
    assert tensors and {t.device.type for t in tensors} == {"cpu"}
    with torch.no_grad():
        ref = on_cpu(x)[0]
    for device in ("meta", torch.device("meta")):  # a name or a torch.device
        net = load_packed(path, device=device)
        assert not net.training
        tensors = [*net.parameters(), *net.buffers()]
        assert len(tensors) == len([*on_cpu.parameters(), *on_cpu.buffers()])
        assert {t.device.type for t in tensors} == {"meta"}
        with torch.no_grad():
            out = net(x.to("meta"))[0]
        assert out.device.type == "meta" and out.shape == ref.shape == (2, 10)
    if torch.cuda.is_available():  # where there is a GPU: the same outputs there
        with torch.no_grad():
            out = load_packed(path, device="cuda")(x.cuda())[0]
        # (cuDNN may run the convolutions in TF32, about 1e-3 relative: the tolerance allows for it.)
        assert out.device.type == "cuda" and _rel_err(out.cpu(), ref) < 1e-2


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: h["build"].update(C=10**6), r"header build.C = 1000000 is outside \[1, 1024\]"),
        (lambda h: h.update(binary_params=10**12), "do not make its"),
        (lambda h: h.pop("floats"), "header key 'floats' is missing or not of type int"),
        (lambda h: h.update(genotype="x"), "header key 'genotype' is missing or not of type dict"),
        (lambda h: h["build"].update(unknown=1), "the header does not describe a network"),
        (lambda h: h["build"].update(C=512, layers=50), "describes a network of .* but its payload holds"),
    ],
)
def test_a_tampered_header_is_refused_before_anything_is_built(tmp_path: Path, edit, match: str) -> None:
    """A header promising a huge network, counts that do not fit the payload, or missing, mistyped or
    unknown keys: one PackedFormatError naming the file, in well under a second, nothing allocated."""
    path = tmp_path / "m.bnas"
    export_packed(_trained_like(_net("xnor", C=4, layers=3)), path)
    rewrite_packed_header(path, edit)
    with pytest.raises(PackedFormatError, match=match) as e:
        load_packed(path)
    assert str(e.value).startswith(str(path))
