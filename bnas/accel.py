"""The GPU fast path: bf16 autocast, channels_last, cuDNN autotuning, data on the device, torch.compile.

One object, :class:`FastPath`, resolved from the ``runtime`` settings (:class:`bnas.config.RuntimeConfig`)
for the run's device, carries every speed-up; the search (weight step, architecture step, evaluation,
sampled sub-networks) and the retraining call their networks through it (``fast(model, x, *args)``).
``auto`` means on for CUDA and off on the CPU for cuDNN autotuning and data on the device, and off
everywhere for bf16 autocast and channels_last (measured slower on an H200: :data:`AUTO_AMP`), so a CPU
run computes bit for bit what it did before.

* **bf16 autocast** (``runtime.amp``): forward passes run under ``torch.autocast(dtype=bfloat16)``:
  convolutions and the classifier in bf16; BatchNorm takes the bf16 input but keeps its statistics and
  running buffers in fp32 (cuDNN on CUDA, the mixed-type kernel on the CPU -- measured: identical
  running means), softmax of alpha/beta runs on the fp32 parameters; the network's output is cast to
  fp32 before it leaves :meth:`FastPath.__call__`, so the cross-entropy (and the backward pass's
  loss gradient) is fp32 on every device. The binarized weights stay exact: ``a * sign(W)`` is
  computed in fp32 from the fp32 latent weight (autocast does not touch ``abs``/``mean``/``where``)
  and only cast to bf16 inside the convolution, so every weight of a layer is still exactly ``+-a'``
  with ``a' = bf16(a)``. No gradient scaling is needed: bf16 has fp32's exponent range.
* **channels_last** (``runtime.channels_last``): the model's 4-d parameters and every input batch in
  NHWC, the layout cuDNN's fastest convolutions (and tensor cores) use.
* **cuDNN autotuning** (``runtime.cudnn_benchmark``): ``torch.backends.cudnn.benchmark`` set for the
  run by :meth:`FastPath.session` and restored afterwards, so the caller's global state is unchanged.
* **data on the device** (``runtime.data_on_device``, ``runtime.data_device_fraction``): decided per
  loader by :class:`bnas.data.DataPlacement` (``placement``), see :mod:`bnas.data.device_loader`.
* **torch.compile** (``runtime.compile``, off by default): the plain forward pass of a network
  (no extra arguments) is compiled; passes with arguments -- a sampled sub-network or the derived
  architecture, each a different graph -- run eagerly. :meth:`FastPath.forget` drops a network's
  compiled form; the search calls it after every reduction, since the network lost operations.
  Dynamo's guards would catch the change anyway; :meth:`session` raises its recompile limit for the
  run, since every stage adds graphs (train and evaluation mode) to the same ``forward`` code.

Numerics: bf16 autocast, channels_last and compiled kernels change results within float tolerance
(bf16: relative rounding 2**-9 per operation), never bit for bit; cuDNN autotuning may pick
non-deterministic algorithms. None of these settings is part of a checkpoint's identity
(``affects_results=False``): a run may resume on another device or with other settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bnas.data import DataPlacement, DeviceLoader

if TYPE_CHECKING:  # annotations only
    from bnas.config import RuntimeConfig

#: What ``auto`` means for bf16 autocast and channels_last [D, measured]: off. On one H200
#: (docs/results/gpu_check_h200) they made the paper-size search step 5-17 % and the retraining step
#: 16 % slower than fp32 (these networks launch thousands of tiny kernels; casts and layout changes add
#: more), while halving peak memory: turn them on (``bf16``/``on``) when memory, not time, is short.
AUTO_AMP = False
#: The autocast dtype: bf16 keeps fp32's exponent range, so no loss scaling is needed.
AMP_DTYPE = torch.bfloat16
#: Dynamo's recompile limit per code object during a compiled run [D]: a search adds about four
#: graphs per stage (train/eval mode, a last smaller batch) to the same ``forward``; torch's default
#: of 8 would send later stages back to eager mode.
RECOMPILE_LIMIT = 64

Compiler = Callable[[nn.Module], Callable[..., Any]]


def _mode(value: str | bool) -> str:
    """``True``/``False`` (YAML's bare on/off) -> ``"on"``/``"off"``; strings unchanged."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _resolve(value: str | bool, auto: bool) -> bool:
    mode = _mode(value)
    return auto if mode == "auto" else mode in ("on", "bf16")


def _to_float(out: Any) -> Any:
    """The network's output with every low-precision floating tensor cast to fp32 (tuples kept)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, tuple):
        return tuple(_to_float(o) for o in out)
    return out


class FastPath:
    """The resolved speed-ups of one run on one device (see the module docstring).

    Build it with :meth:`from_config` (or :meth:`off`). ``compiler`` turns a module into the callable
    that replaces its plain forward pass (default ``torch.compile``; tests pass a cheaper one).
    """

    def __init__(
        self,
        device: torch.device,
        *,
        amp: bool = False,
        channels_last: bool = False,
        cudnn_benchmark: bool = False,
        compile: bool = False,
        placement: DataPlacement | None = None,
        compiler: Compiler | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.amp, self.channels_last = bool(amp), bool(channels_last)
        self.cudnn_benchmark, self.compile = bool(cudnn_benchmark), bool(compile)
        self.placement = placement or DataPlacement("off")
        self._compiler: Compiler = compiler or torch.compile
        self._compiled: dict[int, tuple[nn.Module, Callable[..., Any]]] = {}

    @classmethod
    def from_config(
        cls, runtime: RuntimeConfig, device: torch.device, compiler: Compiler | None = None
    ) -> FastPath:
        """Resolve ``runtime``'s settings for ``device``: ``auto`` is on for CUDA for cuDNN autotuning,
        off elsewhere, and off everywhere for bf16 autocast and channels_last (:data:`AUTO_AMP`);
        ``on``/``bf16`` force a speed-up on any device (CPU: tests)."""
        cuda = torch.device(device).type == "cuda"
        return cls(
            device,
            amp=_resolve(runtime.amp, AUTO_AMP and cuda and torch.cuda.is_bf16_supported()),
            channels_last=_resolve(runtime.channels_last, AUTO_AMP and cuda),
            cudnn_benchmark=_resolve(runtime.cudnn_benchmark, cuda),
            compile=runtime.compile,
            placement=DataPlacement(_mode(runtime.data_on_device), runtime.data_device_fraction),
            compiler=compiler,
        )

    @classmethod
    def off(cls, device: torch.device | str = "cpu") -> FastPath:
        """Every speed-up off: the plain eager fp32 path."""
        return cls(torch.device(device))

    def describe(self, loader: object = None) -> dict[str, Any]:
        """What is on, for logs and ``final.json``; ``data_on_device`` from ``loader`` when given."""
        out: dict[str, Any] = {
            "amp": "bf16" if self.amp else "off",
            "channels_last": self.channels_last,
            "cudnn_benchmark": self.cudnn_benchmark,
            "compile": self.compile,
        }
        if loader is not None:
            out["data_on_device"] = isinstance(loader, DeviceLoader)
        return out

    # ------------------------------------------------------------------ model and inputs
    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` in channels_last when that is on (in place, returned for chaining)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d input batch in channels_last when that is on (no copy when it already is)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on the run's device, or nothing (not even a disabled autocast) when off."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPE)

    def __call__(self, model: nn.Module, x: torch.Tensor, *args: Any) -> Any:
        """``model(x, *args)`` on the fast path; floating outputs come back in fp32.

        Compiled (when on) only for the plain pass, i.e. when every extra argument is None.
        """
        x = self.input(x)
        fn: Callable[..., Any] = model
        if self.compile and all(a is None for a in args):
            fn = self.compiled(model)
        with self.autocast():
            out = fn(x, *args)
        return _to_float(out)

    # ------------------------------------------------------------------ torch.compile
    def compiled(self, model: nn.Module) -> Callable[..., Any]:
        """The compiled form of ``model`` (made on first use, kept until :meth:`forget`)."""
        entry = self._compiled.get(id(model))
        if entry is None or entry[0] is not model:
            entry = (model, self._compiler(model))
            self._compiled[id(model)] = entry
        return entry[1]

    def forget(self, model: nn.Module) -> None:
        """Drop ``model``'s compiled form: the next plain pass compiles it again (after a reduction)."""
        self._compiled.pop(id(model), None)

    # ------------------------------------------------------------------ global state of a run
    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The run's global settings: cuDNN autotuning (and Dynamo's recompile limit when compiling);
        the caller's values are restored on exit, exceptions included."""
        saved = torch.backends.cudnn.benchmark
        with contextlib.ExitStack() as stack:
            if self.compile:
                from torch import _dynamo  # only compiled runs pay for importing Dynamo

                config = _dynamo.config
                name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
                limit = max(getattr(config, name), RECOMPILE_LIMIT)
                stack.enter_context(config.patch(**{name: limit}))
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            try:
                yield
            finally:
                torch.backends.cudnn.benchmark = saved
