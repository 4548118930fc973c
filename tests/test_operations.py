"""Every candidate operation x stride x binarization method: shapes, precision placement, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnas.binarization import BINARIZATIONS, BinaryConv2d, BinarySpec
from bnas.config import ALL_OPS
from bnas.operations import OPS, FactorizedReduce, ReLUConvBN, make_op
from bnas.registry import UnknownNameError

METHODS = BINARIZATIONS.names()
C, H = 4, 8
CONV_OPS = {"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"}


def _binary_convs(m: nn.Module) -> list[BinaryConv2d]:
    return [x for x in m.modules() if isinstance(x, BinaryConv2d)]


def test_registry_is_the_search_space() -> None:
    assert OPS.names() == ALL_OPS and len(ALL_OPS) == 8


def test_unknown_op_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="sep_conv_3x3"):
        make_op("conv_7x7", C, 1, True, BinarySpec())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", ALL_OPS)
def test_op_shape_precision_and_gradients(name: str, stride: int, method: str) -> None:
    torch.manual_seed(0)
    op = make_op(name, C, stride, True, BinarySpec(method))
    x = torch.randn(2, C, H, H, requires_grad=True)
    y = op(x)
    assert y.shape == (2, C, H // stride, H // stride)

    convs = _binary_convs(op)
    # Binary weights exactly where method.md section 3 puts them: the conv ops and the stride-2 skip.
    has_convs = name in CONV_OPS or (name == "skip_connect" and stride == 2)
    assert bool(convs) == has_convs
    assert not [m for m in op.modules() if type(m) is nn.Conv2d]  # no full-precision conv inside ops
    for conv in convs:
        assert conv.method.name == method

    if name == "none":
        assert torch.count_nonzero(y) == 0
        return
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for conv in convs:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0, (
            "latent weight gets no gradient"
        )
        if method == "pcnn":
            assert conv.projection.grad is not None and conv.projection.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(CONV_OPS))
def test_w1a1_ops_drop_the_relu_and_binarize_inputs(name: str) -> None:
    op = make_op(name, C, 1, True, BinarySpec("xnor", "binary"))
    assert not [m for m in op.modules() if isinstance(m, nn.ReLU)]
    assert all(conv.binary_input for conv in _binary_convs(op))
    x = torch.randn(2, C, H, H, requires_grad=True)
    op(x).sum().backward()
    assert x.grad is not None


def test_dil_conv_is_dilated_depthwise_then_pointwise() -> None:
    op = make_op("dil_conv_5x5", C, 2, True, BinarySpec())
    dw, pw = _binary_convs(op)
    assert (dw.groups, dw.dilation, dw.kernel_size, dw.stride) == (C, (2, 2), (5, 5), (2, 2))
    assert (pw.groups, pw.kernel_size) == (1, (1, 1))


def test_sep_conv_strides_only_in_its_first_block() -> None:
    op = make_op("sep_conv_3x3", C, 2, True, BinarySpec())
    strides = [c.stride for c in _binary_convs(op)]
    assert strides == [(2, 2), (1, 1), (1, 1), (1, 1)]


def test_avg_pool_excludes_padding() -> None:
    op = make_op("avg_pool_3x3", C, 1, False, BinarySpec())
    y = op[0](torch.ones(1, C, H, H))
    assert torch.allclose(y, torch.ones_like(y))


def test_preprocessing_precision() -> None:
    """ReLUConvBN is binary; the factorized reduce after a reduction cell is full precision."""
    assert _binary_convs(ReLUConvBN(4, 6, 1, 1, 0, spec=BinarySpec("xnor")))
    fr = FactorizedReduce(4, 6, spec=None)
    assert not _binary_convs(fr) and len([m for m in fr.modules() if type(m) is nn.Conv2d]) == 2
    assert fr(torch.randn(1, 4, 7, 7)).shape == (1, 6, 4, 4)  # odd sizes are padded back


def test_factorized_reduce_needs_even_channels() -> None:
    with pytest.raises(ValueError, match="even"):
        FactorizedReduce(4, 5)
