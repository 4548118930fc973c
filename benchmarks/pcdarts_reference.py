"""PC-DARTS's search network in plain PyTorch: the speed reference of ``bench_step.py``.

Written here from the PC-DARTS paper's description (Xu et al., ICLR 2020) and the DARTS search space
(Liu et al., ICLR 2019), to time the project's super-network against the design users would otherwise
run: full-precision convolutions, all 8 DARTS operations on every edge (``none`` computed as zeros and
mixed in, as there), pooling followed by a non-affine BN, 1/K of the channels through the mixed
operation and the rest bypassing (max-pooled on stride-2 edges), channel shuffle, and edge
normalization (softmax over the edges entering a node). Not used by the project itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


def _dw_pw(c: int, k: int, stride: int, pad: int, dil: int) -> list[nn.Module]:
    return [
        nn.ReLU(),
        nn.Conv2d(c, c, k, stride, pad, dilation=dil, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=False),
    ]


class _Reduce(nn.Module):
    """Half resolution: two 1x1 stride-2 convs on inputs offset by one pixel, concatenated."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.b = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.bn(torch.cat([self.a(x), self.b(x[:, :, 1:, 1:])], dim=1))


class _Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)


def _op(name: str, c: int, stride: int) -> nn.Module:
    if name == "none":
        return _Zero(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False))
    if name == "avg_pool_3x3":
        return nn.Sequential(
            nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False)
        )
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else _Reduce(c, c)
    k = int(name[-1])
    if name.startswith("sep"):
        return nn.Sequential(*_dw_pw(c, k, stride, k // 2, 1), *_dw_pw(c, k, 1, k // 2, 1))
    return nn.Sequential(*_dw_pw(c, k, stride, k - 1, 2))


class _Mixed(nn.Module):
    def __init__(self, c: int, stride: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.ops = nn.ModuleList(_op(p, c // k, stride) for p in PRIMITIVES)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        part = x.shape[1] // self.k
        a, b = x[:, :part], x[:, part:]
        y = sum(wi * op(a) for wi, op in zip(w, self.ops, strict=True))
        if y.shape[2] != x.shape[2]:
            b = self.pool(b)
        out = torch.cat([y, b], dim=1)
        n, c, h, ww = out.shape
        return out.view(n, self.k, c // self.k, h, ww).transpose(1, 2).contiguous().view(n, c, h, ww)


class _Cell(nn.Module):
    def __init__(self, cpp: int, cp: int, c: int, reduction: bool, reduction_prev: bool, k: int) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0 = (
            _Reduce(cpp, c)
            if reduction_prev
            else nn.Sequential(nn.ReLU(), nn.Conv2d(cpp, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))
        )
        self.pre1 = nn.Sequential(nn.ReLU(), nn.Conv2d(cp, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))
        self.edges = nn.ModuleList(
            _Mixed(c, 2 if reduction and j < 2 else 1, k) for i in range(4) for j in range(2 + i)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        off = 0
        for _ in range(4):
            states.append(sum(w2[off + j] * self.edges[off + j](h, w[off + j]) for j, h in enumerate(states)))
            off += len(states) - 1
        return torch.cat(states[-4:], dim=1)


class PCDartsNetwork(nn.Module):
    """``layers`` cells of C channels (reductions at 1/3 and 2/3), 10 classes, K from ``k``."""

    def __init__(self, C: int, num_classes: int, layers: int, k: int = 4) -> None:
        super().__init__()
        cs = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, cs, 3, padding=1, bias=False), nn.BatchNorm2d(cs))
        cpp, cp, c, red_prev = cs, cs, C, False
        self.cells = nn.ModuleList()
        for i in range(layers):
            red = i in (layers // 3, 2 * layers // 3)
            c = c * 2 if red else c
            self.cells.append(_Cell(cpp, cp, c, red, red_prev, k))
            red_prev, cpp, cp = red, cp, 4 * c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cp, num_classes)
        self.alphas = nn.ParameterList([nn.Parameter(1e-3 * torch.randn(14, 8)) for _ in range(2)])
        self.betas = nn.ParameterList([nn.Parameter(1e-3 * torch.randn(14)) for _ in range(2)])

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.alphas, *self.betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ws, w2s = [], []
        for t in range(2):
            ws.append(F.softmax(self.alphas[t], dim=-1))
            b, parts, off = self.betas[t], [], 0
            for i in range(4):
                parts.append(F.softmax(b[off : off + 2 + i], dim=-1))
                off += 2 + i
            w2s.append(torch.cat(parts))
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            t = 1 if cell.reduction else 0
            s0, s1 = s1, cell(s0, s1, ws[t], w2s[t])
        return self.classifier(self.pool(s1).flatten(1))
