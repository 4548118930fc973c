"""The mixed pass of a search cell with its edges batched: one convolution per operation and wave.

A DARTS cell of 4 nodes has 14 edges, each running every remaining candidate operation on its own
weights; on CPU-sized networks (C/K of 2-8 channels at 16 px) the cost is the ~170 separate
convolutions per cell (and as many BatchNorms), not their arithmetic. The edges leaving states that are
ready at the same time -- both cell inputs, then each intermediate node in turn (a *wave*) -- apply the
same operations to inputs of the same shape, so per operation their weights are concatenated and
run as one grouped convolution:

* edge inputs are gathered as channel blocks ``(N, E * C/K, H, W)`` (block e = the sampled channels of
  edge e's source); a depthwise kxk over ``E * C/K`` channels and a pointwise 1x1 with ``groups = E``
  compute exactly what the E separate convolutions did; BatchNorm is per channel, so one call over the
  concatenated running statistics normalises each edge's block as its own module would (the running
  statistics are written back to each module);
* pooling and ReLU depend on the source only: computed once per source, not per edge;
* channel shuffle is a permutation, hence linear: node ``i`` = ``sum_e beta_e shuffle([y_e, r_e])``
  = ``shuffle([sum_e beta_e y_e, sum_e beta_e r_e])``, one shuffle per node instead of one per edge.

The maths is the per-edge path's (:meth:`bnas.supernet.MixedOp.forward`); the float results differ
in the last bits (other summation orders), within the tolerance stated in ``tests/test_batched_edges.py``.
Used for the mixed pass (no :class:`~bnas.supernet.Selection`) when ``runtime.batch_edges`` is on
and every operation of the cell is one of the built-in ones; anything else takes the per-edge path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bnas.binarization import BinaryConv2d, sign_ste
from bnas.operations import DilConv, FactorizedReduce, Identity, SepConv, Zero, channel_shuffle


@dataclass
class _OpGroup:
    """The edges of one wave that still hold operation ``name``."""

    name: str
    kind: str  # "conv" (dil/sep), "pool", "skip", "reduce_skip"
    rows: list[int]  # positions of these edges in the wave
    src: list[int]  # per edge, the position of its source in the wave's sources
    weight_pos: list[int]  # per edge, where its alpha weight sits in the wave's flat weights
    modules: list[nn.Module]
    _index: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, src, weight_pos) as index tensors on ``device`` (built once per device)."""
        if device not in self._index:
            self._index[device] = tuple(  # type: ignore[assignment]
                torch.tensor(v, device=device) for v in (self.rows, self.src, self.weight_pos)
            )
        return self._index[device]


@dataclass
class _Wave:
    """The edges leaving ``sources`` (state indices), which are all computed before the wave starts."""

    sources: list[int]
    edges: list[int]
    edge_sources: list[int]  # source state of each edge
    nodes: list[int]  # target state of each edge
    stride: int
    groups: list[_OpGroup]
    _mats: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def targets(self) -> list[int]:
        return sorted(set(self.nodes))

    def _build(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._mats:
            t = self.targets
            inc = torch.zeros(len(t), len(self.edges))
            src = torch.zeros(len(self.edges), len(self.sources))
            for e, (node, s) in enumerate(zip(self.nodes, self.edge_sources, strict=True)):
                inc[t.index(node), e] = 1.0
                src[e, self.sources.index(s)] = 1.0
            self._mats[device] = (inc.to(device), src.to(device), torch.tensor(self.edges, device=device))
        return self._mats[device]

    def matrices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets x edges) incidence and (edges x sources) one-hot, as float tensors on ``device``."""
        inc, src, _ = self._build(device)
        return inc, src

    def edge_index(self, device: torch.device) -> torch.Tensor:
        """The wave's edge indices as a tensor on ``device``."""
        return self._build(device)[2]


def _kind(module: nn.Module) -> str | None:
    """The batched form that computes ``module``, or None when there is none (a user's own op)."""
    if isinstance(module, Zero):
        return "none"
    if isinstance(module, Identity):
        return "skip"
    if isinstance(module, FactorizedReduce) and isinstance(module.conv_1, BinaryConv2d):
        return "reduce_skip"
    if isinstance(module, DilConv | SepConv):
        return "conv"
    if (
        isinstance(module, nn.Sequential)
        and len(module) == 2
        and isinstance(module[0], nn.MaxPool2d | nn.AvgPool2d)
        and isinstance(module[1], nn.BatchNorm2d)
    ):
        return "pool"
    return None


class CellPlan:
    """The waves of one search cell for its current operation lists; rebuild after a removal."""

    def __init__(self, waves: list[_Wave], steps: int, multiplier: int, C: int, k: int) -> None:
        self.waves, self.steps, self.multiplier, self.C, self.k = waves, steps, multiplier, C, k

    @classmethod
    def build(cls, cell: nn.Module) -> CellPlan | None:
        """The plan of ``cell`` (a :class:`bnas.supernet.SearchCell`); None if an op has no batched form."""
        from bnas.search_space import edge_endpoints  # torch-free leaf

        endpoints = edge_endpoints(cell.steps)
        sources_of_wave = [[0, 1]] + [[s] for s in range(2, cell.steps + 1)]
        waves = []
        for sources in sources_of_wave:
            edges = [e for e, (src, _) in enumerate(endpoints) if src in sources]
            mixed = [cell.edges[e] for e in edges]
            groups: dict[str, _OpGroup] = {}
            pos = 0
            for row, (e, op) in enumerate(zip(edges, mixed, strict=True)):
                for name, module in op.ops.items():
                    kind = _kind(module)
                    if kind is None:
                        return None
                    if kind != "none":
                        g = groups.setdefault(name, _OpGroup(name, kind, [], [], [], []))
                        g.rows.append(row)
                        g.src.append(sources.index(endpoints[e][0]))
                        g.weight_pos.append(pos)
                        g.modules.append(module)
                    pos += 1
            strides = {op.stride for op in mixed}
            if len(strides) != 1:
                return None
            waves.append(
                _Wave(
                    sources,
                    edges,
                    [endpoints[e][0] for e in edges],
                    [endpoints[e][1] for e in edges],
                    strides.pop(),
                    list(groups.values()),
                )
            )
        first = cell.edges[0]
        return cls(waves, cell.steps, cell.multiplier, first.C, first.k)

    def forward(
        self, states: list[torch.Tensor], op_weights: list[torch.Tensor], edge_weights: torch.Tensor
    ) -> torch.Tensor:
        """The cell's output from its two pre-processed inputs (``states``), mixed as MixedOp does."""
        part = self.C // self.k
        sel: dict[int, torch.Tensor] = {}
        rest: dict[int, torch.Tensor] = {}
        states = list(states)
        for wave in self.waves:
            for s in wave.sources:
                if s >= len(states):  # the node this wave leaves is complete now
                    states.append(self._node(sel.pop(s), rest.pop(s, None)))
            self._wave(wave, states, op_weights, edge_weights, part, sel, rest)
        last = self.steps + 1
        states.append(self._node(sel.pop(last), rest.pop(last, None)))
        return torch.cat(states[-self.multiplier :], dim=1)

    def _node(self, s: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        if r is None:
            return s
        return channel_shuffle(torch.cat([s, r], dim=1), self.k)

    def _wave(
        self,
        wave: _Wave,
        states: list[torch.Tensor],
        op_weights: list[torch.Tensor],
        edge_weights: torch.Tensor,
        part: int,
        sel: dict[int, torch.Tensor],
        rest: dict[int, torch.Tensor],
    ) -> None:
        xs = [states[s] for s in wave.sources]
        x = xs[0][:, :part] if len(xs) == 1 else torch.cat([h[:, :part] for h in xs], dim=1)
        n = x.shape[0]
        n_src, n_edges = len(xs), len(wave.edges)
        flat_w = torch.cat([op_weights[e] for e in wave.edges])
        shared: dict[tuple, torch.Tensor] = {}  # per-source results reused by several op groups
        acc: torch.Tensor | None = None
        for g in wave.groups:
            rows, src, wpos = g.index(x.device)
            y = _run_group(g, x, src, n_src, part, shared)
            y = y.view(n, len(g.rows), part, *y.shape[2:]) * flat_w[wpos].view(1, -1, 1, 1, 1)
            if len(g.rows) == n_edges:  # rows are 0..E-1 in order (groups list edges in wave order)
                acc = y if acc is None else acc + y
            else:
                if acc is None:
                    acc = y.new_zeros(n, n_edges, *y.shape[2:])
                acc = acc.index_add(1, rows, y)
        inc, onehot = wave.matrices(x.device)
        beta = edge_weights.index_select(0, wave.edge_index(x.device))
        mix = inc * beta  # (targets, edges): beta_e where edge e enters the target
        if acc is not None:
            contrib = torch.einsum("te,nechw->ntchw", mix, acc)
            for j, t in enumerate(wave.targets):
                sel[t] = contrib[:, j] if t not in sel else sel[t] + contrib[:, j]
        if self.k > 1:
            r = xs[0][:, part:] if n_src == 1 else torch.cat([hh[:, part:] for hh in xs], dim=1)
            if wave.stride == 2:
                r = F.max_pool2d(r, 2, 2)
            r = r.view(n, n_src, -1, *r.shape[2:])
            r_contrib = torch.einsum("ts,nschw->ntchw", mix @ onehot, r)
            for j, t in enumerate(wave.targets):
                rest[t] = r_contrib[:, j] if t not in rest else rest[t] + r_contrib[:, j]


def _gather(x: torch.Tensor, src: torch.Tensor, n_src: int, part: int) -> torch.Tensor:
    """(N, S * part, H, W) sources -> (N, E * part, H, W): block e = source ``src[e]``."""
    n, _, h, w = x.shape
    if n_src == 1 and len(src) == 1:
        return x
    return x.view(n, n_src, part, h, w).index_select(1, src).view(n, len(src) * part, h, w)


def _run_group(
    g: _OpGroup, x: torch.Tensor, src: torch.Tensor, n_src: int, part: int, shared: dict[tuple, torch.Tensor]
) -> torch.Tensor:
    """Operation ``g.name`` on every edge of the group: (N, E * part, H', W')."""
    first = g.modules[0]
    if g.kind == "skip":
        return _gather(x, src, n_src, part)
    if g.kind == "pool":
        key = ("pool", g.name)
        if key not in shared:
            shared[key] = first[0](x)  # pooling is per channel: all sources at once
        return _batch_norm(_gather(shared[key], src, n_src, part), [m[1] for m in g.modules])
    if g.kind == "reduce_skip":
        pre = _pre(first.relu, x, shared)
        hx = _gather(pre, src, n_src, part)
        hy = hx[:, :, 1:, 1:]
        if hx.shape[-1] % 2 or hx.shape[-2] % 2:
            hy = F.pad(hy, (0, 1, 0, 1))
        a = _conv(hx, [m.conv_1 for m in g.modules])
        b = _conv(hy, [m.conv_2 for m in g.modules])
        n, e = a.shape[0], len(g.modules)
        y = torch.cat([a.view(n, e, -1, *a.shape[2:]), b.view(n, e, -1, *b.shape[2:])], dim=2)
        return _batch_norm(y.view(n, -1, *y.shape[3:]), [m.bn for m in g.modules])
    # conv: DilConv = (pre-act, dw, pw, BN); SepConv = two of them
    blocks = [[m.op[0], m.op[1]] if isinstance(m, SepConv) else [m] for m in g.modules]
    y: torch.Tensor | None = None
    for b in range(len(blocks[0])):
        seqs = [blk[b].op for blk in blocks]
        h = _gather(_pre(seqs[0][0], x, shared), src, n_src, part) if b == 0 else seqs[0][0](y)
        h = _conv(h, [s[1] for s in seqs])
        h = _conv(h, [s[2] for s in seqs])
        y = _batch_norm(h, [s[3] for s in seqs])
    assert y is not None
    return y


def _pre(act: nn.Module, x: torch.Tensor, shared: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """The pre-activation (ReLU or nothing) of the wave's sources, computed once per wave."""
    key = ("pre", type(act))
    if key not in shared:
        shared[key] = act(x)
    return shared[key]


def _conv(h: torch.Tensor, convs: list[BinaryConv2d]) -> torch.Tensor:
    """E convolutions of one shape on E channel blocks of ``h``: one conv with ``groups * E``."""
    c = convs[0]
    if c.binary_input:
        h = sign_ste(h)
    weight = c.current_weight() if len(convs) == 1 else torch.cat([m.current_weight() for m in convs])
    return F.conv2d(h, weight, None, c.stride, c.padding, c.dilation, c.groups * len(convs))


def _batch_norm(h: torch.Tensor, bns: list[nn.BatchNorm2d]) -> torch.Tensor:
    """E BatchNorms on E channel blocks of ``h``, running statistics read and written per module."""
    b = bns[0]
    if len(bns) == 1:
        return b(h)
    track = b.track_running_stats and b.running_mean is not None
    use_batch = b.training or not track
    factor = 0.0
    if b.training and track:
        torch._foreach_add_([m.num_batches_tracked for m in bns], 1)
        factor = 1.0 / float(b.num_batches_tracked) if b.momentum is None else b.momentum
    rm = torch.cat([m.running_mean for m in bns]) if track else None
    rv = torch.cat([m.running_var for m in bns]) if track else None
    weight = torch.cat([m.weight for m in bns]) if b.affine else None
    bias = torch.cat([m.bias for m in bns]) if b.affine else None
    y = F.batch_norm(h, rm, rv, weight, bias, use_batch, factor, b.eps)
    if b.training and track and factor != 0.0:
        with torch.no_grad():
            torch._foreach_copy_([m.running_mean for m in bns], list(rm.chunk(len(bns))))
            torch._foreach_copy_([m.running_var for m in bns], list(rv.chunk(len(bns))))
    return y
