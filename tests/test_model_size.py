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
from bnas.export import MAGIC, PackedFormatError, export_packed, load_packed, read_packed
from bnas.genotype import GENOTYPES
from bnas.model_size import size_report

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
    assert r["packed_bytes"] == math.ceil(n_binary / 8) + 4 * (n_params - n_binary + n_scales + n_stats)
    assert r["fp32_bytes"] == 4 * (n_params + n_stats)


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


@pytest.mark.parametrize("activations", ["real", "binary"])
@pytest.mark.parametrize("method", METHODS)
def test_packed_export_round_trip(method: str, activations: str, tmp_path: Path) -> None:
    net = _trained_like(_net(method, activations, genotype="bnas_xnor"))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref, _ = net(x)
    path = tmp_path / "model.bnas"
    header = export_packed(net, path)
    loaded = load_packed(path)
    assert not loaded.training and loaded.auxiliary_head is None
    with torch.no_grad():
        out, aux = loaded(x)
    assert aux is None
    assert torch.allclose(out, ref, atol=1e-5)

    report = size_report(net)
    # The payload is exactly the accounted packed size; the rest is a small header.
    _, payload = read_packed(path)
    assert len(payload) == report["packed_bytes"] == header["payload_bytes"]
    assert path.stat().st_size - report["packed_bytes"] < 2048
    assert header["binary_params"] == report["binary_params"]
    assert header["genotype_digest"] == GENOTYPES.get("bnas_xnor").digest
    # The loaded network accounts the same and exports to the same payload again.
    assert size_report(loaded) == report
    export_packed(loaded, tmp_path / "again.bnas")
    assert read_packed(tmp_path / "again.bnas")[1] == payload


def _with_payload(path: Path, payload: bytes, out: Path) -> Path:
    """A copy of a packed file with another payload (header checksum updated)."""
    header, _ = read_packed(path)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    head = json.dumps(header, sort_keys=True).encode()
    out.write_bytes(MAGIC + struct.pack("<I", len(head)) + head + payload)
    return out


def test_the_file_holds_bits(tmp_path: Path) -> None:
    """Flipping the first bit of the payload flips the sign of exactly one weight of the loaded net."""
    net = _trained_like(_net("xnor", genotype="darts_v2"))
    path = tmp_path / "m.bnas"
    export_packed(net, path)
    payload = bytearray(read_packed(path)[1])
    payload[0] ^= 0x80  # the first weight of the first binary layer
    loaded = load_packed(_with_payload(path, bytes(payload), tmp_path / "flipped.bnas"))
    first = next(m for m in net.modules() if isinstance(m, BinaryConv2d))
    flipped = next(m for m in loaded.modules() if isinstance(m, BinaryConv2d))
    w0, w1 = first.binarized_weight().detach(), flipped.weight.detach()
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


def test_loaded_network_runs_on_a_given_device(tmp_path: Path) -> None:
    path = tmp_path / "m.bnas"
    export_packed(_net("xnor_channel", C=4, layers=3), path)
    net = load_packed(path, device="cpu")
    assert next(net.parameters()).device.type == "cpu"
