"""One capped stage of each search schedule at a scale of ``bench_schedules.py``, and the whole
schedules' cost extrapolated from it: minutes on a GPU instead of the hours of the full benchmark.

Each schedule of :mod:`bench_schedules` (PC-DARTS, BNAS) runs as ``python -m bnas search`` with its
settings at the chosen scale (``gpu``: the paper's sizes, 25k + 25k images of 32 px, C=16) but only
the first stage, two epochs (no warm-up, so the architecture step runs), ``--batches`` training and
validation batches and ``--subnet-batches`` batches per sampled sub-network. From the stage's phase
times (``final.json``) and its second epoch (``metrics.jsonl``) come the costs per batch of stage 1
(every op still on every edge):

    step  a training step (loading, architecture and weight step), from the second epoch's time;
    v  validation per batch;  st, se  sub-network training / scoring per batch;  d  loading per batch

and the full schedule's seconds are its batch counts times these costs (``extrapolate``): per stage
``i`` with ``k_i`` ops per edge, ``L`` epochs of ``ceil(25000 / batch)`` steps (``a`` only after the
warm-up), the validations, ``T * ceil(k_i / 2)`` sampled sub-networks (performance strategy; ucb:
``T * k_i``) of ``V`` epochs each plus their scoring, and the final derivation. Super-network costs
shrink as operations go; two bounds bracket that: ``flat`` (every stage costs stage 1: an upper bound)
and ``linear`` (a stage costs ``k_i / 8`` of stage 1: the cost of an edge proportional to its ops).
Sub-networks run one op per edge, so their cost does not depend on the stage. An estimate, not a
measurement; ``bench_schedules.py --scale gpu`` measures the whole schedules.

    python benchmarks/schedule_probe.py --fake --device cuda --out probe/      # generated data
    python benchmarks/schedule_probe.py --scale tiny --fake --device cpu --out probe/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_schedules as bs  # noqa: E402

from bnas.config import SearchConfig, parse_overrides  # noqa: E402  (bench_schedules: repo on the path)

SECONDS_PER_DAY = 86_400
SUBNETS_PER_ROUND = {"performance": lambda k: math.ceil(k / 2), "ucb": lambda k: k}


def probe_settings(full: dict[str, Any], batches: int, subnet_batches: int) -> dict[str, Any]:
    """The full schedule's settings cut to its first stage: two epochs without warm-up, capped batches."""
    return {
        **full,
        "reduction.stages": 1,
        "reduction.epochs_per_stage": 2,
        "reduction.warmup_epochs": 0,
        "search.max_batches_per_epoch": batches,
        "reduction.subnet_max_batches": subnet_batches,
    }


def _n_ops(s: dict[str, Any]) -> int:
    return len(s.get("search.ops", SearchConfig().ops))


def _splits(s: dict[str, Any], n_images: int) -> tuple[int, int]:
    n_val = min(n_images - 1, max(1, round(n_images * s.get("data.val_fraction", 0.5))))
    return n_images - n_val, n_val


def _counts(s: dict[str, Any], n_images: int, stage_ops: list[int]) -> dict[str, Any]:
    """Batch counts of a search with settings ``s`` (caps included), per stage."""
    n_train, n_val = _splits(s, n_images)
    bs_, sub_bs = s.get("search.batch_size", 128), s.get("reduction.subnet_batch_size", 400)
    cap = s.get("search.max_batches_per_epoch")
    train_b = math.ceil(n_train / bs_) if cap is None else min(math.ceil(n_train / bs_), cap)
    val_cap = s.get("search.val_max_batches") or cap
    val_b = math.ceil(n_val / bs_) if val_cap is None else min(math.ceil(n_val / bs_), val_cap)
    sub_cap = s.get("reduction.subnet_max_batches")
    sub_b = math.ceil(n_train / sub_bs) if sub_cap is None else min(math.ceil(n_train / sub_bs), sub_cap)
    sev_cap = s.get("reduction.subnet_eval_batches") or cap
    sev_b = math.ceil(n_val / bs_) if sev_cap is None else min(math.ceil(n_val / bs_), sev_cap)
    per_round = SUBNETS_PER_ROUND.get(s.get("reduction.strategy", "performance"), lambda k: 0)
    rounds, v_epochs = s.get("reduction.rounds", 3), s.get("reduction.subnet_epochs", 1)
    epochs, warmup = s.get("reduction.epochs_per_stage", 5), s.get("reduction.warmup_epochs", 0)
    every, total = s.get("search.validate_every", 1), len(stage_ops) * epochs
    validated = [
        sum(1 for e in range(i * epochs, (i + 1) * epochs) if (e + 1) % every == 0 or e == total - 1)
        for i in range(len(stage_ops))
    ]
    return {
        "train_b": train_b,
        "val_b": val_b,
        "sub_b": sub_b,
        "sev_b": sev_b,
        "epochs": epochs,
        "warmup": warmup,
        "validated": validated,
        "subnets": [rounds * per_round(k) for k in stage_ops],
        "v_epochs": v_epochs,
    }


def stage_ops(s: dict[str, Any]) -> list[int]:
    """Ops per edge in each stage: one fewer per stage unless the strategy removes nothing."""
    n, stages = _n_ops(s), s.get("reduction.stages") or _n_ops(s) - 1
    return [n if s.get("reduction.strategy") == "none" else n - i for i in range(stages)]


def unit_costs(
    final: dict[str, Any], metrics: list[dict[str, Any]], probe: dict[str, Any], n_images: int
) -> dict[str, float]:
    """Seconds per batch, from the probe's stage-1 phase times and its last epoch.

    ``step`` (loading, architecture and weight step per training batch) comes from the last epoch's
    ``epoch_time_s``: the first epoch also pays for the first passes (allocation, cuDNN autotuning,
    compilation), which a whole search pays once, not every epoch. ``arch_frac`` splits it by the
    stage's phase times (warm-up epochs take no architecture step).
    """
    ph = final["stage_times"][0]["phases"]
    c = _counts(probe, n_images, stage_ops(probe))
    n_sub = c["subnets"][0]
    sub_batches = n_sub * (c["v_epochs"] * c["sub_b"] + c["sev_b"])
    batches = 2 * c["train_b"] * c["epochs"] + c["val_b"] * c["validated"][0] + sub_batches
    w, a = ph.get("weight_step", 0.0), ph.get("arch_step", 0.0)
    return {
        "step": metrics[-1]["epoch_time_s"] / c["train_b"],
        "arch_frac": a / (w + a) if w + a > 0 else 0.0,
        "v": ph.get("validation", 0.0) / max(1, c["val_b"] * c["validated"][0]),
        "st": ph.get("subnet_train", 0.0) / max(1, n_sub * c["v_epochs"] * c["sub_b"]),
        "se": ph.get("subnet_eval", 0.0) / max(1, n_sub * c["sev_b"]),
        "d": ph.get("data", 0.0) / max(1, batches),
        "ckpt": ph.get("checkpoint", 0.0) / (c["epochs"] + 1),  # after every epoch and the reduction
    }


def extrapolate(full: dict[str, Any], u: dict[str, float], n_images: int) -> dict[str, float]:
    """Seconds of the whole schedule under the ``flat`` and ``linear`` stage-cost bounds."""
    ops = stage_ops(full)
    c = _counts(full, n_images, ops)
    out = {}
    for bound in ("flat", "linear"):
        total = 0.0
        for i, k in enumerate(ops):
            f = 1.0 if bound == "flat" else k / ops[0]
            warm = c["warmup"] if i == 0 else 0
            steps = c["train_b"] * u["step"] * f * (c["epochs"] - warm * u["arch_frac"])
            val = c["validated"][i] * c["val_b"] * (u["v"] * f + u["d"])
            per_sub = c["v_epochs"] * c["sub_b"] * (u["st"] + u["d"]) + c["sev_b"] * (u["se"] + u["d"])
            total += steps + val + c["subnets"][i] * per_sub + (c["epochs"] + 1) * u["ckpt"]
        total += c["val_b"] * (u["v"] * (1.0 if bound == "flat" else ops[-1] / ops[0]) + u["d"])  # derivation
        out[f"{bound}_s"] = total
        out[f"{bound}_gpu_days"] = total / SECONDS_PER_DAY
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(bs.SCALES), default="gpu")
    p.add_argument(
        "--schedules",
        nargs="+",
        choices=sorted(bs.SCHEDULES),
        default=["bnas_k2", "pcdarts_fp", "bnas_k4", "pcdarts_xnor"],
    )
    p.add_argument("--batches", type=int, default=20, help="training (and validation) batches of the stage")
    p.add_argument("--subnet-batches", type=int, default=2, help="training batches per sampled sub-network")
    p.add_argument("--data-root", help="CIFAR-10 folder (else $BNAS_DATA_ROOT, else ../shared/data)")
    p.add_argument("--fake", action="store_true", help="generated CIFAR-10 (bnas.testing.make_fake_cifar)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the scale's)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for every schedule (repeatable)",
    )
    p.add_argument("--epoch-factor", type=float, help="scale the schedules' epochs (default: the scale's)")
    p.add_argument("--out", required=True, help="folder for configs, runs and probe.json")
    args = p.parse_args(argv)
    scale = bs.SCALES[args.scale]
    factor = scale.epoch_factor if args.epoch_factor is None else args.epoch_factor
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # --data-root wins over --fake: gpu_check.sh generates the data once for every benchmark.
    data = bs.prepare_data(out, args.data_root, scale.train_images, args.fake and not args.data_root)
    n_images = scale.train_images or bs.CIFAR10_TRAIN_IMAGES
    extra = parse_overrides(args.set)
    results: dict[str, Any] = {
        "scale": args.scale,
        "n_images": n_images,
        "epoch_factor": factor,
        "batches": args.batches,
        "subnet_batches": args.subnet_batches,
        "schedules": {},
    }
    for name in args.schedules:
        full = bs.build_settings(
            bs.SCHEDULES[name],
            scale,
            0,
            data,
            scale.train_images,
            args.device or scale.device,
            scale.threads,
            factor,
        )
        full.update(extra)
        probe = probe_settings(full, args.batches, args.subnet_batches)
        t0 = time.perf_counter()
        final = bs.run_search(probe, out / "configs" / f"{name}.yaml", out / "runs" / name)
        lines = (out / "runs" / name / "metrics.jsonl").read_text().splitlines()
        u = unit_costs(final, [json.loads(line) for line in lines], probe, n_images)
        est = extrapolate(full, u, n_images)
        results["schedules"][name] = {
            "label": bs.SCHEDULES[name].label,
            "probe_wall_s": time.perf_counter() - t0,
            "stage1": final["stage_times"][0],
            "fast_path": final.get("fast_path"),
            "unit_costs_s": u,
            "estimate": est,
            "settings": full,
        }
        (out / "probe.json").write_text(json.dumps(results, indent=2, default=str))
        print(
            f"{name}: probe {time.perf_counter() - t0:.0f}s; whole schedule ~{est['linear_gpu_days']:.3g}"
            f"-{est['flat_gpu_days']:.3g} days (linear-flat)",
            file=sys.stderr,
            flush=True,
        )
    print(json.dumps({n: r["estimate"] for n, r in results["schedules"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
