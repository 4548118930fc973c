"""The search super-network: PC-DARTS cells of partial-channel mixed operations.

Sources: PC-DARTS (Xu et al., ICLR 2020) and BNAS (Chen et al., AAAI 2020); method.md sections 2 and 5.

* **Channel sampling.** A mixed operation sends the first ``C/K`` channels of its input through the
  weighted sum of its candidate operations, ``sum_o softmax(alpha)_o * o(x[:, :C/K])``; the other
  channels bypass (max-pooled 2x2 on stride-2 edges). The two parts are concatenated and
  channel-shuffled with ``K`` groups, so every edge of the next cell sees other channels.
* **Edge normalization.** One scalar ``beta`` per edge; node ``i`` sums its incoming edges weighted by
  ``softmax(beta)`` over the edges that enter it.
* **Operation space reduction.** Every edge holds its own list of remaining operations. Removing an
  operation deletes its module from every cell of that type: it is no longer computed or held in
  memory (the source of BNAS's speed). ``alpha`` keeps its full width (edges x all operations) so its
  optimizer never changes shape; removed entries are masked out of the softmax.

``alpha`` and ``beta`` are shared by all cells of a type (normal or reduction), as in DARTS.
Operations are built for ``C/K`` channels with non-affine BatchNorm during search.

Two stems: :class:`SuperNetwork` has the CIFAR one (a 3x3 conv, full resolution);
:class:`SuperNetworkImageNet` has PC-DARTS' ImageNet one (``model_search_imagenet.py`` [C]: three
stride-2 3x3 convs, 224 -> 28 px, in two stems; 8 cells, C = 16 there). Everything after the stem is
shared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bnas.batched_edges import CellPlan
from bnas.binarization import BatchedBinarization, BinaryConv2d, BinarySpec
from bnas.operations import (  # noqa: F401
    FactorizedReduce,
    ReLUConvBN,
    channel_shuffle,
    imagenet_stems,
    make_op,
)
from bnas.search_space import CELL_TYPES, edge_endpoints, num_edges  # noqa: F401  (re-exported)


class MixedOp(nn.Module):
    """One edge: the remaining candidate operations on ``C/K`` sampled channels."""

    def __init__(self, C: int, stride: int, op_names: list[str], k: int, spec: BinarySpec) -> None:
        super().__init__()
        if C % k:
            raise ValueError(f"channels {C} not divisible by sampling K={k}")
        self.C, self.stride, self.k = C, stride, k
        self.ops = nn.ModuleDict({name: make_op(name, C // k, stride, False, spec) for name in op_names})
        self.bypass_pool = nn.MaxPool2d(2, 2) if stride == 2 else None

    @property
    def op_names(self) -> list[str]:
        return list(self.ops.keys())

    def remove(self, name: str) -> None:
        del self.ops[name]

    def forward(
        self,
        x: torch.Tensor,
        weights: torch.Tensor | None = None,
        only: str | tuple[str, ...] | None = None,
    ) -> torch.Tensor:
        """``weights`` aligns with :attr:`op_names` (mixed mode); ``only`` runs one op with weight 1, or,
        as a tuple, one op per group of a stacked batch (:class:`SelectionBatch`): the batch holds
        ``len(only)`` equal groups and group g runs ``only[g]``; the groups of one op run in one call."""
        part = self.C // self.k
        x_sel, x_rest = x[:, :part], x[:, part:]
        if isinstance(only, tuple):
            y = _per_group(x_sel, only, self.ops)
        elif only is not None:
            y = self.ops[only](x_sel)
        else:
            assert weights is not None
            y = sum(w * op(x_sel) for w, op in zip(weights, self.ops.values(), strict=True))
        if self.k == 1:
            return y
        if self.bypass_pool is not None:
            x_rest = self.bypass_pool(x_rest)
        return channel_shuffle(torch.cat([y, x_rest], dim=1), self.k)


def _per_group(x: torch.Tensor, ops: tuple[str, ...], modules: nn.ModuleDict) -> torch.Tensor:
    """Group g of ``x`` (``len(ops)`` equal groups along the batch) through ``modules[ops[g]]``; the
    groups of one op go through it together (their BN statistics stay per group: grouped_batch_norm)."""
    n = len(ops)
    size = x.shape[0] // n
    parts: list[torch.Tensor | None] = [None] * n
    for name in dict.fromkeys(ops):
        idx = [g for g, o in enumerate(ops) if o == name]
        if len(idx) == 1:
            xin = x[idx[0] * size : (idx[0] + 1) * size]
        else:
            xin = torch.cat([x[g * size : (g + 1) * size] for g in idx])
        y = modules[name](xin)
        for j, g in enumerate(idx):
            parts[g] = y[j * size : (j + 1) * size]
    return torch.cat(parts)  # type: ignore[arg-type]


@contextlib.contextmanager
def grouped_batch_norm(net: nn.Module, group: int) -> Iterator[None]:
    """Inside, every BatchNorm of ``net`` in training mode (batch statistics) normalises each group of
    ``group`` consecutive samples with that group's own statistics, as if each group were its own batch
    (:class:`SelectionBatch` stacks sub-networks along the batch). No running statistics are updated:
    meant for :func:`bnas.subnet_scoring.batch_statistics` evaluation (momentum 0, where they are not either).

    The groups are laid side by side as channels (``(group, G * C, H, W)``) so that one
    ``F.batch_norm`` computes the G x C statistics, each over the same elements in the same order as a
    per-group call.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def make(bn: nn.modules.batchnorm._BatchNorm):  # noqa: ANN202
        def forward(x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            if n == group or not bn.training:
                return type(bn).forward(bn, x)
            g, c, rest = n // group, x.shape[1], x.shape[2:]
            xx = x.reshape(g, group, c, *rest).transpose(0, 1).reshape(group, g * c, *rest)
            w = bn.weight.repeat(g) if bn.weight is not None else None
            b = bn.bias.repeat(g) if bn.bias is not None else None
            y = F.batch_norm(xx, None, None, w, b, True, 0.0, bn.eps)
            return y.reshape(group, g, c, *rest).transpose(0, 1).reshape(n, c, *rest)

        return forward

    for bn in bns:
        object.__setattr__(bn, "forward", make(bn))
    try:
        yield
    finally:
        for bn in bns:
            object.__delattr__(bn, "forward")


@dataclass
class Selection:
    """A discrete choice: per cell type, per edge, the op to run (None: the edge is not used).

    Used for the sampled sub-networks of the performance strategy (one op on every edge) and for the
    derived architecture (top-2 edges per node). Node inputs are weighted by softmax(beta)
    renormalised over the edges in use [D].
    """

    normal: list[str | None]
    reduce: list[str | None]

    def for_cell(self, cell_type: str) -> list[str | None]:
        return self.normal if cell_type == "normal" else self.reduce


@dataclass
class SelectionBatch:
    """Several :class:`Selection` objects run in one pass, stacked along the batch (group g = the
    input batch through selection g). Every selection must use the same edges (sampled sub-networks
    use all of them); per edge, :meth:`for_cell` gives the tuple of ops, one per group."""

    selections: list[Selection]

    def __post_init__(self) -> None:
        if not self.selections:
            raise ValueError("a SelectionBatch needs at least one selection")
        first = self.selections[0]
        for sel in self.selections[1:]:
            for t in CELL_TYPES:
                a, b = first.for_cell(t), sel.for_cell(t)
                if len(a) != len(b) or any((x is None) != (y is None) for x, y in zip(a, b, strict=True)):
                    raise ValueError("the selections of a SelectionBatch must use the same edges")

    def __len__(self) -> int:
        return len(self.selections)

    def for_cell(self, cell_type: str) -> list[tuple[str, ...] | None]:
        cols = zip(*(s.for_cell(cell_type) for s in self.selections), strict=True)
        return [None if c[0] is None else tuple(c) for c in cols]


class SearchCell(nn.Module):
    def __init__(
        self,
        steps: int,
        multiplier: int,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        edge_ops: list[list[str]],
        k: int,
        spec: BinarySpec,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.cell_type = "reduce" if reduction else "normal"
        self.preprocess0: nn.Module = (
            FactorizedReduce(C_prev_prev, C, affine=False, spec=None)
            if reduction_prev
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False, spec=spec)
        )
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False, spec=spec)
        self.steps, self.multiplier = steps, multiplier
        self.edges = nn.ModuleList()
        for (src, _dst), names in zip(edge_endpoints(steps), edge_ops, strict=True):
            stride = 2 if reduction and src < 2 else 1
            self.edges.append(MixedOp(C, stride, names, k, spec))
        self.forget_plan()

    def forget_plan(self) -> None:
        """Drop the batched-edges plan (:mod:`bnas.batched_edges`): the operation lists changed."""
        self._plan: CellPlan | None | bool = False  # False: not built yet; None: no batched form

    def plan(self) -> CellPlan | None:
        if self._plan is False:
            self._plan = CellPlan.build(self)
        return self._plan  # type: ignore[return-value]

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        op_weights: list[torch.Tensor] | None,
        edge_weights: torch.Tensor,
        choice: list[str | None] | list[tuple[str, ...] | None] | None = None,
        batch_edges: bool = False,
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        if choice is None and batch_edges and (plan := self.plan()) is not None:
            assert op_weights is not None
            return plan.forward(states, op_weights, edge_weights)
        offset = 0
        for i in range(self.steps):
            n_in = 2 + i
            beta = edge_weights[offset : offset + n_in]
            if choice is None:
                s = sum(
                    beta[j] * self.edges[offset + j](h, op_weights[offset + j]) for j, h in enumerate(states)
                )
            else:
                used = [j for j in range(n_in) if choice[offset + j] is not None]
                if not used:
                    raise ValueError(f"node {2 + i} of the {self.cell_type} cell has no edge selected")
                norm = beta[used].sum()
                s = sum(
                    (beta[j] / norm) * self.edges[offset + j](states[j], only=choice[offset + j])
                    for j in used
                )
            offset += n_in
            states.append(s)
        return torch.cat(states[-self.multiplier :], dim=1)


class SuperNetwork(nn.Module):
    """PC-DARTS super-network with per-edge operation lists that shrink during the search.

    ``forward(x)`` mixes all remaining operations with softmax(alpha) and softmax(beta);
    ``forward(x, selection)`` runs a discrete sub-network (see :class:`Selection`).
    """

    #: The mixed pass batches the edges of each cell (:mod:`bnas.batched_edges`; ``runtime.batch_edges``).
    batch_edges: bool = True

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        ops: list[str],
        k: int,
        spec: BinarySpec,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        in_channels: int = 3,
        edge_ops: dict[str, list[list[str]]] | None = None,
    ) -> None:
        super().__init__()
        if C % k:
            raise ValueError(f"init_channels={C} is not divisible by sampling_k={k}")
        self.all_ops = list(ops)
        self.steps, self.multiplier, self.k, self.spec = steps, multiplier, k, spec
        n_e = num_edges(steps)
        if edge_ops is None:
            edge_ops = {t: [list(ops) for _ in range(n_e)] for t in CELL_TYPES}
        self.edge_ops = {t: [list(e) for e in edge_ops[t]] for t in CELL_TYPES}

        C_prev_prev, C_prev, reduction_prev = self._build_stem(C, stem_multiplier, in_channels)
        C_curr = C
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            t = "reduce" if reduction else "normal"
            cell = SearchCell(
                steps,
                multiplier,
                C_prev_prev,
                C_prev,
                C_curr,
                reduction,
                reduction_prev,
                self.edge_ops[t],
                k,
                spec,
            )
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        # Architecture parameters: small random init as in DARTS (1e-3 * N(0, 1)).
        self.alphas = nn.ParameterDict(
            {t: nn.Parameter(1e-3 * torch.randn(n_e, len(ops))) for t in CELL_TYPES}
        )
        self.betas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(n_e)) for t in CELL_TYPES})
        self._forget_structure()

    def _build_stem(self, C: int, stem_multiplier: int, in_channels: int) -> tuple[int, int, bool]:
        """Build the stem; return (channels of s0, channels of s1, whether s0 must be halved).

        CIFAR [C]: one full-precision 3x3 conv to ``stem_multiplier * C`` channels, BN; s0 = s1."""
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem)
        )
        return C_stem, C_stem, False

    def _stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s0, s1): the two inputs of the first cell."""
        s = self.stem(x)
        return s, s

    # ---------------------------------------------------------------- per set of operations
    def _forget_structure(self) -> None:
        """Drop what is collected once per set of operations (remove_op changes the set): a walk over
        the ~3600 modules costs milliseconds and a training step needed several, and the per-edge
        index tensors of op_probabilities were rebuilt on every forward pass."""
        self._named_modules: list[tuple[str, nn.Module]] | None = None
        self._binary_convs: list[BinaryConv2d] | None = None
        self._batched: BatchedBinarization | None = None
        # cell type -> (device, (edges, ops) index when all edges keep as many ops, else one per edge)
        self._op_index: dict[str, tuple[torch.device, torch.Tensor | list[torch.Tensor]]] = {}

    def _modules_by_name(self) -> list[tuple[str, nn.Module]]:
        if self._named_modules is None:
            self._named_modules = list(self.named_modules())
        return self._named_modules

    def binary_convs(self) -> list[BinaryConv2d]:
        """Every :class:`BinaryConv2d`, in ``modules()`` order (collected once per set of operations;
        :func:`bnas.binarization.projection_loss` and ``reset_projection_terms`` use it)."""
        if self._binary_convs is None:
            self._binary_convs = [m for _, m in self._modules_by_name() if isinstance(m, BinaryConv2d)]
        return self._binary_convs

    # ---------------------------------------------------------------- parameters, by role
    def arch_parameters(self) -> list[nn.Parameter]:
        """alpha and beta of both cell types: the architecture optimizer's parameters only."""
        return [self.alphas[t] for t in CELL_TYPES] + [self.betas[t] for t in CELL_TYPES]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``named_parameters()`` without alpha and beta, same names and order. The modules are walked
        once per set of operations; each module's parameters are read now, so reassigned ones count."""
        arch = {id(p) for p in self.arch_parameters()}
        seen: set[int] = set()  # named_parameters() yields a shared parameter once
        for prefix, m in self._modules_by_name():
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                if id(p) not in arch:
                    yield (f"{prefix}.{name}" if prefix else name), p

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not alpha or beta: the weight optimizer's parameters only."""
        return [p for _, p in self.named_weight_parameters()]

    # ---------------------------------------------------------------- architecture weights
    def op_probabilities(self, cell_type: str) -> list[torch.Tensor]:
        """Per edge, softmax(alpha) over that edge's remaining ops, in :attr:`edge_ops` order."""
        alpha = self.alphas[cell_type]
        cached = self._op_index.get(cell_type)
        if cached is None or cached[0] != alpha.device:
            rows = [[self.all_ops.index(n) for n in names] for names in self.edge_ops[cell_type]]
            if len({len(r) for r in rows}) == 1:  # the usual case: one gather, one softmax per type
                index: torch.Tensor | list[torch.Tensor] = torch.tensor(rows, device=alpha.device)
            else:
                index = [torch.tensor(r, device=alpha.device) for r in rows]
            cached = self._op_index[cell_type] = (alpha.device, index)
        index = cached[1]
        if isinstance(index, torch.Tensor):
            # Row e of the gathered (edges, ops) matrix is alpha[e, index[e]]; softmax works row by row,
            # so each row has the bits of the per-edge softmax.
            return list(F.softmax(alpha.gather(1, index), dim=-1).unbind(0))
        return [F.softmax(alpha[e, idx], dim=-1) for e, idx in enumerate(index)]

    def edge_weights(self, cell_type: str) -> torch.Tensor:
        """softmax(beta) over the edges entering each node, concatenated in edge order."""
        beta = self.betas[cell_type]
        parts, offset = [], 0
        for i in range(self.steps):
            n_in = 2 + i
            parts.append(F.softmax(beta[offset : offset + n_in], dim=-1))
            offset += n_in
        return torch.cat(parts)

    # ---------------------------------------------------------------- reduction
    def remove_op(self, cell_type: str, edge: int, name: str) -> None:
        """Drop ``name`` from ``edge`` in every cell of ``cell_type``: its modules are deleted."""
        names = self.edge_ops[cell_type][edge]
        if name not in names:
            raise ValueError(f"{cell_type} edge {edge} has no operation {name!r} (left: {names})")
        if len(names) == 1:
            raise ValueError(f"cannot remove the last operation of {cell_type} edge {edge}")
        if [o for o in names if o != name] == ["none"]:
            # A genotype never holds `none`: an edge left with it alone could not be derived, and a
            # network scored with zeros there would not be the one retrained.
            raise ValueError(f"removing {name!r} would leave only 'none' on {cell_type} edge {edge}")
        names.remove(name)
        self._forget_structure()
        for cell in self.cells:
            if cell.cell_type == cell_type:
                cell.edges[edge].remove(name)
                cell.forget_plan()

    def ops_per_edge(self) -> float:
        counts = [len(n) for t in CELL_TYPES for n in self.edge_ops[t]]
        return sum(counts) / len(counts)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, selection: Selection | SelectionBatch | None = None) -> torch.Tensor:
        """Logits of the mixed super-network, of one discrete sub-network (``Selection``), or of several
        stacked along the batch (``SelectionBatch`` of G: returns G x the batch, group g = selection g;
        only in batch-statistics evaluation, :func:`bnas.subnet_scoring.batch_statistics`, where each group's
        BN statistics are its own)."""
        if self._batched is None:
            self._batched = BatchedBinarization(self)
        # Every binary conv's weight binarized in a few batched ops; a sub-network pass runs only the
        # selected ops, so PCNN (whose batched loss terms cover every conv) keeps its per-conv path there.
        with self._batched.bound(every_conv_runs=selection is None):
            if isinstance(selection, SelectionBatch):
                with grouped_batch_norm(self, x.shape[0]):
                    return self._forward(x, selection)
            return self._forward(x, selection)

    def _forward(self, x: torch.Tensor, selection: Selection | SelectionBatch | None) -> torch.Tensor:
        weights = {}
        for t in CELL_TYPES:
            op_w = self.op_probabilities(t) if selection is None else None
            weights[t] = (op_w, self.edge_weights(t))
        s0, s1 = self._stem_forward(x)
        if isinstance(selection, SelectionBatch):  # the stem is the same for every group: run it once
            g = len(selection)
            s0, s1 = s0.repeat(g, *[1] * (s0.dim() - 1)), s1.repeat(g, *[1] * (s1.dim() - 1))
        for cell in self.cells:
            op_w, edge_w = weights[cell.cell_type]
            choice = selection.for_cell(cell.cell_type) if selection is not None else None
            s0, s1 = s1, cell(s0, s1, op_w, edge_w, choice, self.batch_edges)
        return self.classifier(self.global_pooling(s1).flatten(1))


class SuperNetworkImageNet(SuperNetwork):
    """The super-network with PC-DARTS' ImageNet stem (``model_search_imagenet.py`` [C]).

    ``stem0`` = conv 3x3 s2 to C/2, BN, ReLU, conv 3x3 s2 to C, BN; ``stem1`` = ReLU, conv 3x3 s2 to C,
    BN: 224 -> 28 px before the first cell, whose s0 (``stem0``, twice s1's resolution) goes through a
    full-precision factorized reduce. ``stem_multiplier`` does not apply (the stems output C).
    """

    def _build_stem(self, C: int, stem_multiplier: int, in_channels: int) -> tuple[int, int, bool]:
        self.stem0, self.stem1 = imagenet_stems(C, in_channels)
        return C, C, True

    def _stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)
