"""Search cost: the performance-based reduction against plain PC-DARTS, side by side in one run.

The paper claims a search "40 % faster than PC-DARTS" (method.md section 1). This benchmark runs, on
the same data, seed and machine, each variant in its own process (so peak memory is its own):

    strategy in {performance, none}  x  K in {4 (PC-DARTS), 2 (BNAS)}

with the same number of super-network epochs (``none`` runs the same stages but removes nothing),
and prints wall time per stage, total time, peak memory and the ratios. ``performance`` also pays
for its sampled sub-networks; that cost is inside its numbers.

    python benchmarks/bench_search_cost.py --scale cpu      # ~10 min on a 2-core CPU
    python benchmarks/bench_search_cost.py --scale tiny     # ~1 min, a smoke check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from bnas.config import DataConfig  # noqa: E402
from bnas.data import write_cifar10_subset  # noqa: E402

SCALES = {
    # 8 ops -> 7 stages of L=1 epoch; 5 cells, C=8 on 16x16 images (platform.md's CPU table).
    "cpu": {
        "data": {"image_size": 16, "train_subset": 512},
        "search": {"layers": 5, "init_channels": 8, "batch_size": 32},
        "reduction": {
            "epochs_per_stage": 1,
            "warmup_epochs": 0,
            "rounds": 1,
            "subnet_epochs": 1,
            "subnet_batch_size": 64,
        },
    },
    "tiny": {
        "data": {"image_size": 8, "train_subset": 64},
        "search": {"layers": 3, "init_channels": 4, "batch_size": 16},
        "reduction": {
            "epochs_per_stage": 1,
            "warmup_epochs": 0,
            "rounds": 1,
            "subnet_epochs": 1,
            "subnet_batch_size": 32,
        },
    },
}


def run_variant(base: dict, strategy: str, k: int, out: Path) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg["search"]["sampling_k"] = k
    cfg["reduction"]["strategy"] = strategy
    path = out / f"{strategy}_k{k}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnas",
            "search",
            "--config",
            str(path),
            "--out",
            str(out / f"{strategy}_k{k}"),
            "--no-resume",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{strategy} K={k} failed:\n{proc.stderr[-3000:]}")
    final = json.loads((out / f"{strategy}_k{k}" / "final.json").read_text())
    return {"strategy": strategy, "k": k, "process_wall_s": wall, **final}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--method", default="xnor", help="binarization method for every variant")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for the runs and results.json (default: a temporary folder)")
    args = p.parse_args(argv)

    base = json.loads(json.dumps(SCALES[args.scale]))
    base.update(seed=args.seed, device="cpu", threads=args.threads)
    base["binarization"] = {"method": args.method}
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_search_cost_"))
    out.mkdir(parents=True, exist_ok=True)
    # Each search process reads only its subset (written once, outside the repository), so its peak
    # memory is the search's own rather than the 60,000 images' pickles.
    n_images = base["data"]["train_subset"]
    subset = DataConfig(root=str(Path(args.data_root).absolute()), train_subset=n_images, test_subset=10)
    base["data"]["root"] = str(write_cifar10_subset(subset, out / "data"))

    rows = [run_variant(base, s, k, out) for k in (4, 2) for s in ("none", "performance")]
    ref = next(r for r in rows if r["strategy"] == "none" and r["k"] == 4)
    print(
        f"\nSearch cost, scale={args.scale}, method={args.method}, threads={args.threads}, "
        f"{len(rows[0]['stage_times'])} stages x {base['reduction']['epochs_per_stage']} epoch(s), "
        f"CIFAR-10 (rebuilt copy) subset of {base['data']['train_subset']} images"
    )
    print(
        "| strategy | K | total s | vs PC-DARTS (none, K=4) | vs none, same K | peak RSS MiB | "
        "RSS after data MiB | derived val acc | per-stage wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        same_k = next(x for x in rows if x["strategy"] == "none" and x["k"] == r["k"])
        stages = " ".join(f"{s['wall_s']:.1f}" for s in r["stage_times"])
        print(
            f"| {r['strategy']} | {r['k']} | {r['search_time_s']:.1f} | "
            f"{r['search_time_s'] / ref['search_time_s']:.2f} | "
            f"{r['search_time_s'] / same_k['search_time_s']:.2f} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_after_data_mib']:.0f} | "
            f"{r['derived_val_acc']:.3f} | {stages} |"
        )
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nruns and results.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
