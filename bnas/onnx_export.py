"""ONNX export of a trained (or packed) evaluation network, checked with onnxruntime.

The exported graph is the inference network of :mod:`bnas.folding` with BN folded into the convs and
every binary conv's weight materialised as its +-scale values: a binary conv followed by BN becomes
``Conv(W = s'_c * B, bias = t_c)`` (B in {-1, +1}, s'_c = s_c * a_g(c) the folded per-channel scale),
a binary conv without BN ``Conv(W = a_g * B)`` (the trained W_hat itself). So each binary conv's
initializer holds exactly two values, +-s, per output channel (or per layer) and any ONNX runtime runs
it as an ordinary convolution. Binary activations (w1a1) are ``Where(x >= 0, 1, -1)`` before the conv.

The graph has one input ``images`` (N, C_in, H, W) with a dynamic batch size N and one output
``logits`` (N, classes); the auxiliary head is not part of it. Sources: the ONNX operator set
(opset 17) and torch's TorchScript-based exporter (``dynamo=False``: the dynamo exporter needs
``onnxscript``, which the platform does not pin).

``onnx`` and ``onnxruntime`` are imported inside the functions, so the core imports without them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bnas.folding import FoldedConv2d, fold_network
from bnas.runtime import atomic_write_bytes

OPSET = 17
INPUT, OUTPUT = "images", "logits"


class LogitsOnly(nn.Module):
    """``net(x)[0]`` for networks that return ``(logits, aux)``; ``net(x)`` for the others."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out


def _materialise(folded: nn.Module) -> None:
    """Binary FoldedConv2d: weight <- B * a_g * s'_c (the +-s values), scale and weight_scale cleared."""
    for m in folded.modules():
        if not (isinstance(m, FoldedConv2d) and m.binary):
            continue
        w = m.weight.double()
        view = (-1,) + (1,) * (w.dim() - 1)
        for factor in (m.weight_scale, m.scale):
            if factor is not None:
                w = w * (factor.double().view(view) if factor.numel() > 1 else factor.double())
        m.weight = w.float()
        m.weight_scale = None
        m.scale = None
        m.binary = False  # the weight is +-s now, not +-1: no longer the bits form


def inference_module(model: nn.Module) -> nn.Module:
    """The exported module: ``model`` (trained, or loaded from a packed file, v1 or v2) folded, binary
    weights as +-s values, returning logits only, in eval mode on the CPU. ``model`` is not modified."""
    folded = fold_network(model)  # a folded network (packed v2) comes back as a copy
    _materialise(folded)
    return LogitsOnly(folded).eval().cpu()


def input_shape(model: nn.Module, image_size: int) -> tuple[int, int, int]:
    """(C_in, H, W) of ``model``'s input: C_in from its first convolution."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | FoldedConv2d))
    return (first.in_channels, image_size, image_size)


def export_onnx(
    model: nn.Module, path: str | Path, image_size: int, *, batch: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Write ``model``'s inference network as ONNX to ``path`` and check it with onnxruntime.

    The check runs a fixed random batch (``batch`` images of ``image_size`` px, ``seed``) and a batch of
    a different size (the batch axis is dynamic) through onnxruntime and through the exported PyTorch
    module. Returns ``path``, ``bytes``, ``opset``, ``input_shape`` and ``max_abs_diff`` (max over both
    batches of |onnxruntime - PyTorch|), ``max_abs_logit``; raises ValueError when onnxruntime does not
    reproduce PyTorch within 1e-4 relative.
    """
    import io

    import onnx

    module = inference_module(model)
    shape = input_shape(module, image_size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=gen)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The spatial size is fixed by design (only the batch axis is dynamic), so the shape tests the
        # tracer warns about (FactorizedReduce's odd-size padding) are constants of this graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # dynamo=False is deliberate (module docstring); its deprecation notice is not the user's to act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(module, x, buf)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    atomic_write_bytes(buf.getvalue(), path)
    x2 = torch.randn(batch + 3, *shape, generator=gen)
    diff, top = check_onnx(path, module, [x, x2])
    if diff > 1e-4 * max(top, 1.0):
        raise ValueError(f"{path}: onnxruntime differs from PyTorch by {diff:.3g} (logits up to {top:.3g})")
    return {
        "path": str(path),
        "bytes": Path(path).stat().st_size,
        "opset": OPSET,
        "input_shape": ["batch", *shape],
        "max_abs_diff": diff,
        "max_abs_logit": top,
    }


def _export(module: nn.Module, x: torch.Tensor, buf: Any) -> None:
    torch.onnx.export(
        module,
        (x,),
        buf,
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        do_constant_folding=True,
    )


def check_onnx(path: str | Path, module: nn.Module, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(max |onnxruntime - module| over ``batches``, max |module logit|) for the ONNX file at ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the check is small; do not fight a training run for cores
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    diff = top = 0.0
    for x in batches:
        with torch.no_grad():
            ref = module(x).numpy()
        (out,) = session.run([OUTPUT], {INPUT: x.numpy().astype(np.float32)})
        diff = max(diff, float(np.abs(out - ref).max()))
        top = max(top, float(np.abs(ref).max()))
    return diff, top


def onnx_binary_initializers(path: str | Path) -> list[tuple[str, int, int]]:
    """(name, output channels, distinct |values| at most per channel) of every 4-d Conv initializer.

    For inspection and tests: a binary conv's weight has one magnitude per output channel.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    out = []
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 4:
            per_channel = max(len(np.unique(np.abs(w[c]))) for c in range(w.shape[0]))
            out.append((init.name, w.shape[0], per_channel))
    return out
