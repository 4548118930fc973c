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

Speed: a conv binarizes its own weight on each forward pass; :class:`BatchedBinarization` does it for
all same-shaped convs of a network at once (the search super-network uses it), with the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bnas.registry import Registry

if TYPE_CHECKING:  # annotations only: bnas.config imports this module (BINARIZATIONS), not the reverse
    from bnas.config import BinarizationConfig


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so the result takes exactly the values -1 and +1."""
    # Scalar branches: one comparison and one select, no +-1 tensors to allocate first. ``where`` with
    # two Python scalars gives the default dtype; the cast back is exact (+-1) and free for float32.
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SignSTE(torch.autograd.Function):
    """y = sign(x) (0 -> +1); dy/dx = 1{|x| <= 1} (clipped straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # float * bool promotes the mask to 0/1 inside the kernel: the same values as a cast mask.
        return g * (x.abs() <= 1)


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
        return _scaled_sign(w, a)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        w, a = ctx.saved_tensors
        return _xnor_grad(g, w, a, ctx.n), None


def _scaled_sign(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """a * sign(W) with sign(0) = +1, as one select: a * (+-1) is exactly +-a, so the bits are equal."""
    return torch.where(w >= 0, a, -a)


def _xnor_grad(g: torch.Tensor, w: torch.Tensor, a: torch.Tensor, n: int) -> torch.Tensor:
    """dL/dW = g/n + a * g * 1{|W| <= 1} (released BNAS code [C]), the mask multiplied as bool."""
    return g / n + a * g * (w.abs() <= 1)


class _XnorWeightBatch(torch.autograd.Function):
    """:class:`_XnorWeight` for G latent weights of one shape at once, stacked along a new dim 0.

    ``first_dim`` 1 reduces over all dims of each weight (one scale per weight, ``xnor``), 2 over all
    but the output channel (one scale per filter, ``xnor_channel``). Returns the G binarized weights
    as views of one tensor. Elementwise the maths is :class:`_XnorWeight`'s; a weight whose output got
    no gradient (its conv did not run) gets None, as it would if it had not been binarized at all.
    """

    @staticmethod
    def forward(ctx, first_dim: int, *ws: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ctx.set_materialize_grads(False)  # None for unused outputs, so they can give None back
        w = torch.stack(ws)
        a = w.abs().mean(dim=tuple(range(first_dim, w.dim())), keepdim=True)
        ctx.save_for_backward(w, a)
        ctx.n = math.prod(w.shape[first_dim:])
        return _scaled_sign(w, a).unbind(0)

    @staticmethod
    def backward(ctx, *gs: torch.Tensor | None):  # type: ignore[override]
        w, a = ctx.saved_tensors
        used = [g is not None for g in gs]
        if not any(used):
            return (None,) * (1 + len(gs))
        g = torch.stack([gi if gi is not None else w.new_zeros(w.shape[1:]) for gi in gs])
        grads = _xnor_grad(g, w, a, ctx.n).unbind(0)
        return (None, *(gr if u else None for gr, u in zip(grads, used, strict=True)))


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

    #: True when :meth:`weight_batch` is implemented (see :class:`BatchedBinarization`).
    batchable = False
    #: True when the batched form is exact only if every conv of the group runs in the pass.
    batch_needs_every_conv = False

    def weight_batch(self, convs: list[BinaryConv2d]) -> list[torch.Tensor]:
        """``[self.weight(c) for c in convs]`` for convs of this method with equal weight shapes, in
        a few batched ops; same values and gradients (see :class:`BatchedBinarization`)."""
        raise NotImplementedError(f"{self.name} has no batched binarization")


BINARIZATIONS: Registry[type[BinarizationMethod]] = Registry("binarization method")


@BINARIZATIONS.register("xnor")
class Xnor(BinarizationMethod):
    """One scale per layer, a = mean|W| (released BNAS code [C])."""

    name = "xnor"

    def weight(self, conv: BinaryConv2d) -> torch.Tensor:
        return _XnorWeight.apply(conv.weight, tuple(range(conv.weight.dim())))

    batchable = True

    def weight_batch(self, convs: list[BinaryConv2d]) -> list[torch.Tensor]:
        return list(_XnorWeightBatch.apply(1, *[c.weight for c in convs]))


@BINARIZATIONS.register("xnor_channel")
class XnorChannel(BinarizationMethod):
    """One scale per output channel, a_c = mean|W_c| (original XNOR-Net) [D]."""

    name = "xnor_channel"

    def weight(self, conv: BinaryConv2d) -> torch.Tensor:
        return _XnorWeight.apply(conv.weight, tuple(range(1, conv.weight.dim())))

    batchable = True

    def weight_batch(self, convs: list[BinaryConv2d]) -> list[torch.Tensor]:
        return list(_XnorWeightBatch.apply(2, *[c.weight for c in convs]))

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
                w_hat.register_hook(lambda g: _store_grads([conv], g.unsqueeze(0)))
            # Kept for the projection loss of this training forward pass (see projection_loss).
            conv._proj_terms = (w_hat, proj, conv.last_grad)
        return w_hat

    batchable = True
    # Its batched form puts every conv of a group into the projection loss: only for passes that
    # run every conv, as the per-conv path adds only the convs that ran.
    batch_needs_every_conv = True

    def weight_batch(self, convs: list[BinaryConv2d]) -> list[torch.Tensor]:
        """:meth:`weight` on the stacked weights and projections (G, C_out, C_in, kh, kw): the same
        elementwise maths, a = mean|W| per weight; the group's loss terms are kept on its first conv."""
        w = torch.stack([c.weight for c in convs])
        proj = torch.stack([c.projection for c in convs]) * w
        a = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        w_hat = a * sign_ste(proj)
        if torch.is_grad_enabled() and w_hat.requires_grad:
            last = None
            if convs[0].pcnn_eta:
                w_hat.register_hook(lambda g: _store_grads(convs, g))
                last = torch.stack([c.last_grad for c in convs])
            convs[0]._proj_terms = (w_hat, proj, last)
        return list(w_hat.unbind(0))


def _store_grads(convs: list[BinaryConv2d], g: torch.Tensor) -> None:
    """Keep dL/dW_hat (row i of ``g`` for ``convs[i]``) for the eta term of the next projection loss."""
    for conv, gi in zip(convs, g.detach().unbind(0), strict=True):
        conv.last_grad.copy_(gi)


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
    def from_config(cls, cfg: BinarizationConfig) -> BinarySpec:
        """The spec of a validated configuration section (its method name is a registered one)."""
        return cls(cfg.method, cfg.activations, cfg.pcnn_lambda, cfg.pcnn_eta)


class BinaryConv2d(nn.Conv2d):
    """A convolution whose weight is binarized by a registered method on every forward pass.

    The latent weight ``self.weight`` stays real and is what the optimizer updates. With binary
    activations the input is binarized too (sign, clipped STE).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        spec: BinarySpec | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        spec = spec or BinarySpec()
        self.spec = spec
        self.method: BinarizationMethod = BINARIZATIONS.get(spec.method)()
        self.binary_input = spec.binary_activations and self.method.binary
        self.pcnn_eta = spec.pcnn_eta
        self.method.init_module(self)

    #: The weight binarized for the current forward pass by a :class:`BatchedBinarization`, if any.
    _batched_weight: torch.Tensor | None = None
    #: PCNN: (W_hat, P o W, dL/dW_hat of the last backward or None) of the last training forward pass.
    _proj_terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def binarized_weight(self) -> torch.Tensor:
        return self.method.weight(self)

    def current_weight(self) -> torch.Tensor:
        """The weight this pass uses: bound by a :class:`BatchedBinarization`, else binarized now."""
        w = self._batched_weight
        return self.method.weight(self) if w is None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binary_input:
            x = sign_ste(x)
        return F.conv2d(
            x, self.current_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binarization={self.method.name}"


def binary_convs(model: nn.Module) -> list[BinaryConv2d]:
    """The :class:`BinaryConv2d` modules of ``model`` in ``modules()`` order. A model that keeps this
    list (``model.binary_convs()``, e.g. the search super-network, ~3600 modules) is asked for it
    instead of walking its modules on every training step."""
    own = getattr(model, "binary_convs", None)
    if callable(own) and not isinstance(own, nn.Module):
        return own()
    return [m for m in model.modules() if isinstance(m, BinaryConv2d)]


#: Largest weight (elements) that :class:`BatchedBinarization` stacks [D]. Up to ATen's parallel grain
#: size (32768) a full reduction is never split across threads, so mean|W| of one weight and the
#: per-row mean of the stacked weights take the same bits on CPU; bigger weights keep the per-conv
#: path (where the per-op overhead is small against the arithmetic anyway).
BATCH_MAX_NUMEL = 32768


class BatchedBinarization:
    """Binarize the weights of every :class:`BinaryConv2d` of a module in one batched op per group.

    Per conv, XNOR costs a handful of tiny ops forward and backward (|W|, mean, sign and scale, the
    custom backward). A search super-network has ~900 binary convs of a few dozen weights each, so that
    per-op overhead, not arithmetic, made 15-25 % of a CPU training step. Here the latent weights of
    the convs with the same method and weight shape are stacked and binarized together (17 groups in
    the 5-cell search network), with the values and gradients of the per-conv path: bit for bit on CPU
    (see :data:`BATCH_MAX_NUMEL`), to float rounding of mean|W| on GPU; PCNN's projection loss is
    summed per group, so its value (not its gradients) may differ in the last bits.

    ``with batched.bound(): y = module(x)``: inside, each grouped conv uses the weight binarized for
    this pass; outside, convs binarize their own weight as before. XNOR convs whose output takes no
    part in the loss get no gradient, as before; PCNN is batched only when the caller says that every
    conv runs (see :meth:`bound`), and ``fp`` has nothing to batch. Groups are collected at
    construction: build a new object after adding or removing convs (a removed conv left in a group is
    only binarized for nothing). All convs of a group must share device and dtype.
    """

    def __init__(self, module: nn.Module) -> None:
        groups: dict[tuple, list[BinaryConv2d]] = {}
        for m in binary_convs(module):
            if m.method.batchable and m.weight.numel() <= BATCH_MAX_NUMEL:
                groups.setdefault((type(m.method), tuple(m.weight.shape)), []).append(m)
        self.groups: list[list[BinaryConv2d]] = [g for g in groups.values() if len(g) > 1]

    @contextmanager
    def bound(self, every_conv_runs: bool = False) -> Iterator[None]:
        """Binarize the grouped weights now; the convs use them until the block ends.

        The methods whose batched form needs every conv to run (``batch_needs_every_conv``: PCNN) are
        batched only when the caller says ``every_conv_runs=True`` (the super-network's mixed pass);
        otherwise (e.g. a sub-network pass) they keep their per-conv path.
        """
        done: list[list[BinaryConv2d]] = []
        try:
            for convs in self.groups:
                if not every_conv_runs and convs[0].method.batch_needs_every_conv:
                    continue
                weights = convs[0].method.weight_batch(convs)
                # object.__setattr__: nn.Module.__setattr__ costs microseconds per call, ~900 calls here.
                for conv, w in zip(convs, weights, strict=True):
                    object.__setattr__(conv, "_batched_weight", w)
                done.append(convs)
            yield
        finally:
            for convs in done:
                for conv in convs:
                    object.__setattr__(conv, "_batched_weight", None)


def projection_loss(model: nn.Module, lam: float, eta: float = 0.0) -> torch.Tensor:
    """PCNN projection loss over every PCNN conv used in the last forward pass.

    L_P = (lambda / 2) * sum_l || W_hat_l - P_l o W_l - eta * dL/dW_hat_l ||^2   (Gu et al. 2019) [R]

    ``dL/dW_hat`` is taken from the previous backward pass (zero on the first step). Returns 0 when
    the model has no PCNN layer, so callers may add it unconditionally.
    """
    total = None
    for m in binary_convs(model):
        terms = m._proj_terms
        if terms is None:
            continue
        # One conv's terms, or a stacked group's (see Pcnn.weight_batch): the gradients are the same
        # elementwise; the loss value may differ from the per-conv sum in its last bits.
        w_hat, proj, last_grad = terms
        diff = w_hat - proj
        if eta and last_grad is not None:
            diff = diff - eta * last_grad
        val = diff.pow(2).sum()
        total = val if total is None else total + val
        m._proj_terms = None  # each forward pass contributes once
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def reset_projection_terms(model: nn.Module) -> None:
    """Forget the PCNN terms of earlier forward passes (e.g. an architecture step's, whose graph
    is already freed) so that :func:`projection_loss` sees only the coming forward pass."""
    for m in binary_convs(model):
        if m._proj_terms is not None:
            m._proj_terms = None
