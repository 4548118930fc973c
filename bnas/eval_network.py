"""The evaluation network built from a genotype (DARTS-style CIFAR network, binarized per BNAS).

Layout (DARTS ``NetworkCIFAR`` [C]): full-precision 3x3 stem -> ``layers`` cells (reduction cells at
1/3 and 2/3 of the depth double the channels) -> global average pooling -> full-precision linear
classifier; an auxiliary head (full precision) after the second reduction cell during training.
Binarization sits inside the cells as in :mod:`bnas.operations`.
"""

from __future__ import annotations

import torch
from torch import nn

from bnas.binarization import BinarySpec
from bnas.genotype import Genotype
from bnas.operations import FactorizedReduce, Identity, ReLUConvBN, make_op


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability p and rescale by 1/(1-p) (DARTS/NASNet)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x.div(keep) * mask


class EvalCell(nn.Module):
    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, spec: BinarySpec) -> None:
        super().__init__()
        self.reduction = reduction
        # After a reduction cell the older input is halved with a full-precision factorized reduce [C].
        self.preprocess0: nn.Module = (
            FactorizedReduce(C_prev_prev, C, affine=True, spec=None) if reduction_prev
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=True, spec=spec)
        )
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=True, spec=spec)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.steps = len(edges) // 2
        self.multiplier = len(self.concat)
        self.ops = nn.ModuleList()
        self.indices = []
        for op_name, index in edges:
            stride = 2 if reduction and index < 2 else 1
            self.ops.append(make_op(op_name, C, stride, True, spec))
            self.indices.append(index)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            hs = []
            for j in (2 * i, 2 * i + 1):
                h = self.ops[j](states[self.indices[j]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[j], Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary classifier (full precision) for 8x8 feature maps; adaptive below that.

    DARTS ``AuxiliaryHeadCIFAR`` [C] (also PC-DARTS and the released BNAS code): ReLU -> AvgPool2d(5,
    stride 3, padding 0, count_include_pad=False) (8x8 -> 2x2) -> Conv 1x1 to 128 -> BN -> ReLU ->
    Conv 2x2 to 768 -> BN -> ReLU -> linear classifier. The ReLU comes before the pooling.
    """

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            # Not in place: the head reads the cell output s1, which the network still uses.
            nn.ReLU(inplace=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x)  # ReLU first, as in DARTS
        # DARTS pools 8x8 maps with a 5x5 window at stride 3 to 2x2; smaller CPU-sized inputs pool
        # adaptively to the same 2x2. (The pooling sits outside ``features`` so that the layer
        # indices, and with them the state-dict keys of trained models, stay as they were.)
        if x.shape[-1] >= 5:
            x = nn.functional.avg_pool2d(x, 5, stride=3, padding=0, count_include_pad=False)
        if x.shape[-1] != 2:
            x = nn.functional.adaptive_avg_pool2d(x, 2)
        x = self.features[1:](x)
        return self.classifier(x.flatten(1))


class EvalNetwork(nn.Module):
    """DARTS CIFAR evaluation network for a genotype, binarized by ``spec``.

    ``forward`` returns ``(logits, aux_logits)``; ``aux_logits`` is None unless training with an
    auxiliary head. Set ``drop_path_prob`` before each epoch (the retraining ramps it linearly).
    """

    def __init__(self, genotype: Genotype, C: int = 36, num_classes: int = 10, layers: int = 20,
                 auxiliary: bool = True, spec: BinarySpec | None = None, stem_multiplier: int = 3,
                 in_channels: int = 3, bn_eps: float = 1e-3) -> None:
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (two reduction cells and one normal), got {layers}")
        spec = spec or BinarySpec()
        self.genotype, self.spec, self.layers = genotype, spec, layers
        self.drop_path_prob = 0.0
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        self.aux_index = 2 * layers // 3
        C_aux = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, spec)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_index:
                C_aux = C_prev
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = bn_eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, aux
