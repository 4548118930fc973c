"""Binarization methods: forward values, gradients, sign(0), binary activations, projection loss."""

from __future__ import annotations

import pytest
import torch

from bnas.binarization import (
    BINARIZATIONS,
    BinaryConv2d,
    BinarySpec,
    projection_loss,
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
    w_hat, proj = conv._proj_terms
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
    from bnas.config import BinarizationConfig

    spec = BinarySpec.from_config(BinarizationConfig(method="pcnn", activations="binary", pcnn_lambda=0.1))
    assert (spec.method, spec.binary_activations, spec.pcnn_lambda) == ("pcnn", True, 0.1)
    with pytest.raises(UnknownNameError):
        BinarySpec.from_config(BinarizationConfig(method="nope"))
