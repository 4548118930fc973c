"""The candidate operations of the DARTS search space, with binarization placed as in BNAS.

Registry ``OPS``: name -> factory ``(C, stride, affine, spec) -> nn.Module`` (one signature for all).
Placement of binarization (method.md section 3, read in the released BNAS code [C]):

====================================  ==============  ================================================
component                              precision       layer order
====================================  ==============  ================================================
cell pre-processing 1x1                binary weights  ReLU -> bin conv 1x1 -> BN          (ReLUConvBN)
pre-processing after a reduction       full precision  ReLU -> two 1x1 s2 convs (offset) -> cat -> BN
``dil_conv_k``                         binary weights  ReLU -> bin dw kxk (dil 2) -> bin 1x1 -> BN
``sep_conv_k``                         binary weights  the dil_conv block with dilation 1, twice
``skip_connect`` (stride 2)            binary weights  ReLU -> two bin 1x1 s2 convs -> cat -> BN
pools                                  none            pool -> BN (avg pool excludes padding)
====================================  ==============  ================================================

In ``w1a1`` mode the ReLU in front of a binary convolution is dropped: the convolution binarizes its
input with sign (a ReLU first would make every activation +1) [D].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bnas.binarization import BinaryConv2d, BinarySpec
from bnas.registry import Registry

OpFactory = Callable[[int, int, bool, BinarySpec], nn.Module]
OPS: Registry[OpFactory] = Registry("operation")


def _pre_act(spec: BinarySpec | None) -> nn.Module:
    """ReLU before a convolution, or nothing when the convolution binarizes its input."""
    if spec is not None and spec.binary_activations and spec.method != "fp":
        return nn.Identity()
    return nn.ReLU(inplace=False)


class ReLUConvBN(nn.Module):
    """ReLU -> (binary) conv -> BN: the cells' 1x1 pre-processing."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
        spec: BinarySpec | None = None,
    ) -> None:
        super().__init__()
        spec = spec or BinarySpec()
        self.op = nn.Sequential(
            _pre_act(spec),
            BinaryConv2d(C_in, C_out, kernel_size, stride, padding, spec=spec),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> binary depthwise kxk (dilated) -> binary pointwise 1x1 -> BN."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
        spec: BinarySpec | None = None,
    ) -> None:
        super().__init__()
        spec = spec or BinarySpec()
        self.op = nn.Sequential(
            _pre_act(spec),
            BinaryConv2d(C_in, C_in, kernel_size, stride, padding, dilation, groups=C_in, spec=spec),
            BinaryConv2d(C_in, C_out, 1, spec=spec),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two DilConv blocks with dilation 1; only the first one strides (DARTS)."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
        spec: BinarySpec | None = None,
    ) -> None:
        super().__init__()
        self.op = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine, spec),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine, spec),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two 1x1 stride-2 convs on inputs offset by one.

    Full precision when ``spec`` is None (the cell pre-processing after a reduction cell), binary
    otherwise (``skip_connect`` with stride 2).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True, spec: BinarySpec | None = None) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = _pre_act(spec) if spec is not None else nn.ReLU(inplace=False)
        if spec is None:
            self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
            self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        else:
            self.conv_1 = BinaryConv2d(C_in, C_out // 2, 1, stride=2, spec=spec)
            self.conv_2 = BinaryConv2d(C_in, C_out // 2, 1, stride=2, spec=spec)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # Odd sizes: the offset branch sees one row/column fewer; pad it back so the halves align.
        y = x[:, :, 1:, 1:]
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            y = nn.functional.pad(y, (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(y)], dim=1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, H, W): view channels as (groups, C/groups), transpose, flatten (ShuffleNet)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Zero(nn.Module):
    """The ``none`` operation: zeros with the output shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _pool(kind: str, C: int, stride: int, affine: bool) -> nn.Module:
    if kind == "max":
        pool: nn.Module = nn.MaxPool2d(3, stride=stride, padding=1)
    else:
        pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    return nn.Sequential(pool, nn.BatchNorm2d(C, affine=affine))


OPS.add("none", lambda C, stride, affine, spec: Zero(stride))
OPS.add("max_pool_3x3", lambda C, stride, affine, spec: _pool("max", C, stride, affine))
OPS.add("avg_pool_3x3", lambda C, stride, affine, spec: _pool("avg", C, stride, affine))
OPS.add(
    "skip_connect",
    lambda C, stride, affine, spec: Identity() if stride == 1 else FactorizedReduce(C, C, affine, spec),
)
OPS.add("sep_conv_3x3", lambda C, stride, affine, spec: SepConv(C, C, 3, stride, 1, affine, spec))
OPS.add("sep_conv_5x5", lambda C, stride, affine, spec: SepConv(C, C, 5, stride, 2, affine, spec))
OPS.add("dil_conv_3x3", lambda C, stride, affine, spec: DilConv(C, C, 3, stride, 2, 2, affine, spec))
OPS.add("dil_conv_5x5", lambda C, stride, affine, spec: DilConv(C, C, 5, stride, 4, 2, affine, spec))


def make_op(name: str, C: int, stride: int, affine: bool, spec: BinarySpec) -> nn.Module:
    """Build operation ``name`` for ``C`` channels; unknown names raise with the valid list."""
    return OPS.get(name)(C, stride, affine, spec)


def imagenet_stems(C: int, in_channels: int = 3) -> tuple[nn.Sequential, nn.Sequential]:
    """DARTS / PC-DARTS ImageNet stems [C], full precision, shared by the evaluation and search networks.

    ``stem0`` = conv 3x3 s2 to C/2, BN, ReLU, conv 3x3 s2 to C, BN; ``stem1`` = ReLU, conv 3x3 s2 to C,
    BN: three stride-2 convs in all (224 -> 112 -> 56 (stem0) -> 28 px (stem1)). stem0's output is also
    the first cell's s0, so stem1's ReLU must not work in place.
    """
    if C % 2:
        raise ValueError(f"the ImageNet stem halves C first: C must be even, got {C}")
    stem0 = nn.Sequential(
        nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C),
    )
    stem1 = nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C),
    )
    return stem0, stem1
