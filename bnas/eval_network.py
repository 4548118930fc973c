"""The evaluation networks built from a genotype (DARTS-style CIFAR and ImageNet layouts, binarized per BNAS).

CIFAR layout (DARTS ``NetworkCIFAR`` [C]): full-precision 3x3 stem -> ``layers`` cells (reduction cells
at 1/3 and 2/3 of the depth double the channels) -> global average pooling -> full-precision linear
classifier; an auxiliary head (full precision) after the second reduction cell during training.

ImageNet layout (DARTS / PC-DARTS ``NetworkImageNet`` [C], :class:`EvalNetworkImageNet`): two stems
that together stride 8 (224 -> 28 px) -- ``stem0`` = conv 3x3 s2 to C/2, BN, ReLU, conv 3x3 s2 to C, BN;
``stem1`` = ReLU, conv 3x3 s2, BN -- then the cells as above (the first cell sees ``stem0``'s output at
twice the resolution, so it pre-processes it with a factorized reduce), the ImageNet auxiliary head and
the classifier. The published ImageNet models use 14 cells and C = 48.

Binarization sits inside the cells as in :mod:`bnas.operations`; the stems, every factorized reduce that
follows a resolution change, the auxiliary heads and the classifier stay full precision (method.md
section 3), for both layouts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from bnas.binarization import BatchedBinarization, BinarySpec
from bnas.genotype import Genotype
from bnas.operations import FactorizedReduce, Identity, ReLUConvBN, imagenet_stems, make_op


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability p and rescale by 1/(1-p) (DARTS/NASNet)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x.div(keep) * mask


class EvalCell(nn.Module):
    def __init__(
        self,
        genotype: Genotype,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        spec: BinarySpec,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        # After a reduction cell the older input is halved with a full-precision factorized reduce [C].
        self.preprocess0: nn.Module = (
            FactorizedReduce(C_prev_prev, C, affine=True, spec=None)
            if reduction_prev
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


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS ``AuxiliaryHeadImageNet`` [C] (full precision) for the 7x7 maps after the second reduction.

    ReLU -> AvgPool2d(5, stride 2, count_include_pad=False) (7x7 -> 2x2) -> Conv 1x1 to 128 -> BN ->
    ReLU -> Conv 2x2 to 768 -> ReLU -> linear. DARTS omits the BN after the 768-channel conv (a typo
    kept "for consistency with the experiments in the paper"), and so does this head. Maps smaller
    than 7x7 (CPU-sized inputs) pool adaptively to the same 2x2.
    """

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # the network still reads the cell output
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[0](x)
        if x.shape[-1] >= 5:
            x = nn.functional.avg_pool2d(x, 5, stride=2, padding=0, count_include_pad=False)
        if x.shape[-1] != 2:
            x = nn.functional.adaptive_avg_pool2d(x, 2)
        x = self.features[1:](x)
        return self.classifier(x.flatten(1))


def build_cells(
    genotype: Genotype,
    layers: int,
    C_prev_prev: int,
    C_prev: int,
    C_curr: int,
    reduction_prev: bool,
    aux_index: int,
    spec: BinarySpec,
) -> tuple[nn.ModuleList, int, int | None]:
    """The DARTS cell stack [C]: ``layers`` cells, reduction (channels doubled) at 1/3 and 2/3 depth.

    Shared by the CIFAR and ImageNet layouts, which differ only in their stems (and so in the first
    cell's inputs: ``reduction_prev`` is True where s0 has twice s1's resolution). Returns the cells,
    the channels of the last cell's output and those after cell ``aux_index`` (the auxiliary head's).
    """
    cells = nn.ModuleList()
    C_aux = None
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        cell = EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, spec)
        reduction_prev = reduction
        cells.append(cell)
        C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        if i == aux_index:
            C_aux = C_prev
    return cells, C_prev, C_aux


@contextlib.contextmanager
def batched_binarization(net: nn.Module) -> Iterator[None]:
    """While training, every binary conv of ``net`` gets its weight binarized in a few batched ops per
    forward pass (:class:`~bnas.binarization.BatchedBinarization`: bit for bit the per-conv values on the
    CPU); in evaluation (and export) the per-conv path runs, as before. The groups are collected on the
    first training pass."""
    if not net.training:
        yield
        return
    batched = net.__dict__.get("_batched")
    if batched is None:
        batched = BatchedBinarization(net)
        object.__setattr__(net, "_batched", batched)
    with batched.bound(every_conv_runs=True):  # every op of a derived cell runs
        yield


def cells_forward(
    net: nn.Module, s0: torch.Tensor, s1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The cell stack and heads of both layouts after their stems: (logits, auxiliary logits while
    training, else None). ``net`` has ``cells``, ``aux_index``, ``auxiliary_head``, ``global_pooling``,
    ``classifier`` and ``drop_path_prob`` (:class:`EvalNetwork`, :class:`EvalNetworkImageNet`)."""
    aux = None
    for i, cell in enumerate(net.cells):
        s0, s1 = s1, cell(s0, s1, net.drop_path_prob)
        if i == net.aux_index and net.auxiliary_head is not None and net.training:
            aux = net.auxiliary_head(s1)
    logits = net.classifier(net.global_pooling(s1).flatten(1))
    return logits, aux


class EvalNetwork(nn.Module):
    """DARTS CIFAR evaluation network for a genotype, binarized by ``spec``.

    ``forward`` returns ``(logits, aux_logits)``; ``aux_logits`` is None unless training with an
    auxiliary head. Set ``drop_path_prob`` before each epoch (the retraining ramps it linearly).
    """

    def __init__(
        self,
        genotype: Genotype,
        C: int = 36,
        num_classes: int = 10,
        layers: int = 20,
        auxiliary: bool = True,
        spec: BinarySpec | None = None,
        stem_multiplier: int = 3,
        in_channels: int = 3,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (two reduction cells and one normal), got {layers}")
        spec = spec or BinarySpec()
        self.genotype, self.spec, self.layers = genotype, spec, layers
        self.network = "cifar"
        self.drop_path_prob = 0.0
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.aux_index = 2 * layers // 3
        self.cells, C_prev, C_aux = build_cells(
            genotype, layers, C_prev_prev, C_prev, C_curr, False, self.aux_index, spec
        )
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = bn_eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with batched_binarization(self):
            s0 = s1 = self.stem(x)
            return cells_forward(self, s0, s1)


class EvalNetworkImageNet(nn.Module):
    """DARTS / PC-DARTS ImageNet evaluation network for a genotype, binarized by ``spec`` (module doc).

    Same interface as :class:`EvalNetwork`: ``forward`` returns ``(logits, aux_logits)``, the cells are
    ``cells``, the heads ``auxiliary_head`` and ``classifier`` (so size accounting and the packed export
    treat both layouts alike); :meth:`build_args` gives the constructor arguments of the export header.
    """

    def __init__(
        self,
        genotype: Genotype,
        C: int = 48,
        num_classes: int = 1000,
        layers: int = 14,
        auxiliary: bool = True,
        spec: BinarySpec | None = None,
        in_channels: int = 3,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (two reduction cells and one normal), got {layers}")
        spec = spec or BinarySpec()
        self.genotype, self.spec, self.layers = genotype, spec, layers
        self.network = "imagenet"
        self.drop_path_prob = 0.0
        self.bn_eps = bn_eps  # a build argument; also what bnas.folding keeps once the BNs are folded
        self.stem0, self.stem1 = imagenet_stems(C, in_channels)  # full precision [C]
        C_prev_prev, C_prev, C_curr = C, C, C
        # s0 (stem0, 56 px) has twice the resolution of s1 (stem1, 28 px): the first cell reduces it
        # like the cell after a reduction does, with a full-precision factorized reduce [C].
        reduction_prev = True
        self.aux_index = 2 * layers // 3
        self.cells, C_prev, C_aux = build_cells(
            genotype, layers, C_prev_prev, C_prev, C_curr, reduction_prev, self.aux_index, spec
        )
        self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes) if auxiliary else None
        # DARTS pools the 7x7 maps with AvgPool2d(7); adaptive pooling is the same there and works at
        # any input size.
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = bn_eps

    def build_args(self) -> dict[str, object]:
        """The constructor arguments (auxiliary head excluded): what :mod:`bnas.export` writes in the
        header and rebuilds the network from (its folded form included: convs keep their shapes)."""
        return {
            "C": self.stem0[3].out_channels,
            "num_classes": self.classifier.out_features,
            "layers": self.layers,
            "in_channels": self.stem0[0].in_channels,
            "bn_eps": self.bn_eps,
        }

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with batched_binarization(self):
            s0 = self.stem0(x)
            return cells_forward(self, s0, self.stem1(s0))
