"""Counting model size honestly (method.md section 10): parameters and the bytes of a packed export.

What is counted is the **inference network**: the auxiliary head (a training aid) and PCNN's projection
matrices (only W_hat = a * sign(P o W) is kept at inference) are left out.

Every tensor the inference network needs falls in exactly one class:

=================  ==========================================================  ==================
class               which tensors                                               bits per value
=================  ==========================================================  ==================
binary weight       ``weight`` of a :class:`BinaryConv2d` whose method binarizes  1 (its sign)
                    (``method.binary``; the ``fp`` control has none)
binarization scale  one per scale group of each binary weight: per layer for      32
                    ``xnor`` and ``pcnn`` (a), per output channel for
                    ``xnor_channel``
fp parameter        every other parameter: stem conv, full-precision factorized    32
                    reduce, BN weight and bias, classifier, convs of ``fp``
BN statistics       BN ``running_mean`` and ``running_var`` (``num_batches_tracked``  32
                    is a training counter, not needed)
=================  ==========================================================  ==================

``params = binary_params + fp_params`` counts parameters (not scales or BN statistics, which are
not trained by gradient).

Two accountings of the bytes:

* **folded** (the default keys, packed format v2): every BatchNorm becomes a per-channel scale and
  bias, folded into the preceding conv (:mod:`bnas.folding`): a binary conv followed by BN keeps its
  sign bits and one output scale s_c * a_g(c) and one bias per output channel; a binary conv without
  BN keeps its bits and binarization scales; a full-precision conv followed by BN keeps s_c * W and a
  bias; any other BN keeps 2 values per channel. ``packed_bytes = ceil(binary_params / 8) + 4 *
  folded_floats`` is exactly the payload of :func:`bnas.export.export_packed`;
  ``fp32_bytes = 4 * (binary_params + folded_floats)`` is the same folded network in float32, so
  ``compression = fp32_bytes / packed_bytes`` measures binarization alone (1.0 for ``fp``).
* **unfolded** (``*_unfolded`` keys, packed format v1): BN stored as weight, bias, running mean and
  variance (4 values per channel), the binarization scales apart. ``packed_bytes_unfolded =
  ceil(binary_params / 8) + 4 * (scales + fp_params + bn_stats)``, ``fp32_bytes_unfolded = 4 *
  (params + bn_stats)`` (the trained network's float32 state as training keeps it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bnas.binarization import BinaryConv2d
from bnas.folding import FoldedConv2d, fold_network, is_folded

#: Sub-modules that only exist for training and are not part of the inference network.
TRAINING_ONLY_MODULES = ("auxiliary_head",)
#: Parameters that only exist for training (PCNN's projection P).
TRAINING_ONLY_PARAMS = ("projection",)
#: Buffers that are not needed at inference.
TRAINING_ONLY_BUFFERS = ("num_batches_tracked",)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the inference network: its state-dict name, class and (for binary) its conv."""

    name: str
    kind: str  # "binary", "fp" (a parameter) or "bn_stat" (a buffer); folded networks: "binary", "float"
    tensor: torch.Tensor
    conv: BinaryConv2d | None = None


def _is_training_only(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in TRAINING_ONLY_MODULES or parts[-1] in TRAINING_ONLY_PARAMS + TRAINING_ONLY_BUFFERS


def inference_tensors(model: nn.Module) -> list[TensorEntry]:
    """The tensors the inference network needs, in ``state_dict`` order, each with its class."""
    binary = {
        f"{name}.weight": m
        for name, m in model.named_modules()
        if isinstance(m, BinaryConv2d) and m.method.binary
    }
    param_names = {name for name, _ in model.named_parameters()}
    out = []
    for name, t in model.state_dict().items():
        if _is_training_only(name):
            continue
        if name in binary:
            out.append(TensorEntry(name, "binary", t, binary[name]))
        elif name in param_names:
            out.append(TensorEntry(name, "fp", t))
        else:
            out.append(TensorEntry(name, "bn_stat", t))
    return out


def folded_tensors(folded: nn.Module) -> list[TensorEntry]:
    """The tensors of a folded network (:func:`bnas.folding.fold_network`) in ``state_dict`` order:
    ``binary`` (a binary :class:`~bnas.folding.FoldedConv2d`'s sign weight, stored as bits) or
    ``float`` (everything else, stored as float32)."""
    binary = {
        f"{name}.weight" for name, m in folded.named_modules() if isinstance(m, FoldedConv2d) and m.binary
    }
    return [
        TensorEntry(name, "binary" if name in binary else "float", t)
        for name, t in folded.state_dict().items()
        if not _is_training_only(name)
    ]


def folded_counts(folded: nn.Module) -> tuple[int, int]:
    """(binary values, float values) of a folded network."""
    n_bits = n_floats = 0
    for e in folded_tensors(folded):
        if e.kind == "binary":
            n_bits += e.tensor.numel()
        else:
            n_floats += e.tensor.numel()
    return n_bits, n_floats


def size_report(model: nn.Module) -> dict[str, int | float]:
    """Parameter counts and packed vs float32 bytes of the inference network (rules: module docstring).

    Returns ``params``, ``binary_params``, ``fp_params``, ``scales``, ``bn_stats``, ``folded_floats``,
    ``packed_bytes``, ``fp32_bytes`` and ``compression`` (``fp32_bytes / packed_bytes``), folded
    (format v2); and ``packed_bytes_unfolded``, ``fp32_bytes_unfolded``, ``compression_unfolded``
    (format v1). ``model`` is the trained (unfolded) network; it is not modified.
    """
    if is_folded(model):
        raise ValueError("size_report needs the unfolded network (this one has no BatchNorm2d left)")
    binary_params = fp_params = scales = bn_stats = 0
    for e in inference_tensors(model):
        if e.kind == "binary":
            binary_params += e.tensor.numel()
            scales += e.conv.method.scale_groups(e.conv)
        elif e.kind == "fp":
            fp_params += e.tensor.numel()
        else:
            bn_stats += e.tensor.numel()
    params = binary_params + fp_params
    packed_unfolded = math.ceil(binary_params / 8) + 4 * (scales + fp_params + bn_stats)
    fp32_unfolded = 4 * (params + bn_stats)
    folded_bits, folded_floats = folded_counts(fold_network(model))
    if folded_bits != binary_params:  # folding keeps every binary weight as one bit
        raise AssertionError(f"folding changed the binary weights: {folded_bits} != {binary_params}")
    packed_bytes = math.ceil(binary_params / 8) + 4 * folded_floats
    fp32_bytes = 4 * (binary_params + folded_floats)
    return {
        "params": params,
        "binary_params": binary_params,
        "fp_params": fp_params,
        "scales": scales,
        "bn_stats": bn_stats,
        "folded_floats": folded_floats,
        "packed_bytes": packed_bytes,
        "fp32_bytes": fp32_bytes,
        "compression": round(fp32_bytes / packed_bytes, 3),
        "packed_bytes_unfolded": packed_unfolded,
        "fp32_bytes_unfolded": fp32_unfolded,
        "compression_unfolded": round(fp32_unfolded / packed_unfolded, 3),
    }
