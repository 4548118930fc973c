"""Packed export of an evaluation network: binary weights really stored as bits.

File layout (little endian)::

    b"BNASPK01"                        8 bytes  magic and format version
    header length H                    4 bytes  uint32
    header                             H bytes  UTF-8 JSON: genotype, build arguments, binarization spec,
                                                counts, layout digest, payload SHA-256
    payload                                     exactly ``size_report(model)["packed_bytes"]`` bytes:
      sign bits                        ceil(B / 8) bytes, every binary weight's sign (1 = +, MSB first),
                                                layer after layer in state-dict order
      scales                           4 bytes each, float32: per layer (xnor: mean|W|; pcnn: a) or per
                                                output channel (xnor_channel), same layer order
      everything else                  4 bytes each, float32: full-precision parameters and BN running
                                                statistics, in state-dict order

A binary layer's weight is reconstructed as ``scale * (2 * bit - 1)``; for PCNN the stored bits are
sign(P o W), so P itself is not needed. The tensor order is not written out: :func:`load_packed`
rebuilds the network from the genotype and build arguments and checks that its layout digest (names,
classes and shapes of all tensors) matches the one in the header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnas.binarization import BinarizationMethod, BinaryConv2d, BinarySpec
from bnas.eval_network import EvalNetwork
from bnas.genotype import Genotype
from bnas.model_size import TensorEntry, inference_tensors
from bnas.runtime import atomic_write_bytes

MAGIC = b"BNASPK01"
FORMAT = "bnas-packed"
VERSION = 1


class PackedFormatError(ValueError):
    """The file is not a packed BNAS export, or it is damaged or does not match this code's layout."""


def build_args(model: EvalNetwork) -> dict[str, Any]:
    """The :class:`EvalNetwork` constructor arguments of ``model`` (auxiliary head excluded)."""
    stem_conv, stem_bn = model.stem[0], model.stem[1]
    # Cell 0 is a normal cell (reductions sit at layers // 3 >= 1): its 1x1 pre-processing outputs C.
    C = model.cells[0].preprocess1.op[-1].num_features
    return {
        "C": C,
        "num_classes": model.classifier.out_features,
        "layers": model.layers,
        "stem_multiplier": stem_conv.out_channels // C,
        "in_channels": stem_conv.in_channels,
        "bn_eps": stem_bn.eps,
    }


def _layout_digest(entries: list[TensorEntry]) -> str:
    blob = json.dumps([[e.name, e.kind, list(e.tensor.shape)] for e in entries]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _bits_and_scales(conv: BinaryConv2d, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign bits, scales) of a binary conv's inference weight W_hat, checked to rebuild it exactly."""
    with torch.no_grad():
        w_hat = conv.binarized_weight().detach().float().cpu()
    groups = conv.method.scale_groups(conv)
    if groups == 1:
        scales = w_hat.abs().amax().view(1)
        shape = (1,) * w_hat.dim()
    elif groups == w_hat.shape[0]:
        scales = w_hat.abs().flatten(1).amax(dim=1)
        shape = (-1,) + (1,) * (w_hat.dim() - 1)
    else:
        raise PackedFormatError(f"{name}: {groups} scale groups is neither per layer nor per output channel")
    bits = w_hat >= 0
    rebuilt = scales.view(shape) * (bits.float() * 2 - 1)
    if not torch.equal(rebuilt, w_hat):
        raise PackedFormatError(
            f"{name}: the {conv.method.name} weight does not take exactly two values (+-s) per scale group"
        )
    return bits.flatten(), scales


def export_packed(model: EvalNetwork, path: str | Path) -> dict[str, Any]:
    """Write ``model``'s inference network to ``path`` in the packed format; return the header.

    The model is not modified (its current weights and BN statistics are exported as they are).
    """
    entries = inference_tensors(model)
    bits, scales, fp = [], [], []
    for e in entries:
        if e.kind == "binary":
            b, s = _bits_and_scales(e.conv, e.name)
            bits.append(b)
            scales.append(s)
        else:
            fp.append(e.tensor.detach().float().cpu().flatten())
    all_bits = torch.cat(bits).numpy() if bits else np.zeros(0, dtype=bool)
    n_scales = sum(s.numel() for s in scales)
    floats = torch.cat(scales + fp).numpy() if scales or fp else np.zeros(0, dtype=np.float32)
    payload = np.packbits(all_bits).tobytes() + floats.astype("<f4").tobytes()

    header = {
        "format": FORMAT,
        "version": VERSION,
        "genotype": model.genotype.to_dict(),
        "genotype_digest": model.genotype.digest,
        "build": build_args(model),
        "spec": dataclasses.asdict(model.spec),
        "layout_digest": _layout_digest(entries),
        "binary_params": int(all_bits.size),
        "scales": n_scales,
        "floats": int(floats.size),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(header, sort_keys=True).encode()
    atomic_write_bytes(MAGIC + struct.pack("<I", len(head)) + head + payload, path)
    return header


def read_packed(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """(header, payload) of a packed file, with the magic, length and checksum verified."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < len(MAGIC) + 4 or data[: len(MAGIC)] != MAGIC:
        raise PackedFormatError(f"{path}: not a packed BNAS export (expected magic {MAGIC!r})")
    (n,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start : start + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackedFormatError(f"{path}: damaged header ({e})") from None
    payload = data[start + n :]
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise PackedFormatError(
            f"{path}: format {header.get('format')!r} version {header.get('version')!r}; "
            f"this code reads {FORMAT!r} version {VERSION}"
        )
    if (
        len(payload) != header["payload_bytes"]
        or hashlib.sha256(payload).hexdigest() != header["payload_sha256"]
    ):
        raise PackedFormatError(f"{path}: the payload is truncated or damaged (checksum mismatch)")
    return header, payload


class PackedBinary(BinarizationMethod):
    """A loaded binary layer: its ``weight`` already holds W_hat = scale * sign and is used as it is.

    Keeps the original method's name and scale groups, so :func:`~bnas.model_size.size_report` and a
    second export treat the layer as binary. Re-binarizing instead would recompute mean|W_hat|, which
    float rounding can move by one ulp.
    """

    binary = True

    def __init__(self, original: BinarizationMethod) -> None:
        self.original = original
        self.name = f"{original.name} (packed)"

    def weight(self, conv: BinaryConv2d) -> torch.Tensor:
        return conv.weight

    def scale_groups(self, conv: BinaryConv2d) -> int:
        return self.original.scale_groups(conv)


def load_packed(path: str | Path, device: torch.device | str = "cpu") -> EvalNetwork:
    """Rebuild the exported network (eval mode, no auxiliary head) with the stored weights, for inference.

    Each binary conv's ``weight`` holds the stored W_hat = scale * sign and its method becomes
    :class:`PackedBinary` (W_hat used as it is; PCNN's projection, kept as a parameter, is set to 1).
    Binary activations (``w1a1``) still binarize their inputs. The network computes exactly what the
    exported one did in eval mode.
    """
    header, payload = read_packed(path)
    genotype = Genotype.from_dict(header["genotype"])
    spec = BinarySpec(**header["spec"])
    model = EvalNetwork(genotype, auxiliary=False, spec=spec, **header["build"])
    entries = inference_tensors(model)
    if _layout_digest(entries) != header["layout_digest"]:
        raise PackedFormatError(
            f"{path}: the network rebuilt from the header has a different tensor layout than the "
            "exported one (written by an incompatible version of bnas?)"
        )
    n_bits, n_floats = header["binary_params"], header["floats"]
    n_bytes = math.ceil(n_bits / 8)
    bits = torch.from_numpy(np.unpackbits(np.frombuffer(payload[:n_bytes], dtype=np.uint8))[:n_bits].copy())
    floats = torch.from_numpy(np.frombuffer(payload[n_bytes:], dtype="<f4").astype(np.float32))
    if floats.numel() != n_floats:
        raise PackedFormatError(f"{path}: expected {n_floats} float32 values, found {floats.numel()}")

    state = model.state_dict()
    bit_pos, scale_pos, fp_pos = 0, 0, header["scales"]
    for e in entries:
        n = e.tensor.numel()
        if e.kind == "binary":
            b = bits[bit_pos : bit_pos + n].view(e.tensor.shape).float() * 2 - 1
            groups = e.conv.method.scale_groups(e.conv)
            s = floats[scale_pos : scale_pos + groups]
            shape = (1,) * b.dim() if groups == 1 else (-1,) + (1,) * (b.dim() - 1)
            state[e.name] = s.view(shape) * b
            bit_pos, scale_pos = bit_pos + n, scale_pos + groups
            if hasattr(e.conv, "projection"):
                state[e.name.removesuffix("weight") + "projection"] = torch.ones_like(e.conv.projection)
            e.conv.method = PackedBinary(e.conv.method)
        else:
            state[e.name] = floats[fp_pos : fp_pos + n].view(e.tensor.shape).to(e.tensor.dtype)
            fp_pos += n
    model.load_state_dict(state)
    return model.eval().to(device)
