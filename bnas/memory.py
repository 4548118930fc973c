"""How much memory one search step needs, estimated without allocating it.

The super-network is built and run forward once on PyTorch's ``meta`` device (shapes only, no data),
at the search's sizes and batch: every tensor autograd keeps for the backward pass is counted once
(``torch.autograd.graph.saved_tensors_hooks``), and the weights are counted four times (weights,
gradients, SGD momentum, one spare copy for the optimizer's update). The input batch is added. What
this leaves out: transient buffers of single ops (oneDNN workspaces, the backward pass's own
temporaries) and the data set in memory, so the figure is a lower bound of the peak, used to refuse
settings that cannot fit at all (``run.py --check``), not to pack trials tightly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from bnas.binarization import BinarySpec
from bnas.config import ExperimentConfig
from bnas.networks import NETWORKS

#: Copies of the weights a search step holds: the weights, their gradients, SGD's momentum and one
#: temporary of the update.
WEIGHT_COPIES = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one search step: activations kept for backward, weights (x :data:`WEIGHT_COPIES`),
    the input batch."""

    activations: int
    weights: int
    batch: int

    @property
    def total(self) -> int:
        return self.activations + WEIGHT_COPIES * self.weights + self.batch

    def describe(self) -> str:
        return (
            f"{_size(self.total)} ({_size(self.activations)} of activations kept for the backward pass, "
            f"{_size(WEIGHT_COPIES * self.weights)} of weights, gradients and momentum)"
        )


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def search_memory(cfg: ExperimentConfig, num_classes: int, in_channels: int = 3) -> MemoryEstimate:
    """The memory of one super-network training step of ``cfg`` (see the module's docstring)."""
    sc = cfg.search
    return _search_memory(
        cfg.network_layout(),
        sc.init_channels,
        num_classes,
        sc.layers,
        tuple(sc.candidate_ops()),
        sc.sampling_k,
        BinarySpec.from_config(cfg.binarization),
        (sc.nodes, sc.stem_multiplier),
        in_channels,
        cfg.runtime.batch_edges,
        (sc.batch_size, cfg.data.image_size),
    )


@functools.lru_cache(maxsize=64)  # a study's probe points share a few shapes; a pass costs ~0.4 s
def _search_memory(
    layout_name: str,
    channels: int,
    num_classes: int,
    layers: int,
    ops: tuple[str, ...],
    sampling_k: int,
    spec: BinarySpec,
    cell: tuple[int, int],
    in_channels: int,
    batch_edges: bool,
    batch: tuple[int, int],
) -> MemoryEstimate:
    (nodes, stem_multiplier), (batch_size, size) = cell, batch
    layout = NETWORKS.get(layout_name)
    saved: dict[int, torch.Tensor] = {}  # by identity: a tensor saved by several ops counts once

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.setdefault(id(t), t)
        return t

    with torch.device("meta"):
        net = layout.search_network(
            channels,
            num_classes,
            layers,
            list(ops),
            sampling_k,
            spec,
            steps=nodes,
            multiplier=nodes,
            stem_multiplier=stem_multiplier,
            in_channels=in_channels,
        )
        net.batch_edges = batch_edges
        x = torch.empty(batch_size, in_channels, size, size)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x)
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    activations = sum(t.numel() * t.element_size() for t in saved.values() if t.device.type == "meta")
    return MemoryEstimate(activations, weights, x.numel() * x.element_size())
