"""Binarization methods: forward values, gradients, sign(0), binary activations, projection loss."""

from __future__ import annotations

import pytest
import torch

from bnas.binarization import (
    BATCH_MAX_NUMEL,
    BINARIZATIONS,
    BatchedBinarization,
    BinaryConv2d,
    BinarySpec,
    binary_convs,
    projection_loss,
    reset_projection_terms,
    sign_pm1,
    sign_ste,
)
from bnas.registry import UnknownNameError

METHODS = BINARIZATIONS.names()
BINARY_METHODS = [m for m in METHODS if BINARIZATIONS.get(m).binary]


def _conv(
    method: str, c_in: int = 4, c_out: int = 6, k: int = 3, groups: int = 1, activations: str = "real"
) -> BinaryConv2d:
    torch.manual_seed(0)
    conv = BinaryConv2d(c_in, c_out, k, padding=k // 2, groups=groups, spec=BinarySpec(method, activations))
    if hasattr(conv, "projection"):  # a non-trivial P, so P o W differs from W
        with torch.no_grad():
            conv.projection.uniform_(-1.5, 1.5)
    return conv


def test_registry_holds_the_documented_methods() -> None:
    assert set(METHODS) == {"xnor", "xnor_channel", "pcnn", "fp"}
    assert BINARY_METHODS == ["xnor", "xnor_channel", "pcnn"]


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="xnor_channel"):
        BinaryConv2d(2, 2, 1, spec=BinarySpec("xnr"))


def test_sign_of_zero_is_plus_one() -> None:
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-12, 3.0])
    assert sign_pm1(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]
    assert sign_ste(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]


def test_zero_weights_binarize_to_plus_scale() -> None:
    conv = _conv("xnor")
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = -4.0
    w = conv.binarized_weight()
    a = 4.0 / conv.weight.numel()
    assert torch.allclose(w.unique(), torch.tensor([-a, a]))
    assert (w[0, 0, 0, 1] > 0).item()


@pytest.mark.parametrize("groups", [1, 4], ids=["dense", "depthwise"])
@pytest.mark.parametrize("method", BINARY_METHODS)
def test_two_values_per_scale_group(method: str, groups: int) -> None:
    conv = _conv(method, c_in=4, c_out=4 if groups > 1 else 6, groups=groups)
    w = conv.binarized_weight().detach()
    n_groups = conv.method.scale_groups(conv)
    assert n_groups == (w.shape[0] if method == "xnor_channel" else 1)
    for g in w.reshape(n_groups, -1) if n_groups > 1 else [w.flatten()]:
        vals = g.unique()
        assert len(vals) == 2 and torch.allclose(vals[0], -vals[1])
    if method == "xnor":
        assert torch.allclose(w.abs(), conv.weight.abs().mean().expand_as(w))
    elif method == "xnor_channel":
        assert torch.allclose(w.abs(), conv.weight.abs().mean(dim=(1, 2, 3), keepdim=True).expand_as(w))
    else:  # pcnn: +-a with a = mean|W|, signs from P o W
        assert torch.allclose(w.abs(), conv.weight.abs().mean().expand_as(w))
        assert torch.equal(w > 0, conv.projection * conv.weight >= 0)


def test_fp_is_the_identity() -> None:
    conv = _conv("fp")
    assert torch.equal(conv.binarized_weight(), conv.weight)
    assert not conv.method.binary


@pytest.mark.parametrize("method,dims", [("xnor", (0, 1, 2, 3)), ("xnor_channel", (1, 2, 3))])
def test_xnor_backward_is_the_released_codes_gradient(method: str, dims: tuple[int, ...]) -> None:
    """dL/dW = g/n + a * g * 1{|W| <= 1}, g = dL/dW_hat, n = elements per scale group."""
    conv = _conv(method)
    with torch.no_grad():
        conv.weight.mul_(8.0)  # some |W| > 1, so the indicator matters
    g = torch.randn_like(conv.weight)
    (conv.binarized_weight() * g).sum().backward()
    w = conv.weight.detach()
    n = 1
    for d in dims:
        n *= w.shape[d]
    a = w.abs().mean(dim=dims, keepdim=True)
    expected = g / n + a * g * (w.abs() <= 1).float()
    assert (w.abs() > 1).any() and (w.abs() <= 1).any()
    assert torch.allclose(conv.weight.grad, expected, atol=1e-7)


def test_pcnn_gradients_reach_weight_and_projection() -> None:
    conv = _conv("pcnn")
    x = torch.randn(2, 4, 5, 5)
    conv(x).square().mean().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv.projection.grad is not None and conv.projection.grad.abs().sum() > 0


def test_pcnn_ste_is_clipped() -> None:
    """Through sign the gradient is 1{|P o W| <= 1}: none reaches P where |P o W| > 1."""
    conv = _conv("pcnn")
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.weight[0].fill_(5.0)  # filter 0: |P o W| > 1 wherever |P| > 0.2
        conv.projection.fill_(1.0)
    (conv.binarized_weight() * torch.randn(conv.weight.shape)).sum().backward()
    assert conv.projection.grad[0].abs().sum() == 0
    assert conv.projection.grad[1:].abs().sum() > 0


def test_projection_loss_matches_its_formula_and_is_consumed() -> None:
    lam = 0.3
    conv = _conv("pcnn")
    conv(torch.randn(1, 4, 5, 5))
    w_hat = conv.binarized_weight().detach()
    proj = (conv.projection * conv.weight).detach()
    conv(torch.randn(1, 4, 5, 5))  # the loss covers the last forward pass only
    loss = projection_loss(conv, lam)
    assert torch.allclose(loss, 0.5 * lam * (w_hat - proj).pow(2).sum())
    loss.backward()
    assert conv.projection.grad.abs().sum() > 0
    assert projection_loss(conv, lam).item() == 0.0  # consumed: no double counting


def test_projection_loss_eta_uses_the_last_gradient() -> None:
    conv = BinaryConv2d(2, 2, 3, padding=1, spec=BinarySpec("pcnn", pcnn_eta=0.5))
    x = torch.randn(1, 2, 4, 4)
    conv(x).sum().backward()  # stores dL/dW_hat
    assert conv.last_grad.abs().sum() > 0
    out = conv(x)
    w_hat, proj, _ = conv._proj_terms
    expected = 0.5 * 1.0 * (w_hat - proj - 0.5 * conv.last_grad).pow(2).sum()
    assert torch.allclose(projection_loss(conv, 1.0, 0.5), expected)
    del out


@pytest.mark.parametrize("method", ["xnor", "fp"])
def test_projection_loss_is_zero_without_pcnn(method: str) -> None:
    conv = _conv(method)
    conv(torch.randn(1, 4, 5, 5))
    assert projection_loss(conv, 1.0).item() == 0.0


@pytest.mark.parametrize("method", BINARY_METHODS)
def test_w1a1_binarizes_the_input(method: str) -> None:
    conv = _conv(method, activations="binary")
    assert conv.binary_input
    x = torch.randn(2, 4, 5, 5)
    x[0, 0, 0, 0] = 0.0
    y = conv(x)
    ref = torch.nn.functional.conv2d(sign_pm1(x), conv.binarized_weight(), padding=1)
    assert torch.allclose(y, ref, atol=1e-6)
    # The input gradient is the clipped straight-through estimate 1{|x| <= 1}.
    x = (torch.randn(2, 4, 5, 5) * 2).requires_grad_()
    conv(x).sum().backward()
    assert torch.equal(x.grad[x.detach().abs() > 1], torch.zeros_like(x.grad[x.detach().abs() > 1]))
    assert x.grad[x.detach().abs() <= 1].abs().sum() > 0


def test_fp_ignores_binary_activations() -> None:
    conv = _conv("fp", activations="binary")
    assert not conv.binary_input
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(conv(x), torch.nn.functional.conv2d(x, conv.weight, padding=1))


def test_spec_from_config() -> None:
    from bnas.config import BinarizationConfig, ConfigError

    spec = BinarySpec.from_config(BinarizationConfig(method="pcnn", activations="binary", pcnn_lambda=0.1))
    assert (spec.method, spec.binary_activations, spec.pcnn_lambda) == ("pcnn", True, 0.1)
    with pytest.raises(ConfigError, match="unknown name 'nope'"):  # the section refuses it when built
        BinarySpec.from_config(BinarizationConfig(method="nope"))


# ---------------------------------------------------------------- reference formulas, batched path
def _reference(method: str, w: torch.Tensor, p: torch.Tensor | None, g: torch.Tensor):
    """Plain formulas of method.md section 4: (W_b, dL/dW, dL/dP) for the upstream gradient g."""
    sign = lambda t: torch.where(t >= 0, 1.0, -1.0)  # noqa: E731  sign(0) = +1
    if method == "fp":
        return w, g, None
    if method in ("xnor", "xnor_channel"):
        dims = (0, 1, 2, 3) if method == "xnor" else (1, 2, 3)
        n = w[0].numel() if method == "xnor_channel" else w.numel()
        a = w.abs().mean(dim=dims, keepdim=True)
        return a * sign(w), g / n + a * g * (w.abs() <= 1).float(), None
    # PCNN: W_hat = a sign(P o W), a = mean|W|; clipped STE 1{|P o W| <= 1} through sign.
    proj = p * w
    a = w.abs().mean()
    ste = g * a * (proj.abs() <= 1).float()
    d_a = (g * sign(proj)).sum()
    d_w = d_a * torch.sign(w) / w.numel() + ste * p
    d_p = (ste * w).sum(dim=1, keepdim=True)
    return a * sign(proj), d_w, d_p


def _convs(method: str, n: int, activations: str = "real", c_out: int = 6) -> list[BinaryConv2d]:
    torch.manual_seed(1)
    convs = [BinaryConv2d(4, c_out, 3, padding=1, spec=BinarySpec(method, activations)) for _ in range(n)]
    with torch.no_grad():
        for c in convs:
            c.weight.mul_(6.0)  # some |W| > 1, so the clipping matters
            c.weight[0, 0, 0, 0] = 0.0  # sign(0) = +1
            if hasattr(c, "projection"):
                c.projection.uniform_(-1.5, 1.5)
    return convs


def _run(convs: list[BinaryConv2d], x: torch.Tensor, g: torch.Tensor, batched: bool) -> list[torch.Tensor]:
    """Forward every conv, backward sum(y * g); returns outputs, weight/projection grads, input grad."""
    x = x.clone().requires_grad_()
    for c in convs:
        c.zero_grad(set_to_none=True)
    if batched:
        with BatchedBinarization(torch.nn.ModuleList(convs)).bound(every_conv_runs=True):
            ys = [c(x) for c in convs]
    else:
        ys = [c(x) for c in convs]
    sum((y * g).sum() for y in ys).backward()
    out = [y.detach() for y in ys] + [c.weight.grad for c in convs] + [x.grad]
    return out + [c.projection.grad for c in convs if hasattr(c, "projection")]


@pytest.mark.parametrize("activations", ["real", "binary"])
@pytest.mark.parametrize("method", METHODS)
def test_batched_binarization_is_the_per_conv_path_bit_for_bit(method: str, activations: str) -> None:
    convs = _convs(method, 3, activations)
    x, g = torch.randn(2, 4, 5, 5) * 2, torch.randn(2, 6, 5, 5)
    per_conv = _run(convs, x, g, batched=False)
    batched = _run(convs, x, g, batched=True)
    assert len(per_conv) == len(batched)
    for a, b in zip(per_conv, batched, strict=True):
        assert torch.equal(a, b)
    assert all(c._batched_weight is None for c in convs)  # nothing left bound after the block


@pytest.mark.parametrize("batched", [False, True], ids=["per_conv", "batched"])
@pytest.mark.parametrize("method", METHODS)
def test_weights_and_gradients_follow_the_reference_formulas(method: str, batched: bool) -> None:
    convs = _convs(method, 2)
    g = [torch.randn_like(c.weight) for c in convs]
    if batched and BINARIZATIONS.get(method).batchable:
        wb = convs[0].method.weight_batch(convs)
    else:
        wb = [c.binarized_weight() for c in convs]
    sum((w * gi).sum() for w, gi in zip(wb, g, strict=True)).backward()
    for c, w, gi in zip(convs, wb, g, strict=True):
        p = c.projection.detach() if hasattr(c, "projection") else None
        ref_w, ref_dw, ref_dp = _reference(method, c.weight.detach(), p, gi)
        assert torch.allclose(w, ref_w, rtol=1e-6, atol=0)
        assert torch.allclose(c.weight.grad, ref_dw, rtol=1e-6, atol=1e-7)
        if ref_dp is not None:
            assert torch.allclose(c.projection.grad, ref_dp, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["xnor", "xnor_channel"])
def test_batched_xnor_gives_no_gradient_to_convs_that_did_not_run(method: str) -> None:
    convs = _convs(method, 3)
    with BatchedBinarization(torch.nn.ModuleList(convs)).bound():
        convs[1](torch.randn(1, 4, 5, 5)).sum().backward()
    assert convs[0].weight.grad is None and convs[2].weight.grad is None
    assert convs[1].weight.grad is not None


def test_batched_pcnn_needs_every_conv_to_run() -> None:
    convs = _convs("pcnn", 3)
    batched = BatchedBinarization(torch.nn.ModuleList(convs))
    with batched.bound():  # by default (e.g. a sub-network pass): per-conv path, terms per conv
        convs[1](torch.randn(1, 4, 5, 5))
        assert all(c._batched_weight is None for c in convs)
    assert [c._proj_terms is not None for c in convs] == [False, True, False]
    reset_projection_terms(torch.nn.ModuleList(convs))
    assert all(c._proj_terms is None for c in convs)
    with batched.bound(every_conv_runs=True):  # one stacked term set on the group's first conv
        assert all(c._batched_weight is not None for c in convs)
    assert convs[0]._proj_terms[0].shape == (3, *convs[0].weight.shape)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_batched_projection_loss_and_stored_gradient_match_per_conv(eta: float) -> None:
    results = []
    for batched in (False, True):
        convs = _convs("pcnn", 3)
        for c in convs:
            c.pcnn_eta = eta
        model = torch.nn.ModuleList(convs)
        x = torch.randn(2, 4, 5, 5)
        losses = []
        for _ in range(2):  # the second loss uses dL/dW_hat stored by the first backward
            if batched:
                with BatchedBinarization(model).bound(every_conv_runs=True):
                    out = sum(c(x).square().sum() for c in convs)
            else:
                out = sum(c(x).square().sum() for c in convs)
            loss = projection_loss(model, 0.3, eta)
            (out + loss).backward()
            losses.append(loss.detach())
        results.append((losses, [c.last_grad.clone() for c in convs], [c.weight.grad for c in convs]))
    (l0, lg0, g0), (l1, lg1, g1) = results
    for a, b in zip(l0, l1, strict=True):
        assert torch.allclose(a, b, rtol=1e-6)  # summed per group: equal to float rounding
    for a, b in zip(lg0 + g0, lg1 + g1, strict=True):
        assert torch.equal(a, b)
    assert (lg1[0].abs().sum() > 0) == bool(eta)


def test_batched_binarization_groups_and_misuse() -> None:
    torch.manual_seed(0)
    spec = BinarySpec("xnor")
    convs = [BinaryConv2d(4, 6, 3, spec=spec) for _ in range(2)]
    convs += [BinaryConv2d(4, 4, 1, spec=spec)]  # a shape of its own: nothing to batch it with
    convs += [BinaryConv2d(4, 4, 1, spec=BinarySpec("xnor_channel"))]  # another method: another group
    convs += [BinaryConv2d(4, 4, 1, spec=BinarySpec("fp")) for _ in range(2)]  # fp: no batched form
    side = int(BATCH_MAX_NUMEL**0.5) + 1
    convs += [BinaryConv2d(side, side, 1, spec=spec) for _ in range(2)]  # too big to batch bit for bit
    model = torch.nn.ModuleList(convs)
    assert binary_convs(model) == convs
    assert BatchedBinarization(model).groups == [convs[:2]]
    with pytest.raises(NotImplementedError, match="fp"):
        convs[4].method.weight_batch(convs[4:6])
    # An error inside the block leaves no weight bound to a conv.
    batched = BatchedBinarization(model)
    with pytest.raises(RuntimeError, match="boom"), batched.bound():
        assert convs[0]._batched_weight is not None
        raise RuntimeError("boom")
    assert all(c._batched_weight is None for c in convs)
    # Outside a bound block a conv binarizes its own weight.
    assert torch.equal(convs[0].binarized_weight(), convs[0].method.weight(convs[0]))
