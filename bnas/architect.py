"""The architecture step of the search: first-order DARTS on alpha and beta (method.md section 5).

Sources: DARTS (Liu et al., ICLR 2019) first-order approximation, as used by PC-DARTS (Xu et al.,
ICLR 2020) and BNAS (Chen et al., AAAI 2020). Per training batch, before the weight step::

    alpha, beta <- Adam step on  d CE(net(x_val; w, alpha, beta), y_val) / d(alpha, beta)

with the weights ``w`` held fixed (no unrolled second-order term). Adam's settings come from
``search.arch_lr``, ``search.arch_beta1`` (beta2 = 0.999 [C]) and ``search.arch_weight_decay``. During
the first ``reduction.warmup_epochs`` epochs of the first stage alpha and beta are frozen (PC-DARTS
trains the weights alone for its first 15 epochs) and no validation batch is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bnas.config import ExperimentConfig
from bnas.supernet import SuperNetwork

#: Adam's second-moment decay for alpha/beta (DARTS / PC-DARTS ``betas=(0.5, 0.999)``) [C].
ARCH_BETA2 = 0.999


class Architect:
    """Owns alpha/beta's Adam and takes the first-order architecture step on validation batches."""

    def __init__(
        self,
        net: SuperNetwork,
        *,
        lr: float,
        beta1: float,
        weight_decay: float,
        warmup_epochs: int = 0,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.net = net
        # How the step runs the network: ``net`` itself, or the run's fast path (bnas.accel).
        self.forward = forward or net
        self.warmup_epochs = warmup_epochs
        self.optimizer = torch.optim.Adam(
            net.arch_parameters(), lr=lr, betas=(beta1, ARCH_BETA2), weight_decay=weight_decay
        )

    @classmethod
    def from_config(
        cls,
        net: SuperNetwork,
        cfg: ExperimentConfig,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Architect:
        """From ``search.arch_lr``, ``arch_beta1``, ``arch_weight_decay`` and ``reduction.warmup_epochs``;
        ``forward(x)`` runs the network (default: ``net`` itself)."""
        sc = cfg.search
        return cls(
            net,
            lr=sc.arch_lr,
            beta1=sc.arch_beta1,
            weight_decay=sc.arch_weight_decay,
            warmup_epochs=cfg.reduction.warmup_epochs,
            forward=forward,
        )

    def frozen(self, stage: int, epoch_in_stage: int) -> bool:
        """True in the warm-up: the first ``warmup_epochs`` epochs of the first stage (0-based)."""
        return stage == 0 and epoch_in_stage < self.warmup_epochs

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One Adam step on alpha and beta minimising CE on the batch ``(x, y)``; returns that loss.

        Gradients are taken with ``torch.autograd.grad`` with respect to alpha/beta only, so the
        weights' ``.grad`` are neither written nor read. The loss comes back as a detached tensor
        (no ``.item()``: on CUDA that would wait for the GPU on every batch).
        """
        arch = self.net.arch_parameters()
        loss = F.cross_entropy(self.forward(x), y)
        grads = torch.autograd.grad(loss, arch)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(arch, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
