"""Seconds per retraining step of the paper-size evaluation network (method.md section 8).

One step is what :func:`bnas.retrain.train_epoch` does per batch: forward (auxiliary head on, drop
path on), cross-entropy + 0.4 x auxiliary loss, backward, gradient clip, SGD. Inputs are random
tensors of CIFAR's shape (the data pipeline is not measured). Defaults: the 36-channel, 20-cell
``xnor`` network of ``bnas_xnor`` at batch 96 on 32x32 inputs, drop path at its final value 0.2.

    python benchmarks/bench_retrain_step.py                       # the figure of issue 2
    python benchmarks/bench_retrain_step.py --method fp --channels 44 --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bnas.config import load_config  # noqa: E402
from bnas.data import DatasetInfo  # noqa: E402
from bnas.genotype import load_genotype  # noqa: E402
from bnas.model_size import size_report  # noqa: E402
from bnas.retrain import build_network, train_epoch  # noqa: E402
from bnas.runtime import resolve_device, seed_everything  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--genotype", default="bnas_xnor")
    p.add_argument("--method", default="xnor")
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(
        None,
        {
            "device": args.device,
            "binarization.method": args.method,
            "retrain.init_channels": args.channels,
            "retrain.layers": args.layers,
            "retrain.batch_size": args.batch,
        },
    )
    r = cfg.retrain
    device = resolve_device(cfg.device)
    seed_everything(0)
    info = DatasetInfo("cifar10", 10, 3, (0.0,) * 3, (1.0,) * 3, args.image_size)
    model = build_network(cfg, load_genotype(args.genotype), info).to(device)
    model.drop_path_prob = r.drop_path_prob
    optimizer = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch,))

    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_epoch(model, [(x, y)], optimizer, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)

    median = statistics.median(times)
    size = size_report(model)
    result = {
        "genotype": args.genotype,
        "method": args.method,
        "channels": args.channels,
        "layers": args.layers,
        "batch": args.batch,
        "image_size": args.image_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "median_s_per_step": round(median, 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "images_per_s": round(args.batch / median, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "params": size["params"],
    }
    print(
        f"{args.genotype} {args.method} C={args.channels} {args.layers} cells, batch {args.batch} "
        f"at {args.image_size}x{args.image_size} on {device} ({torch.get_num_threads()} threads): "
        f"median {median:.2f} s/step over {args.steps} steps ({args.batch / median:.1f} images/s)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
