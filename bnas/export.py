"""Packed export of an evaluation network: binary weights really stored as bits.

Format v2 (written; BN folded, :mod:`bnas.folding`), little endian::

    b"BNASPK02"                        8 bytes  magic and format version
    header length H                    4 bytes  uint32
    header                             H bytes  UTF-8 JSON: network class, genotype, build arguments,
                                                binarization spec, counts, layout digest, payload SHA-256
    payload                                     exactly ``size_report(model)["packed_bytes"]`` bytes:
      sign bits                        ceil(B / 8) bytes, every binary weight's sign (1 = +, MSB first),
                                                layer after layer in the folded network's state-dict order
      floats                           4 bytes each, float32: every other tensor of the folded network
                                                in state-dict order: per binary conv followed by BN its
                                                output scale s_c * a_g(c) and bias (2 per channel); per
                                                binary conv without BN its binarization scales; folded
                                                full-precision convs (s_c * W, bias); BNs that follow no
                                                conv as (scale, bias); the classifier

A binary weight is rebuilt as ``2 * bit - 1``; for PCNN the stored bits are sign(P o W), so P itself is
not needed. Loading gives the trained network's eval-mode outputs up to float rounding of the folded
affine maps (relative error ~1e-7; tests check 1e-5).

Format v1 (read only; ``export_packed(..., version=1)`` still writes it): magic ``b"BNASPK01"``, the
same header fields, payload = sign bits, then float32 binarization scales (per layer or per output
channel), then every other inference tensor unfolded (BN weight, bias, running mean and variance).

The tensor order is not written out: :func:`load_packed` rebuilds the network from the genotype and
build arguments (folded for v2) and checks that its layout digest (names, classes and shapes of all
tensors) matches the one in the header.
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
from torch import nn

from bnas.binarization import BinarizationMethod, BinaryConv2d, BinarySpec
from bnas.eval_network import EvalNetwork, EvalNetworkImageNet
from bnas.folding import binary_bits_and_scales, fold_network, is_folded
from bnas.genotype import Genotype
from bnas.model_size import TensorEntry, folded_tensors, inference_tensors
from bnas.runtime import atomic_write_bytes

MAGIC_V1, MAGIC_V2 = b"BNASPK01", b"BNASPK02"
#: The magic of the format written by default (v2).
MAGIC = MAGIC_V2
FORMAT = "bnas-packed"
VERSION = 2
_MAGICS = {1: MAGIC_V1, 2: MAGIC_V2}
#: Network classes a packed file can name, by class name (header key ``network``).
NETWORKS: dict[str, type[nn.Module]] = {
    "EvalNetwork": EvalNetwork,
    "EvalNetworkImageNet": EvalNetworkImageNet,
}


class PackedFormatError(ValueError):
    """The file is not a packed BNAS export, or it is damaged or does not match this code's layout."""


def build_args(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments of ``model`` (auxiliary head excluded): its own ``build_args()`` when
    the class has one, else those of the CIFAR :class:`EvalNetwork` read from its modules."""
    own = getattr(model, "build_args", None)
    if callable(own):
        return dict(own())
    stem_conv = model.stem[0]
    # Cell 0 is a normal cell (reductions sit at layers // 3 >= 1): its 1x1 pre-processing (ReLU, conv,
    # BN; the conv also in a folded network) outputs C.
    C = model.cells[0].preprocess1.op[1].out_channels
    # A folded network has no BN left; fold_network keeps the eps its BNs had (bn_eps).
    stem_bn = model.stem[1]
    eps = stem_bn.eps if isinstance(stem_bn, nn.BatchNorm2d) else model.bn_eps
    return {
        "C": C,
        "num_classes": model.classifier.out_features,
        "layers": model.layers,
        "stem_multiplier": stem_conv.out_channels // C,
        "in_channels": stem_conv.in_channels,
        "bn_eps": eps,
    }


def _layout_digest(entries: list[TensorEntry]) -> str:
    blob = json.dumps([[e.name, e.kind, list(e.tensor.shape)] for e in entries]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _bits_and_scales(conv: BinaryConv2d, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign bits, scales) of a binary conv's inference weight W_hat, checked to rebuild it exactly."""
    try:
        signs, scales = binary_bits_and_scales(conv)
    except ValueError as e:
        raise PackedFormatError(f"{name}: {e}") from None
    return (signs > 0).flatten(), scales


def _write(version: int, header: dict[str, Any], payload: bytes, path: str | Path) -> dict[str, Any]:
    header = {**header, "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}
    head = json.dumps(header, sort_keys=True).encode()
    atomic_write_bytes(_MAGICS[version] + struct.pack("<I", len(head)) + head + payload, path)
    return header


def _common_header(model: nn.Module, version: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": version,
        "network": type(model).__name__,
        "genotype": model.genotype.to_dict(),
        "genotype_digest": model.genotype.digest,
        "build": build_args(model),
        "spec": dataclasses.asdict(model.spec),
    }


def export_packed(model: nn.Module, path: str | Path, version: int = VERSION) -> dict[str, Any]:
    """Write ``model``'s inference network to ``path`` in the packed format; return the header.

    ``version`` 2 (default) folds BN first (:func:`bnas.folding.fold_network`); 1 writes the old
    unfolded layout (kept so that tests can make v1 files; a folded network cannot be written as v1).
    The model is not modified (its current weights and BN statistics are exported as they are).
    """
    if version not in _MAGICS:
        raise ValueError(f"packed format version {version!r}: this code writes versions {sorted(_MAGICS)}")
    if version == 1:
        return _export_v1(model, path)
    folded = fold_network(model)
    entries = folded_tensors(folded)
    bits, floats = [], []
    for e in entries:
        if e.kind == "binary":
            t = e.tensor.detach().float().cpu()
            if not bool(((t == 1) | (t == -1)).all()):
                raise PackedFormatError(f"{e.name}: a folded binary weight must hold only +-1")
            bits.append((t > 0).flatten())
        else:
            floats.append(e.tensor.detach().float().cpu().flatten())
    all_bits = torch.cat(bits).numpy() if bits else np.zeros(0, dtype=bool)
    all_floats = torch.cat(floats).numpy() if floats else np.zeros(0, dtype=np.float32)
    payload = np.packbits(all_bits).tobytes() + all_floats.astype("<f4").tobytes()
    header = {
        **_common_header(model, 2),
        "layout_digest": _layout_digest(entries),
        "binary_params": int(all_bits.size),
        "floats": int(all_floats.size),
    }
    return _write(2, header, payload, path)


def _export_v1(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Format v1: sign bits, binarization scales, then every other inference tensor unfolded."""
    if is_folded(model):
        raise PackedFormatError("a folded network has no BN statistics left to write as format v1")
    entries = inference_tensors(model)
    bits, scales, fp = [], [], []
    for e in entries:
        if e.kind == "binary":
            b, sc = _bits_and_scales(e.conv, e.name)
            bits.append(b)
            scales.append(sc)
        else:
            fp.append(e.tensor.detach().float().cpu().flatten())
    all_bits = torch.cat(bits).numpy() if bits else np.zeros(0, dtype=bool)
    n_scales = sum(sc.numel() for sc in scales)
    floats = torch.cat(scales + fp).numpy() if scales or fp else np.zeros(0, dtype=np.float32)
    payload = np.packbits(all_bits).tobytes() + floats.astype("<f4").tobytes()
    header = {
        **_common_header(model, 1),
        "layout_digest": _layout_digest(entries),
        "binary_params": int(all_bits.size),
        "scales": n_scales,
        "floats": int(floats.size),
    }
    return _write(1, header, payload, path)


def read_packed(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """(header, payload) of a packed file (v1 or v2), with the magic, length and checksum verified."""
    path = Path(path)
    data = path.read_bytes()
    magic = data[:8]
    version = next((v for v, m in _MAGICS.items() if m == magic), None)
    if len(data) < 12 or version is None:
        raise PackedFormatError(
            f"{path}: not a packed BNAS export (expected magic {MAGIC_V2!r} or {MAGIC_V1!r})"
        )
    (n,) = struct.unpack("<I", data[8:12])
    start = 12
    try:
        header = json.loads(data[start : start + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackedFormatError(f"{path}: damaged header ({e})") from None
    payload = data[start + n :]
    if not isinstance(header, dict):
        raise PackedFormatError(f"{path}: damaged header (a {type(header).__name__}, not a mapping)")
    if header.get("format") != FORMAT or header.get("version") != version:
        raise PackedFormatError(
            f"{path}: format {header.get('format')!r} version {header.get('version')!r} under the magic "
            f"of version {version}; this code reads {FORMAT!r} versions {sorted(_MAGICS)}"
        )
    if (
        len(payload) != header["payload_bytes"]
        or hashlib.sha256(payload).hexdigest() != header["payload_sha256"]
    ):
        raise PackedFormatError(f"{path}: the payload is truncated or damaged (checksum mismatch)")
    _check_header(header, path)
    return header, payload


#: The header's keys and their types (both versions); a key missing or of another type is refused.
HEADER_KEYS: dict[str, type | tuple[type, ...]] = {
    "payload_bytes": int,
    "payload_sha256": str,
    "binary_params": int,
    "floats": int,
    "layout_digest": str,
    "genotype": dict,
    "spec": dict,
    "build": dict,
}
#: [D] The largest network a header may describe: the settings' own bounds (bnas.sections), so a
#: header cannot make the loader build a network of any size before its payload is checked against it.
BUILD_BOUNDS = {"C": 1024, "layers": 100, "num_classes": 100_000, "in_channels": 64}


#: [D] An unfolded network holds at most about this many values per stored one: BatchNorm's 4 values per
#: channel (weight, bias, running mean and variance) fold into 2, PCNN's projection (one value per binary
#: weight) is not stored (measured: 2.1x for PCNN, C=8, 5 cells). A bomb is orders of magnitude beyond.
PAYLOAD_SLACK = 4


def _check_header(header: dict[str, Any], path: Path) -> None:
    """Refuse a header whose keys are missing or mistyped, whose counts disagree with its payload, or
    that describes a network beyond :data:`BUILD_BOUNDS`: before anything is built from it."""
    for key, kind in HEADER_KEYS.items():
        value = header.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise PackedFormatError(f"{path}: header key {key!r} is missing or not of type {kind.__name__}")
    counts = (header["binary_params"], header["floats"])
    if min(counts) < 0 or math.ceil(counts[0] / 8) + 4 * counts[1] != header["payload_bytes"]:
        raise PackedFormatError(
            f"{path}: the header promises {counts[0]} bits and {counts[1]} float32 values, which do not "
            f"make its {header['payload_bytes']}-byte payload"
        )
    for key, bound in BUILD_BOUNDS.items():
        value = header["build"].get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound
        ):
            raise PackedFormatError(f"{path}: header build.{key} = {value!r} is outside [1, {bound}]")


class PackedBinary(BinarizationMethod):
    """A loaded binary layer (format v1): its ``weight`` already holds W_hat = scale * sign, used as it is.

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


def _build(header: dict[str, Any], path: Path) -> nn.Module:
    """The (untrained) network a header describes, without auxiliary head."""
    name = header.get("network", "EvalNetwork")  # v1 files predate the key: always the CIFAR network
    if name not in NETWORKS:
        raise PackedFormatError(f"{path}: network class {name!r} unknown; known: {sorted(NETWORKS)}")
    try:
        genotype = Genotype.from_dict(header["genotype"])
        spec = BinarySpec(**header["spec"])
        # First on the meta device (shapes only, nothing allocated): a header whose build describes a
        # network far larger than its payload (C and layers within bounds, counts untouched) is refused
        # before its weights would be allocated.
        with torch.device("meta"):
            shapes = NETWORKS[name](genotype, auxiliary=False, spec=spec, **header["build"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a header edited by hand
        raise PackedFormatError(
            f"{path}: the header does not describe a network ({type(e).__name__}: {e})"
        ) from None
    described = sum(t.numel() for t in (*shapes.parameters(), *shapes.buffers()))
    stored = header["binary_params"] + header["floats"]
    if described > PAYLOAD_SLACK * stored + 1024:
        raise PackedFormatError(
            f"{path}: the header's build {header['build']} describes a network of {described} values, "
            f"but its payload holds {stored}"
        )
    return NETWORKS[name](genotype, auxiliary=False, spec=spec, **header["build"])


def _unpack(payload: bytes, n_bits: int, n_floats: int, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    n_bytes = math.ceil(n_bits / 8)
    bits = torch.from_numpy(np.unpackbits(np.frombuffer(payload[:n_bytes], dtype=np.uint8))[:n_bits].copy())
    floats = torch.from_numpy(np.frombuffer(payload[n_bytes:], dtype="<f4").astype(np.float32))
    if floats.numel() != n_floats:
        raise PackedFormatError(f"{path}: expected {n_floats} float32 values, found {floats.numel()}")
    return bits, floats


def load_packed(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the exported network (eval mode, no auxiliary head) with the stored weights, for inference.

    v2: the folded network (:mod:`bnas.folding`: :class:`~bnas.folding.FoldedConv2d` with +-1 weights,
    per-channel scales and biases, no BatchNorm left); its outputs are the exported network's eval-mode
    outputs up to float rounding. v1: the unfolded network; each binary conv's ``weight`` holds the
    stored W_hat = scale * sign and its method becomes :class:`PackedBinary` (PCNN's projection, kept as
    a parameter, is set to 1); it computes exactly what the exported one did in eval mode. Binary
    activations (``w1a1``) still binarize their inputs in both.
    """
    path = Path(path)
    header, payload = read_packed(path)
    model = _build(header, path)
    if header["version"] == 1:
        return _load_v1(model, header, payload, path).eval().to(device)
    folded = fold_network(model)
    entries = folded_tensors(folded)
    _check_layout(entries, header, path)
    bits, floats = _unpack(payload, header["binary_params"], header["floats"], path)
    state = folded.state_dict()
    bit_pos = fp_pos = 0
    for e in entries:
        n = e.tensor.numel()
        if e.kind == "binary":
            state[e.name] = bits[bit_pos : bit_pos + n].view(e.tensor.shape).float() * 2 - 1
            bit_pos += n
        else:
            state[e.name] = floats[fp_pos : fp_pos + n].view(e.tensor.shape).to(e.tensor.dtype)
            fp_pos += n
    folded.load_state_dict(state)
    return folded.eval().to(device)


def _check_layout(entries: list[Any], header: dict[str, Any], path: Path) -> None:
    """The network rebuilt from the header must have the exported tensor layout (v1 and v2 alike)."""
    if _layout_digest(entries) != header["layout_digest"]:
        raise PackedFormatError(
            f"{path}: the network rebuilt from the header has a different tensor layout than the "
            "exported one (written by an incompatible version of bnas?)"
        )


def _load_v1(model: nn.Module, header: dict[str, Any], payload: bytes, path: Path) -> nn.Module:
    entries = inference_tensors(model)
    _check_layout(entries, header, path)
    _, floats = _unpack(payload, header["binary_params"], header["floats"], path)
    bits, _ = _unpack(payload[: math.ceil(header["binary_params"] / 8)], header["binary_params"], 0, path)
    state = model.state_dict()
    bit_pos, scale_pos, fp_pos = 0, 0, header["scales"]
    for e in entries:
        n = e.tensor.numel()
        if e.kind == "binary":
            b = bits[bit_pos : bit_pos + n].view(e.tensor.shape).float() * 2 - 1
            groups = e.conv.method.scale_groups(e.conv)
            sc = floats[scale_pos : scale_pos + groups]
            shape = (1,) * b.dim() if groups == 1 else (-1,) + (1,) * (b.dim() - 1)
            state[e.name] = sc.view(shape) * b
            bit_pos, scale_pos = bit_pos + n, scale_pos + groups
            if hasattr(e.conv, "projection"):
                state[e.name.removesuffix("weight") + "projection"] = torch.ones_like(e.conv.projection)
            e.conv.method = PackedBinary(e.conv.method)
        else:
            state[e.name] = floats[fp_pos : fp_pos + n].view(e.tensor.shape).to(e.tensor.dtype)
            fp_pos += n
    model.load_state_dict(state)
    return model


#: ``python -m bnas export`` formats.
EXPORT_FORMATS = ("onnx", "packed")


#: [D] The largest ONNX input side exported (pixels): the check runs the network once at this size on
#: the CPU, and the paper's networks take 32 (CIFAR) or 224 (ImageNet).
MAX_EXPORT_IMAGE_SIZE = 1024


def _check_image_size(n: int, where: str) -> None:
    from bnas.errors import ConfigError

    if not 1 <= n <= MAX_EXPORT_IMAGE_SIZE:
        raise ConfigError(
            f"image size {n} is outside [1, {MAX_EXPORT_IMAGE_SIZE}] pixels; give --image-size in that range",
            "export",
            where,
        )


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path, image_size: int | None = None
) -> dict[str, Any]:
    """Export the network of a retraining output folder (its ``model.bnas``, v1 or v2) to ``out``.

    ``fmt`` ``onnx``: :func:`bnas.onnx_export.export_onnx` (checked with onnxruntime; the input side
    is ``image_size``, else ``data.image_size`` of the folder's ``config.json``); ``packed``: the packed
    format v2 (an old v1 file comes out folded). Returns what the export reports, with ``source``.
    Raises :class:`~bnas.errors.ConfigError` for a folder that is not a finished retraining or an
    unknown format.
    """
    from bnas.errors import ConfigError

    if str(run_dir).startswith("models:/"):
        # The registry lives in MLflow, which the core does not import: the platform exports it.
        raise ConfigError(
            f"{run_dir} is a registered model: use python -m bnas.platform.models export {run_dir} "
            f"--format {fmt} --out {out}",
            "export",
            "RUN_DIR",
        )
    run_dir = Path(run_dir)
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}", "export", "--format")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give the path of the file to write", "export", "--out")
    if not out.parent.is_dir():
        raise ConfigError(f"the folder {out.parent} does not exist; create it first", "export", "--out")
    if image_size is not None:
        _check_image_size(image_size, "--image-size")
    packed = run_dir / "model.bnas"
    if not packed.is_file():
        raise ConfigError(
            f"{run_dir} holds no model.bnas: give the output folder of a finished retraining "
            "(python -m bnas retrain --out FOLDER)",
            "export",
            "RUN_DIR",
        )
    try:
        model = load_packed(packed)
    except PackedFormatError as e:
        raise ConfigError(str(e), "export", "RUN_DIR") from None
    if fmt == "packed":
        header = export_packed(model, out)
        return {
            "source": str(packed),
            "path": str(out),
            "bytes": Path(out).stat().st_size,
            "payload_bytes": header["payload_bytes"],
            "version": header["version"],
        }
    if image_size is None:
        cfg_path = run_dir / "config.json"
        try:
            image_size = int(json.loads(cfg_path.read_text())["data"]["image_size"])
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
            raise ConfigError(
                f"cannot read data.image_size from {cfg_path}; give --image-size", "export", "--image-size"
            ) from None
        _check_image_size(image_size, f"data.image_size of {cfg_path}")
    from bnas.onnx_export import export_onnx

    return {"source": str(packed), **export_onnx(model, out, image_size)}
