"""The PC-DARTS super-network: channel sampling, shuffle, edge normalization, parameter roles."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

import bnas.supernet as supernet_module
from bnas.binarization import BINARIZATIONS, BinaryConv2d, BinarySpec
from bnas.config import ALL_OPS
from bnas.supernet import (
    CELL_TYPES,
    MixedOp,
    Selection,
    SuperNetwork,
    channel_shuffle,
    edge_endpoints,
    num_edges,
)


def tiny_net(k: int = 2, method: str = "xnor", ops: list[str] | None = None) -> SuperNetwork:
    torch.manual_seed(0)
    return SuperNetwork(C=4, num_classes=10, layers=3, ops=ops or ALL_OPS, k=k, spec=BinarySpec(method))


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_only_c_over_k_channels_reach_the_candidate_ops(k: int, stride: int) -> None:
    C = 8
    m = MixedOp(C, stride, ALL_OPS, k, BinarySpec("xnor"))
    seen = []
    for op in m.ops.values():
        op.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    x = torch.randn(2, C, 8, 8)
    w = torch.softmax(torch.randn(len(ALL_OPS)), 0)
    y = m(x, w)
    assert seen and set(seen) == {C // k}
    assert y.shape == (2, C, 8 // stride, 8 // stride)


def test_bypassed_channels_pass_unchanged_on_stride_1_edges() -> None:
    m = MixedOp(8, 1, ["none"], 2, BinarySpec("xnor"))
    x = torch.randn(2, 8, 4, 4)
    y = m(x, torch.ones(1))
    # The op output (zeros) fills half the channels; the bypassed half is x[:, 4:] after the shuffle.
    kept = y.abs().sum(dim=(0, 2, 3)) > 0
    assert kept.sum() == 4
    assert torch.allclose(torch.sort(y[:, kept].flatten())[0], torch.sort(x[:, 4:].flatten())[0])


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_channel_shuffle_is_a_permutation(groups: int) -> None:
    C = 8
    x = torch.arange(C, dtype=torch.float32).view(1, C, 1, 1).expand(2, C, 3, 3).contiguous()
    y = channel_shuffle(x, groups)
    order = y[0, :, 0, 0].long().tolist()
    assert sorted(order) == list(range(C))
    if groups > 1:
        assert order != list(range(C))
    # Shuffling by g then by C/g restores the order (the inverse permutation).
    assert torch.equal(channel_shuffle(y, C // groups), x)


def test_edge_weights_softmax_over_the_edges_into_each_node() -> None:
    net = tiny_net()
    with torch.no_grad():
        for t in CELL_TYPES:
            net.betas[t].copy_(torch.randn_like(net.betas[t]))
            w = net.edge_weights(t)
            ends = edge_endpoints(net.steps)
            assert len(w) == num_edges(net.steps) == 14
            for node in range(2, 2 + net.steps):
                idx = [e for e, (_, d) in enumerate(ends) if d == node]
                assert torch.allclose(w[idx].sum(), torch.tensor(1.0))
                assert torch.allclose(w[idx], torch.softmax(net.betas[t][idx], 0))


def test_arch_and_weight_parameters_are_disjoint_and_cover_all() -> None:
    net = tiny_net()
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    every = {id(p) for p in net.parameters()}
    assert arch.isdisjoint(weights)
    assert arch | weights == every
    assert len(arch) == 4  # alpha and beta for normal and reduction cells


def test_one_architecture_step_changes_only_arch_parameters() -> None:
    net = tiny_net()
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, net.arch_parameters())
    for p, g in zip(net.arch_parameters(), grads, strict=True):
        p.grad = g
    opt.step()
    arch_names = {n for n, p in net.named_parameters() if any(p is a for a in net.arch_parameters())}
    for n, p in net.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in arch_names), n


def test_removed_op_is_no_longer_computed_nor_held() -> None:
    net = tiny_net()
    n_before = sum(p.numel() for p in net.weight_parameters())
    for e in range(num_edges(net.steps)):
        net.remove_op("normal", e, "sep_conv_5x5")
    assert all("sep_conv_5x5" not in ops for ops in net.edge_ops["normal"])
    calls = []
    for cell in net.cells:
        for edge in cell.edges:
            assert ("sep_conv_5x5" in edge.ops) == (cell.cell_type == "reduce")
            for name, op in edge.ops.items():
                op.register_forward_hook(lambda *a, name=name, t=cell.cell_type: calls.append((t, name)))
    net.batch_edges = False  # the hooks see the per-edge path (tests/test_batched_edges.py: the other)
    net(torch.randn(2, 3, 16, 16))
    assert ("normal", "sep_conv_5x5") not in calls and ("reduce", "sep_conv_5x5") in calls
    assert sum(p.numel() for p in net.weight_parameters()) < n_before
    # The probabilities renormalise over what is left.
    probs = net.op_probabilities("normal")
    assert all(len(p) == 7 and torch.allclose(p.sum(), torch.tensor(1.0)) for p in probs)


def test_remove_op_misuse() -> None:
    net = tiny_net(ops=["skip_connect", "max_pool_3x3"])
    with pytest.raises(ValueError, match="no operation"):
        net.remove_op("normal", 0, "sep_conv_3x3")
    net.remove_op("normal", 0, "skip_connect")
    with pytest.raises(ValueError, match="last operation"):
        net.remove_op("normal", 0, "max_pool_3x3")


def test_k_must_divide_channels() -> None:
    with pytest.raises(ValueError, match="divisible"):
        SuperNetwork(C=6, num_classes=10, layers=3, ops=ALL_OPS, k=4, spec=BinarySpec())


@pytest.mark.parametrize("method", BINARIZATIONS.names())
def test_forward_backward_and_selection_for_every_binarization(method: str) -> None:
    net = tiny_net(method=method)
    x = torch.randn(4, 3, 16, 16)
    out = net(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.arch_parameters())
    sel = Selection(["sep_conv_3x3"] * 14, ["max_pool_3x3"] * 14)
    assert net(x, sel).shape == (4, 10)


# ---------------------------------------------------------------- speed-ups keep the numbers
def _step(net: SuperNetwork, x: torch.Tensor, y: torch.Tensor, sel: Selection | None) -> list:
    net.zero_grad(set_to_none=True)
    logits = net(x, sel)
    nn.functional.cross_entropy(logits, y).backward()
    return [logits.detach()] + [p.grad for p in net.parameters()]


@pytest.mark.parametrize(
    "method,activations", [(m, "real") for m in BINARIZATIONS.names()] + [("xnor", "binary")]
)
def test_batched_binarization_gives_the_per_conv_network_bit_for_bit(
    method: str, activations: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logits and every gradient (None where a conv did not run) equal the per-conv path's."""
    torch.manual_seed(0)
    net = SuperNetwork(C=4, num_classes=10, layers=3, ops=ALL_OPS, k=2, spec=BinarySpec(method, activations))
    ref = copy.deepcopy(net)
    net.remove_op("normal", 0, "sep_conv_3x3")  # uneven op counts: the per-edge softmax path too
    ref.remove_op("normal", 0, "sep_conv_3x3")
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    sel = Selection(["dil_conv_3x3"] * 14, ["sep_conv_5x5"] * 14)
    got = [_step(net, x, y, None), _step(net, x, y, sel)]
    # The reference: no batching at all, every conv binarizes its own weight.
    no_batching = lambda self, every_conv_runs=True: contextlib.nullcontext()  # noqa: E731
    monkeypatch.setattr(supernet_module.BatchedBinarization, "bound", no_batching)
    want = [_step(ref, x, y, None), _step(ref, x, y, sel)]
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            assert (a is None) == (b is None)
            assert a is None or torch.equal(a, b)
    assert any(p is None for p in got[1][1:])  # the sub-network pass leaves ops without gradient


def test_op_probabilities_are_the_per_edge_softmax() -> None:
    net = tiny_net()
    with torch.no_grad():
        for t in CELL_TYPES:
            net.alphas[t].copy_(torch.randn_like(net.alphas[t]))

    def reference(t: str) -> list[torch.Tensor]:
        return [
            torch.softmax(net.alphas[t][e, [ALL_OPS.index(n) for n in names]], dim=-1)
            for e, names in enumerate(net.edge_ops[t])
        ]

    for removal in [None, ("normal", 2, "max_pool_3x3"), *(("reduce", e, "none") for e in range(14))]:
        if removal:
            net.remove_op(*removal)
        for t in CELL_TYPES:
            got, want = net.op_probabilities(t), reference(t)
            assert len(got) == len(want) == 14
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    # Gradients reach exactly the remaining entries of alpha.
    sum(p.sum() * (i + 1) for i, p in enumerate(net.op_probabilities("normal"))).backward()
    grad = net.alphas["normal"].grad
    assert grad[2, ALL_OPS.index("max_pool_3x3")] == 0 and grad[2].abs().sum() > 0


def test_cached_module_lists_follow_remove_op() -> None:
    net = tiny_net(method="pcnn")

    def check() -> None:
        arch = {id(p) for p in net.arch_parameters()}
        want = [(n, p) for n, p in net.named_parameters() if id(p) not in arch]
        got = list(net.named_weight_parameters())
        assert [n for n, _ in got] == [n for n, _ in want]
        assert all(a is b for (_, a), (_, b) in zip(got, want, strict=True))
        assert net.binary_convs() == [m for m in net.modules() if isinstance(m, BinaryConv2d)]

    check()
    net(torch.randn(2, 3, 16, 16))  # builds the batched groups
    n_convs = len(net.binary_convs())
    for e in range(num_edges(net.steps)):
        net.remove_op("normal", e, "dil_conv_5x5")
    check()
    assert len(net.binary_convs()) < n_convs
    net(torch.randn(2, 3, 16, 16))  # the batched groups are collected again, without the deleted convs
    assert {id(c) for g in net._batched.groups for c in g} <= {id(c) for c in net.binary_convs()}
