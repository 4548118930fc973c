"""Weight (and optional activation) binarization methods, chosen by name from ``BINARIZATIONS``.

Each method turns a latent real-valued weight tensor ``W`` into the tensor the convolution uses.
Sources: method.md section 4. ``sign`` here maps 0 to +1 so every binarized weight is really +-a.

============== =============================================== ==============================================
method          forward                                          gradient w.r.t. the latent weight
============== =============================================== ==============================================
``xnor``        a * sign(W), a = mean|W| over the whole tensor   dL/dW = g/n + a * g * 1{|W| <= 1}  (released
                                                                 BNAS code [C]; n = number of elements)
``xnor_channel`` a_c * sign(W_c), a_c = mean|W_c| per output     same form per output channel, n = elements of
                 channel (XNOR-Net, Rastegari et al. 2016) [D]   one filter
``pcnn``        a * sign(P o W), a = mean|W|, P learned          clipped STE 1{|P o W| <= 1} through sign,
                (Gu et al., AAAI 2019) [R]                        chain rule to W and P; plus the projection
                                                                 loss (lambda/2) * ||a*sign(P o W) - P o W
                                                                 - eta * dL/dW_hat||^2
``fp``          W (no binarization: the full-precision control)  identity
============== =============================================== ==============================================

Binary activations (``w1a1``, the journal extension [D]): sign(x) forward, clipped straight-through
gradient 1{|x| <= 1} backward (Bi-Real/XNOR-Net convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bnas.registry import Registry


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so the result takes exactly the values -1 and +1."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    """y = sign(x) (0 -> +1); dy/dx = 1{|x| <= 1} (clipped straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binary activation: sign forward, clipped straight-through gradient backward."""
    return _SignSTE.apply(x)


class _XnorWeight(torch.autograd.Function):
    """Forward a * sign(W) with a = mean|W| over ``dims``; backward g/n + a * g * 1{|W| <= 1}.

    This is the gradient of the released BNAS code [C]; ``dims`` = all dims gives one scale per layer,
    ``dims`` = (1, 2, 3) one scale per output channel.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        a = w.abs().mean(dim=dims, keepdim=True)
        n = 1
        for d in dims:
            n *= w.shape[d]
        ctx.save_for_backward(w, a)
        ctx.n = n
        return a * sign_pm1(w)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        w, a = ctx.saved_tensors
        grad = g / ctx.n + a * g * (w.abs() <= 1).to(g.dtype)
        return grad, None


class BinarizationMethod:
    """Base class: how a :class:`BinaryConv2d` turns its latent weight into the weight it uses."""

    name = "base"
    #: True when the method binarizes (False for the ``fp`` control): size accounting uses it.
    binary = True

    def init_module(self, conv: BinaryConv2d) -> None:
        """Create any extra parameters on the conv (e.g. PCNN's projection)."""

    def weight(self, conv: BinaryConv2d) -> torch.Tensor:
        raise NotImplementedError

    def scale_groups(self, conv: BinaryConv2d) -> int:
        """How many distinct scales a binarized weight has (1 per layer or 1 per output channel)."""
        return 1


BINARIZATIONS: Registry[type[BinarizationMethod]] = Registry("binarization method")


@BINARIZATIONS.register("xnor")
class Xnor(BinarizationMethod):
    """One scale per layer, a = mean|W| (released BNAS code [C])."""

    name = "xnor"

    def weight(self, conv: BinaryConv2d) -> torch.Tensor:
        return _XnorWeight.apply(conv.weight, tuple(range(conv.weight.dim())))


@BINARIZATIONS.register("xnor_channel")
class XnorChannel(BinarizationMethod):
    """One scale per output channel, a_c = mean|W_c| (original XNOR-Net) [D]."""

    name = "xnor_channel"

    def weight(self, conv: BinaryConv2d) -> torch.Tensor:
        return _XnorWeight.apply(conv.weight, tuple(range(1, conv.weight.dim())))

    def scale_groups(self, conv: BinaryConv2d) -> int:
        return conv.weight.shape[0]


@BINARIZATIONS.register("pcnn")
class Pcnn(BinarizationMethod):
    """Projection convolution (PCNN, Gu et al. AAAI 2019) with one projection per layer (J = 1).

    The projection P has shape (C_out, 1, kh, kw): one k x k plane per filter, duplicated along the
    input channels [D: method.md leaves the exact sharing open]. It starts at 1, so training starts
    from plain sign(W). Only W_hat = a * sign(P o W) is kept at inference.
    """

    name = "pcnn"

    def init_module(self, conv: BinaryConv2d) -> None:
        out_c, _, kh, kw = conv.weight.shape
        conv.projection = nn.Parameter(torch.ones(out_c, 1, kh, kw))
        # dL/dW_hat of the last backward pass, for the eta term of the projection loss.
        conv.register_buffer("last_grad", torch.zeros_like(conv.weight), persistent=False)

    def weight(self, conv: BinaryConv2d) -> torch.Tensor:
        proj = conv.projection * conv.weight  # P o W, P broadcast along input channels
        a = conv.weight.abs().mean()
        w_hat = a * sign_ste(proj)
        if torch.is_grad_enabled() and w_hat.requires_grad:
            if conv.pcnn_eta:
                w_hat.register_hook(lambda g: _store_grad(conv, g))
            # Kept for the projection loss of this training forward pass (see projection_loss).
            conv._proj_terms = (w_hat, proj)
        return w_hat


def _store_grad(conv: nn.Module, g: torch.Tensor) -> None:
    conv.last_grad.copy_(g.detach())


@BINARIZATIONS.register("fp")
class FullPrecision(BinarizationMethod):
    """No binarization: the full-precision control."""

    name = "fp"
    binary = False

    def weight(self, conv: BinaryConv2d) -> torch.Tensor:
        return conv.weight


@dataclass(frozen=True)
class BinarySpec:
    """What the operations need to know to build their binarized convolutions."""

    method: str = "xnor"
    activations: str = "real"  # "real" (w1a32, the paper) or "binary" (w1a1)
    pcnn_lambda: float = 1e-4
    pcnn_eta: float = 0.0

    @property
    def binary_activations(self) -> bool:
        return self.activations == "binary"

    @classmethod
    def from_config(cls, cfg) -> BinarySpec:  # cfg: bnas.config.BinarizationConfig
        BINARIZATIONS.get(cfg.method)  # fail early on unknown names
        return cls(cfg.method, cfg.activations, cfg.pcnn_lambda, cfg.pcnn_eta)


class BinaryConv2d(nn.Conv2d):
    """A convolution whose weight is binarized by a registered method on every forward pass.

    The latent weight ``self.weight`` stays real and is what the optimizer updates. With binary
    activations the input is binarized too (sign, clipped STE).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False,
                 spec: BinarySpec | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        spec = spec or BinarySpec()
        self.spec = spec
        self.method: BinarizationMethod = BINARIZATIONS.get(spec.method)()
        self.binary_input = spec.binary_activations and self.method.binary
        self.pcnn_eta = spec.pcnn_eta
        self.method.init_module(self)

    def binarized_weight(self) -> torch.Tensor:
        return self.method.weight(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binary_input:
            x = sign_ste(x)
        return F.conv2d(x, self.binarized_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binarization={self.method.name}"


def projection_loss(model: nn.Module, lam: float, eta: float = 0.0) -> torch.Tensor:
    """PCNN projection loss over every PCNN conv used in the last forward pass.

    L_P = (lambda / 2) * sum_l || W_hat_l - P_l o W_l - eta * dL/dW_hat_l ||^2   (Gu et al. 2019) [R]

    ``dL/dW_hat`` is taken from the previous backward pass (zero on the first step). Returns 0 when
    the model has no PCNN layer, so callers may add it unconditionally.
    """
    total = None
    for m in model.modules():
        terms = getattr(m, "_proj_terms", None)
        if terms is None:
            continue
        w_hat, proj = terms
        diff = w_hat - proj
        if eta:
            diff = diff - eta * m.last_grad
        val = diff.pow(2).sum()
        total = val if total is None else total + val
        m._proj_terms = None  # each forward pass contributes once
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def reset_projection_terms(model: nn.Module) -> None:
    """Forget the PCNN terms of earlier forward passes (e.g. an architecture step's, whose graph
    is already freed) so that :func:`projection_loss` sees only the coming forward pass."""
    for m in model.modules():
        if getattr(m, "_proj_terms", None) is not None:
            m._proj_terms = None
