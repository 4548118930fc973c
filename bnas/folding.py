"""The inference form of a trained network: BatchNorm folded, binary weights materialised.

At inference a BatchNorm with running statistics is the per-channel affine map

    BN(y)_c = gamma_c * (y_c - mu_c) / sqrt(var_c + eps) + beta_c = s_c * y_c + t_c,
    s_c = gamma_c / sqrt(var_c + eps),  t_c = beta_c - s_c * mu_c

(Ioffe & Szegedy 2015, eq. in Alg. 2), so 2 values per channel replace BN's 4 (weight, bias,
running_mean, running_var). After a convolution y = conv(x, W) it folds into the convolution:

* binary conv followed by BN, W_hat = a_g * sign(W) with a_g the binarization scale of scale group g
  (one per layer for ``xnor``/``pcnn``, one per output channel for ``xnor_channel``)::

      s_c * conv(x, a_g(c) * B) + t_c = (s_c * a_g(c)) * conv(x, B) + t_c,   B = sign bits in {-1, +1}

  so the layer keeps its bits B and one output scale ``s_c * a_g(c)`` and one bias ``t_c`` per output
  channel (``absorb_binary_scale=True``, the packed format v2); or, for runtimes that want the weight
  values (ONNX), its weight W_hat = +-a and the BN's ``s_c`` and ``t_c`` (``absorb_binary_scale=False``);
* full-precision conv: W'_c = s_c * W_c and bias t_c (+ s_c * b_c if it had a bias).

A BN that does not directly follow a conv in an ``nn.Sequential`` (after a pooling, after the
concatenation of a factorized reduce) becomes a :class:`ChannelAffine` (s, t). A binary conv without a
following BN keeps its bits and its binarization scales (1 or C_out values) as a :class:`FoldedConv2d`
that computes with W_hat = a_g * B itself, the trained network's numbers: in w1a1 its output feeds
the next conv's sign, and a sum of +-a terms that is exactly 0 (even count at a padded border) must not
become +-1e-8 by another rounding order.

The rewrite is generic over module types (``nn.Conv2d``/``BinaryConv2d`` followed by ``BatchNorm2d`` in
a Sequential; any other BN), so it applies to every network built from :mod:`bnas.operations`. The
folded parameters are computed in float64 and stored in float32. Binary activations (w1a1) are kept:
a folded binary conv still applies sign (0 -> +1) to its input.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bnas.binarization import BinaryConv2d, sign_pm1


class FoldedConv2d(nn.Module):
    """conv(sign?(x), W) * scale + bias, W = weight_scale * weight (binary) or weight (full precision).

    ``binary``: ``weight`` holds the sign bits B in {-1, +1} (size accounting and the packed format store
    them as bits) and ``weight_scale`` the binarization scales a_g (1 or C_out values) when they were
    not absorbed into ``scale`` (None then). ``scale`` has 1 or C_out entries (or is None); ``bias``
    C_out (or None). All are buffers: the folded network is for inference, not training.

    W = a_g * B is rebuilt in the forward pass rather than stored: it is exactly the trained W_hat
    (a product with +-1), so the convolution runs on the same numbers as the trained network, and an
    exporter constant-folds it into one initializer holding the +-a values.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        stride: tuple[int, int] | int,
        padding: tuple[int, int] | int | str,
        dilation: tuple[int, int] | int,
        groups: int,
        binary: bool,
        sign_input: bool,
        scale: torch.Tensor | None,
        bias: torch.Tensor | None,
        weight_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.binary, self.sign_input = binary, sign_input
        self.register_buffer("weight", weight.detach().float().clone())
        ws = None if weight_scale is None else weight_scale.detach().float().clone()
        self.register_buffer("weight_scale", ws)
        self.register_buffer("scale", None if scale is None else scale.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sign_input:
            # sign(0) = +1 as in training (bnas.binarization.sign_pm1); plain ops, so it exports.
            x = sign_pm1(x)
        w = self.weight
        if self.weight_scale is not None:
            shape = (1,) * w.dim() if self.weight_scale.numel() == 1 else (-1,) + (1,) * (w.dim() - 1)
            w = self.weight_scale.view(shape) * w
        y = F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)
        if self.scale is not None:
            y = y * self.scale.view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        w = tuple(self.weight.shape)
        return f"weight={w}, stride={self.stride}, binary={self.binary}, sign_input={self.sign_input}"


class ChannelAffine(nn.Module):
    """y = x * scale_c + bias_c: a BatchNorm2d in eval mode as 2 values per channel."""

    def __init__(self, scale: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) in float64 with BN(y) = s * y + t in eval mode (module docstring)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm2d without running statistics cannot be folded")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - s * mean


def binary_bits_and_scales(conv: BinaryConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(B in {-1, +1} as float, scales a_g with 1 or C_out entries) with W_hat = a_g * B exactly.

    Raises ValueError when W_hat does not take exactly two values +-a per scale group.
    """
    with torch.no_grad():
        w_hat = conv.binarized_weight().detach().float()
    groups = conv.method.scale_groups(conv)
    if groups == 1:
        scales = w_hat.abs().amax().view(1)
        shape = (1,) * w_hat.dim()
    elif groups == w_hat.shape[0]:
        scales = w_hat.abs().flatten(1).amax(dim=1)
        shape = (-1,) + (1,) * (w_hat.dim() - 1)
    else:
        raise ValueError(f"{groups} scale groups is neither per layer nor per output channel")
    signs = torch.where(w_hat >= 0, 1.0, -1.0)
    if not torch.equal(scales.view(shape) * signs, w_hat):
        raise ValueError(
            f"the {conv.method.name} weight does not take exactly two values (+-s) per scale group"
        )
    return signs, scales


def _conv_kwargs(conv: nn.Conv2d) -> dict:
    return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)


def _is_binary(conv: nn.Module) -> bool:
    return isinstance(conv, BinaryConv2d) and conv.method.binary


def fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, absorb_binary_scale: bool = True) -> FoldedConv2d:
    """The :class:`FoldedConv2d` computing ``bn(conv(x))`` (or ``conv(x)``) in eval mode."""
    sign_input = bool(getattr(conv, "binary_input", False))
    s, t = bn_affine(bn) if bn is not None else (None, None)
    conv_bias = conv.bias.detach().double() if conv.bias is not None else None
    if _is_binary(conv):
        signs, a = binary_bits_and_scales(conv)
        if conv_bias is not None:  # BN(conv(x) + b) = s * conv(x) + (s * b + t)
            t = conv_bias if s is None else s * conv_bias + t
        if absorb_binary_scale and s is not None:
            scale, weight_scale = a.double() * s, None
        else:
            # Without a BN after it the conv keeps W_hat = a * B as it is: its output may feed a sign
            # (w1a1), where sums that are exactly 0 in the trained network must stay exactly 0.
            scale, weight_scale = s, a
        return FoldedConv2d(
            signs,
            **_conv_kwargs(conv),
            binary=True,
            sign_input=sign_input,
            scale=scale,
            bias=t,
            weight_scale=weight_scale,
        )
    w = (conv.binarized_weight() if isinstance(conv, BinaryConv2d) else conv.weight).detach().double()
    bias = conv_bias
    if s is not None:
        w = w * s.view(-1, *([1] * (w.dim() - 1)))
        bias = t + (s * conv_bias if conv_bias is not None else 0)
    return FoldedConv2d(w, **_conv_kwargs(conv), binary=False, sign_input=sign_input, scale=None, bias=bias)


def _fold_in_place(module: nn.Module, absorb_binary_scale: bool) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Sequential):
            items = list(child)
            i = 0
            while i < len(items):
                m = items[i]
                nxt = items[i + 1] if i + 1 < len(items) else None
                if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
                    child[i] = fold_conv(m, nxt, absorb_binary_scale)
                    child[i + 1] = nn.Identity()
                    i += 2
                    continue
                i += 1
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, ChannelAffine(*(v for v in bn_affine(child))))
        elif isinstance(child, BinaryConv2d):
            setattr(module, name, fold_conv(child, None, absorb_binary_scale))
        else:
            _fold_in_place(child, absorb_binary_scale)


def fold_network(model: nn.Module, absorb_binary_scale: bool = True) -> nn.Module:
    """A folded copy of ``model`` for inference (eval mode; ``model`` is not modified).

    Training-only parts are dropped: an ``auxiliary_head`` attribute is set to None. The eps of the
    first BatchNorm is kept as ``bn_eps`` (a build argument of the network, see
    :func:`bnas.export.build_args`). A network that is already folded comes back unchanged (a copy).
    """
    # Transient autograd state of the last training pass (PCNN's loss terms) is not copied: non-leaf
    # tensors refuse deepcopy, and inference does not need them.
    memo: dict[int, object] = {}
    for m in model.modules():
        for attr in ("_proj_terms", "_batched_weight"):
            held = m.__dict__.get(attr)
            if held is not None:
                memo[id(held)] = None
    folded = copy.deepcopy(model, memo).eval()
    bns = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    if bns:
        # The folded network has no BN left; its eps is a build argument of the network all the same.
        folded.bn_eps = bns[0].eps
    if getattr(folded, "auxiliary_head", None) is not None:
        folded.auxiliary_head = None
    with torch.no_grad():
        _fold_in_place(folded, absorb_binary_scale)
    return folded.eval()


def is_folded(model: nn.Module) -> bool:
    """True when ``model`` has no BatchNorm2d and no BinaryConv2d left (as :func:`fold_network` leaves it)."""
    return not any(isinstance(m, nn.BatchNorm2d | BinaryConv2d) for m in model.modules())
