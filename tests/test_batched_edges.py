"""The batched mixed pass (bnas.batched_edges) against the per-edge path it replaces.

Both paths compute the same maths; in float64 they differ only by summation order (~1e-16 measured
on the outputs, ~1e-14 on the gradients, over the cases below). The tolerances leave four orders of
magnitude above that. One exception is stated and tested as such: max-pooling's gradient at *exactly
tied* maxima goes to the first of them, and binary activations make tied maxima common, so a last-bit
difference in a node's sum may move the gradient to another tied position (forward values agree).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas.batched_edges import CellPlan
from bnas.binarization import BINARIZATIONS, BinarySpec
from bnas.config import ALL_OPS
from bnas.supernet import CELL_TYPES, SuperNetwork, SuperNetworkImageNet

FWD_TOL, GRAD_TOL = 1e-11, 1e-9  # relative to the largest magnitude; measured ~1e-16 / ~1e-14


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _remove_some(net: SuperNetwork, seed: int) -> None:
    """Random removals as the reduction stages make them (uneven op lists across edges)."""
    g = torch.Generator().manual_seed(seed)
    for t in CELL_TYPES:
        for e, names in enumerate(net.edge_ops[t]):
            for _ in range(int(torch.randint(0, 5, (1,), generator=g))):
                names = net.edge_ops[t][e]
                if len(names) > 2:
                    cand = [n for n in names if n != "none"]
                    net.remove_op(t, e, cand[int(torch.randint(0, len(cand), (1,), generator=g))])


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    net.train()
    out = net(x)
    F.cross_entropy(out, y).backward()
    grads = {k: p.grad for k, p in net.named_parameters()}
    return out.detach(), grads, {k: b.clone() for k, b in net.named_buffers()}


def _compare(net: SuperNetwork, size: int, check_grads: bool = True) -> None:
    ref = copy.deepcopy(net)
    ref.batch_edges = False
    net.batch_edges = True
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 3, size, size, generator=g), torch.randint(0, 10, (6,), generator=g)
    o1, g1, b1 = _step(net, x, y)
    o2, g2, b2 = _step(ref, x, y)
    assert all(cell.plan() is not None for cell in net.cells), "the batched path must be taken"
    assert (o1 - o2).abs().max() <= FWD_TOL * o2.abs().max()
    for k in b2:  # BatchNorm running statistics written back to every edge's own module
        assert torch.allclose(b1[k].double(), b2[k].double(), rtol=0, atol=FWD_TOL), k
    assert g1.keys() == g2.keys()
    for k in g2:
        assert (g1[k] is None) == (g2[k] is None), k
        if check_grads and g2[k] is not None:
            assert (g1[k] - g2[k]).abs().max() <= GRAD_TOL * max(g2[k].abs().max(), 1e-12), k


@pytest.mark.parametrize("method", BINARIZATIONS.names())
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("removed", [False, True])
def test_batched_pass_matches_per_edge_pass(method: str, k: int, removed: bool) -> None:
    torch.manual_seed(1)
    net = SuperNetwork(8, 10, 3, ALL_OPS, k, BinarySpec(method, "real"))
    if removed:
        _remove_some(net, seed=k)
    _compare(net, 16)


def test_batched_pass_matches_on_the_imagenet_layout() -> None:
    torch.manual_seed(1)
    net = SuperNetworkImageNet(8, 10, 5, ALL_OPS, 4, BinarySpec("xnor", "real"))
    _remove_some(net, seed=3)
    _compare(net, 64)


@pytest.mark.parametrize("method", ["xnor", "pcnn"])
def test_binary_activations_forward_and_statistics_match(method: str) -> None:
    torch.manual_seed(1)
    net = SuperNetwork(8, 10, 5, ALL_OPS, 4, BinarySpec(method, "binary"))
    _compare(net, 16, check_grads=False)  # max-pool ties: see the module docstring


@pytest.mark.parametrize("method", ["xnor", "pcnn"])
def test_binary_activations_gradients_match_without_max_pool(method: str) -> None:
    ops = [o for o in ALL_OPS if o != "max_pool_3x3"]
    torch.manual_seed(1)
    net = SuperNetwork(8, 10, 5, ops, 4, BinarySpec(method, "binary"))
    _compare(net, 16)


def test_eval_mode_uses_running_statistics_alike() -> None:
    torch.manual_seed(1)
    net = SuperNetwork(8, 10, 5, ALL_OPS, 2, BinarySpec("xnor"))
    _step(net, torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,)))  # running stats move off 0/1
    net.eval()
    ref = copy.deepcopy(net)
    ref.batch_edges = False
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), rtol=0, atol=1e-12)


def test_a_removal_rebuilds_the_plan() -> None:
    torch.manual_seed(1)
    net = SuperNetwork(8, 10, 3, ALL_OPS, 2, BinarySpec("xnor"))
    before = net.cells[0].plan()
    net.remove_op("normal", 0, "sep_conv_3x3")
    after = net.cells[0].plan()
    assert after is not before
    names = {g.name for w in after.waves for g in w.groups if 0 in [w.edges[r] for r in g.rows]}
    assert "sep_conv_3x3" not in names
    _compare(net, 16)


class _Custom(nn.Module):
    def __init__(self, C: int, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride] * 0.5


def test_an_op_without_batched_form_falls_back_to_the_per_edge_path() -> None:
    torch.manual_seed(1)
    net = SuperNetwork(8, 10, 3, ALL_OPS, 2, BinarySpec("xnor"))
    cell = net.cells[0]
    cell.edges[3].ops["avg_pool_3x3"] = _Custom(4, 1)  # a user's own module, unknown to the plan
    cell.forget_plan()
    assert CellPlan.build(cell) is None and cell.plan() is None
    ref = copy.deepcopy(net)
    ref.batch_edges = False
    x = torch.randn(4, 3, 16, 16)
    assert torch.allclose(net(x), ref(x), rtol=0, atol=1e-12)  # still runs, other cells batched


def test_selection_passes_never_use_the_plan() -> None:
    """Sub-networks (a Selection) run one op per edge: the per-edge path, unchanged."""
    torch.manual_seed(1)
    net = SuperNetwork(8, 10, 3, ALL_OPS, 2, BinarySpec("xnor"))
    calls = []
    for cell in net.cells:
        plan = cell.plan()
        plan.forward = lambda *a, **k: calls.append(1)  # type: ignore[method-assign]
    from bnas.supernet import Selection

    sel = Selection(["skip_connect"] * 14, ["max_pool_3x3"] * 14)
    net(torch.randn(2, 3, 16, 16), sel)
    assert calls == []
