"""The evaluation network for every reference genotype x binarization method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas.binarization import BINARIZATIONS, BinaryConv2d, BinarySpec
from bnas.eval_network import AuxiliaryHead, EvalNetwork, drop_path
from bnas.genotype import GENOTYPES, random_genotype

METHODS = BINARIZATIONS.names()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", GENOTYPES.names())
def test_shapes_for_every_reference_genotype(name: str, method: str) -> None:
    torch.manual_seed(0)
    net = EvalNetwork(
        GENOTYPES.get(name), C=4, num_classes=7, layers=3, auxiliary=True, spec=BinarySpec(method)
    )
    net.drop_path_prob = 0.2
    x = torch.randn(2, 3, 16, 16)
    logits, aux = net(x)
    assert logits.shape == (2, 7) and aux is not None and aux.shape == (2, 7)
    (logits.sum() + aux.sum()).backward()
    binary = [m for m in net.modules() if isinstance(m, BinaryConv2d)]
    assert binary and all(m.weight.grad is not None for m in binary)
    net.eval()
    logits, aux = net(x)
    assert logits.shape == (2, 7) and aux is None


def test_layout_reductions_and_full_precision_parts() -> None:
    net = EvalNetwork(GENOTYPES.get("bnas_xnor"), C=4, layers=6, spec=BinarySpec("xnor"))
    assert [c.reduction for c in net.cells] == [False, False, True, False, True, False]
    assert net.aux_index == 4
    # Stem, classifier, auxiliary head and the pre-processing after a reduction are full precision.
    for part in (
        net.stem,
        net.classifier,
        net.auxiliary_head,
        net.cells[3].preprocess0,
        net.cells[5].preprocess0,
    ):
        assert not [m for m in part.modules() if isinstance(m, BinaryConv2d)]
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("size", [32, 16, 12])
def test_input_sizes(size: int) -> None:
    net = EvalNetwork(random_genotype(0), C=4, layers=3, spec=BinarySpec("xnor"))
    logits, aux = net(torch.randn(2, 3, size, size))
    assert logits.shape == aux.shape == (2, 10)


def test_one_channel_inputs() -> None:
    net = EvalNetwork(GENOTYPES.get("pc_darts"), C=4, layers=3, in_channels=1, auxiliary=False)
    assert net(torch.randn(1, 1, 16, 16))[0].shape == (1, 10)


def test_too_few_layers_is_an_error() -> None:
    with pytest.raises(ValueError, match="layers must be >= 3"):
        EvalNetwork(GENOTYPES.get("bnas_xnor"), C=4, layers=2)


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    net = EvalNetwork(GENOTYPES.get("darts_v2"), C=4, layers=3, auxiliary=False).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)[0]
        net.drop_path_prob = 0.5
        assert torch.equal(net(x)[0], ref)
    y = torch.ones(64, 1, 1, 1)
    torch.manual_seed(1)
    dropped = drop_path(y, 0.5)
    assert set(dropped.flatten().tolist()) == {0.0, 2.0}
    assert drop_path(y, 0.0) is y


@pytest.mark.parametrize("method", ["xnor", "fp"])
def test_auxiliary_head_does_not_change_the_main_path(method: str) -> None:
    """In training the auxiliary head reads the cell output s1; it must not modify it in place.

    At 8x8 inputs the head sees 2x2 maps, skips its pooling, and an in-place ReLU would rectify s1
    for the classifier (and later cells).
    """
    torch.manual_seed(0)
    g = GENOTYPES.get("bnas_xnor")
    spec = BinarySpec(method, "binary")
    with_aux = EvalNetwork(g, C=4, layers=3, auxiliary=True, spec=spec)
    without = EvalNetwork(g, C=4, layers=3, auxiliary=False, spec=spec)
    without.load_state_dict({k: v for k, v in with_aux.state_dict().items() if not k.startswith("auxiliary")})
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(with_aux(x)[0], without(x)[0], atol=1e-6)


def _darts_aux_reference(head: AuxiliaryHead) -> nn.Sequential:
    """DARTS ``AuxiliaryHeadCIFAR`` layer by layer, with ``head``'s weights copied in."""
    C = head.features[1].in_channels
    ref = nn.Sequential(
        nn.ReLU(inplace=False),
        nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
        nn.Conv2d(C, 128, 1, bias=False),
        nn.BatchNorm2d(128),
        nn.ReLU(inplace=True),
        nn.Conv2d(128, 768, 2, bias=False),
        nn.BatchNorm2d(768),
        nn.ReLU(inplace=True),
        nn.Flatten(1),
        nn.Linear(768, head.classifier.out_features),
    )
    for ours, theirs in ((1, 2), (2, 3), (4, 5), (5, 6)):
        ref[theirs].load_state_dict(head.features[ours].state_dict())
    ref[9].load_state_dict(head.classifier.state_dict())
    return ref


@pytest.mark.parametrize("training", [True, False])
def test_auxiliary_head_is_darts_relu_then_pool(training: bool) -> None:
    """ReLU before the 5x5/3 average pooling (DARTS, PC-DARTS, released BNAS code), on 8x8 maps."""
    torch.manual_seed(0)
    head = AuxiliaryHead(C=16, num_classes=10)
    with torch.no_grad():  # non-trivial BN statistics and affine terms
        for bn in (head.features[2], head.features[5]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    ref = _darts_aux_reference(head)
    head.train(training)
    ref.train(training)
    x = torch.randn(4, 16, 8, 8)
    x_before = x.clone()
    with torch.no_grad():
        ours = head(x)
        theirs = ref(x)
        # The old order (pool, then ReLU) on the same weights.
        old = F.relu(F.avg_pool2d(x, 5, stride=3, padding=0, count_include_pad=False))
        old = head.classifier(head.features[1:](old).flatten(1))
    assert torch.equal(x, x_before)  # the input (the network's s1) is not modified
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(old, theirs, atol=1e-3)
