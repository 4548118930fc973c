"""Images per second of the search's super-network step and of the retraining step: fp32 eager against
the fast path (:mod:`bnas.accel`), with peak GPU memory.

Both steps run the project's own code on real loaders, so the data pipeline is part of the figure:

* **search**: one :class:`bnas.search.Search` per variant; a step is what an epoch of the search does
  per training batch: a first-order architecture step on a validation batch
  (``Search.state.architect.step``) and the weight step (``Search._weight_step``), both batches drawn
  from the search's own loaders (CPU ``DataLoader`` workers, or the images on the device);
* **retrain**: the evaluation network of ``bnas_xnor`` with the auxiliary head, Cutout and drop path,
  stepped by :func:`bnas.retrain.train_epoch` on the retraining loader.

Variants are ``runtime`` settings (:data:`VARIANTS`): ``fp32`` (everything off: the CPU path as it
was), ``fast`` (bf16 autocast + channels_last + cuDNN autotuning + data on the device), ``fast_hostdata``
(``fast`` with the CPU loader), ``compile`` (``fast`` + ``torch.compile``). ``warmup`` steps run first
(cuDNN autotuning, compilation: reported as ``warmup_s``), then ``steps`` timed steps, synchronised at
both ends. img/s counts the training batch (the search also consumes a validation batch per step).

    python benchmarks/bench_fast_path.py --device cpu --size tiny                  # seconds, generated data
    python benchmarks/bench_fast_path.py --device cuda --size paper --out fast_path.json
    python benchmarks/bench_fast_path.py --device cuda --size paper --variants compile --parts search

Data: ``--data-root`` (CIFAR-10 layout), else generated with :func:`bnas.testing.make_fake_cifar`
at the size's image count (paper: 50,000 training images = the search's 25k/25k split) under
``--work``. Core only: torch, numpy, PyYAML, torchvision (its CIFAR metadata); no Ray, MLflow, pandas.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bnas.accel import FastPath  # noqa: E402
from bnas.config import config_from_dict  # noqa: E402
from bnas.data import retrain_loaders  # noqa: E402
from bnas.genotype import GENOTYPES  # noqa: E402
from bnas.retrain import build_network, train_epoch  # noqa: E402
from bnas.search import Search  # noqa: E402
from bnas.training import isolated_rng  # noqa: E402

_SWITCHES = ("channels_last", "cudnn_benchmark", "data_on_device")
_OFF = {"amp": "off", **dict.fromkeys(_SWITCHES, "off"), "compile": False}
_FAST = {"amp": "bf16", **dict.fromkeys(_SWITCHES, "on"), "compile": False}
#: Variant name -> ``runtime`` settings.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": _OFF,
    "fast": _FAST,
    "fast_hostdata": {**_FAST, "data_on_device": "off"},
    "compile": {**_FAST, "compile": True},
}
GENOTYPE = "bnas_xnor"


@dataclass(frozen=True)
class SearchShape:
    layers: int
    channels: int
    k: int
    batch: int


@dataclass(frozen=True)
class Size:
    """Problem sizes. ``search`` lists the super-network shapes; ``retrain`` is (layers, C, batch)."""

    image_size: int
    train_images: int
    test_images: int
    search: tuple[SearchShape, ...]
    retrain: tuple[int, int, int]
    workers: int


SIZES: dict[str, Size] = {
    # PC-DARTS/BNAS search [C]: 8 cells, C=16, all 8 ops; K=4 at batch 256 (PC-DARTS), K=2 at 128 (BNAS [R]);
    # DARTS evaluation network [C]: 20 cells, C=36, batch 96. Loader workers as bench_schedules' gpu scale.
    "paper": Size(
        32, 50_000, 1_000, (SearchShape(8, 16, 4, 256), SearchShape(8, 16, 2, 128)), (20, 36, 96), 4
    ),
    "tiny": Size(8, 128, 32, (SearchShape(3, 4, 2, 16),), (3, 4, 16), 0),
}


class _Stream:
    """An endless loader: every ``iter()`` continues the same stream (passes follow each other)."""

    def __init__(self, loader: Any) -> None:
        self._it = self._forever(loader)

    @staticmethod
    def _forever(loader: Any) -> Iterator[Any]:
        while True:
            yield from loader

    def __iter__(self) -> Iterator[Any]:
        return self._it

    def __next__(self) -> Any:
        return next(self._it)

    def __len__(self) -> int:
        return 2**31


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _timed(step: Any, warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(warm-up seconds, seconds per timed step)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return t1 - t0, (time.perf_counter() - t1) / steps


def _base(args: argparse.Namespace, root: Path, runtime: dict[str, Any]) -> dict[str, Any]:
    size = SIZES[args.size]
    return {
        "seed": 0,
        "device": args.device,
        "threads": args.threads,
        "data": {"root": str(root), "image_size": size.image_size, "num_workers": args.workers},
        "runtime": dict(runtime),
    }


def bench_search(args: argparse.Namespace, root: Path, shape: SearchShape, variant: str) -> dict[str, Any]:
    """One variant of the super-network step (architecture step + weight step) at ``shape``."""
    device = torch.device(args.device)
    cfg = _base(args, root, VARIANTS[variant])
    cfg["search"] = {
        "layers": shape.layers,
        "init_channels": shape.channels,
        "sampling_k": shape.k,
        "batch_size": shape.batch,
    }
    cfg["reduction"] = {"warmup_epochs": 0}
    _reset_memory(device)
    s = Search(
        config_from_dict(cfg),
        Path(args.work) / "runs" / f"search_k{shape.k}_{variant}",
        log=None,
        resume=False,
    )
    train, val = _Stream(s.train_loader), _Stream(s.val_loader)

    def step() -> None:
        x, y = (t.to(device, non_blocking=True) for t in next(train))
        xv, yv = (t.to(device, non_blocking=True) for t in next(val))
        s.state.architect.step(xv, yv)
        s._weight_step(x, y, None)  # .item() inside: the step ends on the host, as in the search

    with isolated_rng(device), s.fast.session():
        warm_s, step_s = _timed(step, args.warmup, args.steps, device)
    return {
        "part": "search",
        "variant": variant,
        **asdict(shape),
        "image_size": SIZES[args.size].image_size,
        "step_s": step_s,
        "img_per_s": shape.batch / step_s,
        "warmup_s": warm_s,
        "peak_cuda_mib": _peak_mib(device),
        "fast_path": s.fast.describe(s.train_loader),
    }


def bench_retrain(args: argparse.Namespace, root: Path, variant: str) -> dict[str, Any]:
    """One variant of the retraining step (evaluation network, auxiliary head, Cutout, drop path)."""
    device = torch.device(args.device)
    layers, channels, batch = SIZES[args.size].retrain
    cfg = _base(args, root, VARIANTS[variant])
    cfg["retrain"] = {
        "layers": layers,
        "init_channels": channels,
        "batch_size": batch,
        "cutout": 16,
        "drop_path_prob": 0.2,
        "auxiliary": True,
    }
    c = config_from_dict(cfg)
    r = c.retrain
    _reset_memory(device)
    fast = FastPath.from_config(c.runtime, device)
    with isolated_rng(device), fast.session():
        torch.manual_seed(0)
        loader, _, info = retrain_loaders(
            c.data,
            r.batch_size,
            r.eval_batch_size,
            c.seed,
            cutout=r.cutout,
            device=device,
            placement=fast.placement,
        )
        model = fast.prepare(build_network(c, GENOTYPES.get(GENOTYPE), info).to(device))
        model.drop_path_prob = r.drop_path_prob / 2  # mid-run
        opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
        stream = _Stream(loader)
        t0 = time.perf_counter()
        train_epoch(model, stream, opt, c, device, max_batches=args.warmup, fast=fast)
        _sync(device)
        warm_s, t1 = time.perf_counter() - t0, time.perf_counter()
        train_epoch(model, stream, opt, c, device, max_batches=args.steps, fast=fast)
        _sync(device)
        step_s = (time.perf_counter() - t1) / args.steps
    return {
        "part": "retrain",
        "variant": variant,
        "layers": layers,
        "channels": channels,
        "batch": batch,
        "image_size": SIZES[args.size].image_size,
        "step_s": step_s,
        "img_per_s": batch / step_s,
        "warmup_s": warm_s,
        "peak_cuda_mib": _peak_mib(device),
        "fast_path": fast.describe(loader),
    }


def prepare_data(args: argparse.Namespace) -> Path:
    if args.data_root:
        return Path(args.data_root)
    from bnas.testing import make_fake_cifar

    size = SIZES[args.size]
    root = Path(args.work) / "data"
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        make_fake_cifar(root, n_train=size.train_images, n_test=size.test_images)
    return root


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'part':<8}{'shape':<22}{'variant':<15}{'ms/step':>9}{'img/s':>9}{'x fp32':>8}"
        f"{'warmup s':>10}{'peak MiB':>10}"
    ]
    for r in rows:
        shape = (
            f"{r['layers']}c C={r['channels']} K={r['k']} b{r['batch']}"
            if r["part"] == "search"
            else f"{r['layers']}c C={r['channels']} b{r['batch']}"
        )
        ref = next(
            (
                b
                for b in rows
                if b["variant"] == "fp32" and b["part"] == r["part"] and b.get("k") == r.get("k")
            ),
            None,
        )
        speed = f"{r['img_per_s'] / ref['img_per_s']:.2f}" if ref else "-"
        peak = "-" if r["peak_cuda_mib"] is None else f"{r['peak_cuda_mib']:.0f}"
        lines.append(
            f"{r['part']:<8}{shape:<22}{r['variant']:<15}{r['step_s'] * 1e3:>9.1f}"
            f"{r['img_per_s']:>9.1f}{speed:>8}{r['warmup_s']:>10.1f}{peak:>10}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--variants", default="fp32,fast", help=f"comma separated: {', '.join(VARIANTS)}")
    p.add_argument("--parts", default="search,retrain", help="comma separated: search, retrain")
    p.add_argument("--k", type=int, nargs="*", help="only the search shapes with these K")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (autotuning, compilation)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--workers", type=int, default=None, help="CPU loader workers (default: the size's)")
    p.add_argument("--data-root", help="CIFAR-10 folder (default: generated data under --work)")
    p.add_argument("--work", help="folder for generated data and run folders (default: a temporary one)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    parts = [v.strip() for v in args.parts.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; valid: {', '.join(VARIANTS)}")
    if not set(parts) <= {"search", "retrain"}:
        p.error(f"--parts: valid parts are search and retrain, got {args.parts!r}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    args.workers = SIZES[args.size].workers if args.workers is None else args.workers
    args.work = args.work or tempfile.mkdtemp(prefix="bench_fast_path_")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    root = prepare_data(args)

    rows: list[dict[str, Any]] = []
    shapes = [s for s in SIZES[args.size].search if not args.k or s.k in args.k]
    for part in parts:
        for shape in shapes if part == "search" else [None]:
            for v in variants:
                row = bench_retrain(args, root, v) if shape is None else bench_search(args, root, shape, v)
                rows.append(row)
                print(
                    f"{part} {v}: {row['img_per_s']:.1f} img/s, {row['step_s'] * 1e3:.1f} ms/step",
                    file=sys.stderr,
                    flush=True,
                )
    meta = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "variants": {v: VARIANTS[v] for v in variants},
    }
    print(render(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
