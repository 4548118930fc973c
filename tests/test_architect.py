"""The architecture step: Adam on alpha/beta only, weights untouched, frozen in the warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnas.architect import ARCH_BETA2, Architect
from bnas.binarization import BinarySpec
from bnas.config import config_from_dict
from bnas.search import Search, run_search
from bnas.supernet import SuperNetwork

OPS = ["skip_connect", "max_pool_3x3", "sep_conv_3x3"]


def _net(method: str = "xnor") -> SuperNetwork:
    torch.manual_seed(0)
    return SuperNetwork(C=4, num_classes=10, layers=3, ops=OPS, k=2, spec=BinarySpec(method))


def _architect(net: SuperNetwork, warmup: int = 0) -> Architect:
    return Architect(net, lr=0.01, beta1=0.5, weight_decay=1e-3, warmup_epochs=warmup)


def test_adam_holds_alpha_and_beta_only() -> None:
    net = _net()
    arch = _architect(net)
    held = [id(p) for g in arch.optimizer.param_groups for p in g["params"]]
    assert held == [id(p) for p in net.arch_parameters()]
    assert not set(held) & {id(p) for p in net.weight_parameters()}
    group = arch.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.01, (0.5, ARCH_BETA2), 1e-3)


@pytest.mark.parametrize("method", ["xnor", "pcnn", "fp"])
def test_an_arch_step_moves_alpha_beta_and_leaves_the_weights_alone(method: str) -> None:
    net = _net(method)
    arch = _architect(net)
    weights = {n: p.detach().clone() for n, p in net.named_weight_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    alphas = [p.detach().clone() for p in net.arch_parameters()]
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    loss = arch.step(x, y)
    assert loss.requires_grad is False and torch.isfinite(loss)
    for n, p in net.named_weight_parameters():
        assert torch.equal(p, weights[n]), n
        assert p.grad is None, n  # autograd.grad: the weights' gradients are never written
    assert all(not torch.equal(a, p) for a, p in zip(alphas, net.arch_parameters(), strict=True))
    # Batch-norm running statistics do move (the network runs in training mode), as in DARTS.
    assert any(not torch.equal(b, buffers[n]) for n, b in net.named_buffers() if "running" in n)


def test_state_round_trip_continues_identically() -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    a_net, b_net = _net(), _net()
    a, b = _architect(a_net), _architect(b_net)
    a.step(x, y)
    b.step(x, y)
    c_net = _net()
    c_net.load_state_dict(b_net.state_dict())
    c = _architect(c_net)
    c.load_state_dict(b.state_dict())
    a.step(x, y)
    c.step(x, y)
    assert all(
        torch.equal(p, q) for p, q in zip(a_net.arch_parameters(), c_net.arch_parameters(), strict=True)
    )


@pytest.mark.parametrize("warmup", [0, 1, 2])
def test_frozen_in_the_first_stages_warmup_only(warmup: int) -> None:
    arch = _architect(_net(), warmup)
    assert [arch.frozen(0, e) for e in range(3)] == [e < warmup for e in range(3)]
    assert not any(arch.frozen(1, e) for e in range(3))


def test_from_config_reads_its_settings() -> None:
    cfg = config_from_dict(
        {"search": {"arch_lr": 0.003, "arch_beta1": 0.9, "arch_weight_decay": 0.0},
         "reduction": {"warmup_epochs": 2, "epochs_per_stage": 3}}
    )  # fmt: skip
    arch = Architect.from_config(_net(), cfg)
    group = arch.optimizer.param_groups[0]
    assert (group["lr"], group["betas"][0], group["weight_decay"], arch.warmup_epochs) == (0.003, 0.9, 0.0, 2)


def test_search_keeps_alpha_beta_fixed_during_the_warmup(fake_cifar_root: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "seed": 0,
            "device": "cpu",
            "threads": 1,
            "data": {"root": str(fake_cifar_root), "image_size": 8, "train_subset": 64},
            "search": {
                "layers": 3,
                "init_channels": 4,
                "batch_size": 16,
                "ops": OPS,
                "max_batches_per_epoch": 2,
                "checkpoint_every": 1,
            },
            "reduction": {"strategy": "alpha", "epochs_per_stage": 2, "warmup_epochs": 1},
        }
    )
    initial = Search(cfg, tmp_path / "fresh", log=None).state.net.arch_parameters()
    initial = [p.detach().clone() for p in initial]
    seen: list[list[torch.Tensor]] = []

    def after_epoch(m: dict) -> None:
        net = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["net"]
        seen.append([net[k] for k in ("alphas.normal", "alphas.reduce", "betas.normal", "betas.reduce")])

    res = run_search(cfg, tmp_path / "run", on_epoch=after_epoch, log=None)
    assert [m["warmup"] for m in res.metrics] == [True, False, False, False]
    assert all(torch.equal(a, b) for a, b in zip(initial, seen[0], strict=True))  # warm-up: frozen
    assert all(not torch.equal(a, b) for a, b in zip(initial, seen[1], strict=True))  # then trained
