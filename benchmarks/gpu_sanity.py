"""Checks of the fast path (bnas.accel, bnas.data.device_loader) that need a GPU; run by gpu_check.sh.

Each check prints one line and lands in the JSON (``--out``); the exit status is 1 when one fails.

* the device loader on CUDA: same seeds give the same batches, reseeding repeats a pass, and the
  batches equal the same loader's on the CPU (the draws come from CPU generators) up to float rounding;
* bf16 autocast on CUDA: super-network logits within the CPU test's tolerance of fp32 on the CPU
  (16 bf16 roundoffs of the logit scale), BatchNorm buffers in fp32;
* channels_last on CUDA: the same logits as the contiguous layout (TF32 convolutions: 1e-2);
* cuDNN autotuning: set inside the session, restored after.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bnas.accel import FastPath  # noqa: E402
from bnas.binarization import BinarySpec  # noqa: E402
from bnas.data import TrainTransform, reseed_loader  # noqa: E402
from bnas.data.device_loader import device_loader  # noqa: E402
from bnas.supernet import SuperNetwork  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
LOGIT_TOL = 16 * 2.0**-9


def _batches(device: torch.device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (300, 3, 32, 32), generator=g, dtype=torch.uint8)
    loader = device_loader(
        x,
        torch.arange(300) % 10,
        torch.arange(300),
        TrainTransform(MEAN, STD, cutout=16),
        device,
        64,
        True,
        seed,
        seed + 1,
    )
    return [(a.cpu(), b.cpu()) for a, b in loader]


def check_loader(device: torch.device) -> dict[str, Any]:
    a, b, other = _batches(device, 0), _batches(device, 0), _batches(device, 1)
    cpu = _batches(torch.device("cpu"), 0)
    same = all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True))
    differs = not all(torch.equal(x, u) for (x, _), (u, _) in zip(a, other, strict=True))
    cross = max((x - u).abs().max().item() for (x, _), (u, _) in zip(a, cpu, strict=True))
    labels = all(torch.equal(y, v) for (_, y), (_, v) in zip(a, cpu, strict=True))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 3, 32, 32), generator=g, dtype=torch.uint8)
    idx = torch.arange(100)
    loader = device_loader(x, idx, idx, TrainTransform(MEAN, STD), device, 32, True, 0, 1)
    reseed_loader(loader, 5, 6)
    first = [t.clone() for t, _ in loader]
    reseed_loader(loader, 5, 6)
    again = all(torch.equal(t, u) for t, (u, _) in zip(first, loader, strict=True))
    ok = same and differs and labels and cross <= 1e-5 and again
    return {
        "ok": ok,
        "same_seed_same_batches": same,
        "other_seed_differs": differs,
        "reseed_repeats": again,
        "labels_equal_cpu": labels,
        "max_abs_diff_vs_cpu": cross,
    }


def check_numerics(device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    net = SuperNetwork(
        16,
        10,
        5,
        ["skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3", "sep_conv_5x5"],
        4,
        BinarySpec("xnor"),
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 32, 32, generator=g)
    ref_cpu = FastPath.off()(net, x)
    net.to(device)
    xd = x.to(device)
    ref = FastPath.off(device)(net, xd).cpu()
    bf16 = FastPath(device, amp=True)(net, xd).cpu()
    scale = max(1.0, ref_cpu.abs().max().item())
    d_bf16 = (bf16 - ref_cpu).abs().max().item()
    d_fp32 = (ref - ref_cpu).abs().max().item()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_fp32 = all(m.running_mean.dtype == m.running_var.dtype == torch.float32 for m in bns)
    cl = FastPath(device, channels_last=True)
    cl.prepare(net)
    d_cl = (cl(net, xd).cpu() - ref).abs().max().item()
    return {
        "ok": d_bf16 <= LOGIT_TOL * scale and bn_fp32 and d_cl <= 1e-2 and d_fp32 <= 1e-2,
        "logit_scale": scale,
        "bf16_vs_cpu_fp32": d_bf16,
        "cuda_fp32_vs_cpu_fp32": d_fp32,
        "channels_last_vs_contiguous": d_cl,
        "bn_buffers_fp32": bn_fp32,
        "tolerance": LOGIT_TOL * scale,
    }


def check_cudnn_flag(device: torch.device) -> dict[str, Any]:
    before = torch.backends.cudnn.benchmark
    with FastPath(device, cudnn_benchmark=not before).session():
        inside = torch.backends.cudnn.benchmark
    return {
        "ok": inside is (not before) and torch.backends.cudnn.benchmark is before,
        "before": before,
        "inside": inside,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", help="JSON results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    results = {}
    checks = {"loader": check_loader, "numerics": check_numerics, "cudnn_flag": check_cudnn_flag}
    for name, check in checks.items():
        try:
            results[name] = check(device)
        except Exception as e:  # a check that crashes is a failed check, and the others still run
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
