"""Does the search decide on signal? The reduction mechanics side by side, several seeds each.

For each mechanics variant (the paper's as recalled, each fix alone, the fixes together), the BNAS
schedule of ``bench_schedules.py`` (K=4 unless ``--schedule`` says otherwise) runs with ``--seeds``
seeds on the same data at one of its scales, every search in its own process (``--jobs`` at once,
one torch thread each). From the searches' own outputs (``genotype.json`` and ``final.json``'s
per-stage ``diagnostics`` and ``subnets``) it prints, per variant:

* **shared edges**: the mean number of (cell, node, op, input) edges two seeds' genotypes share, and
  that over the exact expectation for two uniformly random genotypes of the space
  (:func:`bnas.diagnostics.random_shared_expectation`, computed, not assumed);
* **param-free** shares of the derived normal and reduction cells (a random cell: 3/7);
* **order rho**: Spearman's rho between a sampled sub-network's score and its evaluation position,
  pooled over stages and seeds (within-stage ranks), with its p-value and the number of scores;
* **SNR**: the median over stages and seeds of (spread of a stage's sub-network scores) / (standard
  error of one score on the validation images used);
* wall time (median ``search_time_s``), the proxy and the shared-weight accuracy (means over seeds).

    python benchmarks/bench_search_signal.py --scale tiny --fake --seeds 0 1     # seconds, a test runs it
    python benchmarks/bench_search_signal.py --scale cpu                          # ~1 h on 2 cores
    python benchmarks/bench_search_signal.py --scale cpu --variants paper all --seeds 0 1 2 3 4 5

Results (``results.json`` with every search's figures, ``signal.md``) land in ``--out``, with the
commit, the exact command, the machine and the wall time.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_schedules as bs  # noqa: E402  (puts the repository on the path)
from provenance import provenance  # noqa: E402

from bnas.diagnostics import (  # noqa: E402
    mean_pairwise_shared,
    param_free_share,
    pooled_order_correlation,
    random_shared_expectation,
)
from bnas.genotype import Genotype  # noqa: E402

#: The paper's mechanics as recalled, spelled out (the defaults may move; this variant must not).
PAPER: dict[str, Any] = {
    "reduction.subnet_weights": "shared",  # [R]
    "reduction.subnet_score": "accuracy",  # [P]
    "reduction.subnet_epochs": 1,  # [R] V
    "reduction.min_pool": 1,  # [R]
    "reduction.estimate": "edge",  # [P]
    "search.none_op": "candidate",  # [P]
    "search.max_param_free": None,  # [D] no cap
}
#: Each fix alone (on top of PAPER), then together. ``reduction.stages`` null: one stage fewer without
#: `none` (ops - 1 stages).
FIXES: dict[str, dict[str, Any]] = {
    "snapshot": {"reduction.subnet_weights": "snapshot"},
    "loss": {"reduction.subnet_score": "loss"},
    "v0": {"reduction.subnet_epochs": 0},
    "min_pool2": {"reduction.min_pool": 2},
    "exclude_none": {"search.none_op": "exclude", "reduction.stages": None},
    "ucb": {"reduction.strategy": "ucb"},
    "cap2": {"search.max_param_free": 2},
    "pooled": {"reduction.estimate": "pooled"},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},
    **FIXES,
    "all": {**FIXES["snapshot"], **FIXES["loss"], **FIXES["min_pool2"], **FIXES["exclude_none"]},
    "all_v0": {**FIXES["loss"], **FIXES["v0"], **FIXES["min_pool2"], **FIXES["exclude_none"]},
    "all_v0_cap2": {
        **FIXES["loss"],
        **FIXES["v0"],
        **FIXES["min_pool2"],
        **FIXES["exclude_none"],
        **FIXES["cap2"],
    },
    # More sampling rounds where scoring is forward passes only (no sub-network training).
    "all_v0_t8": {
        **FIXES["loss"],
        **FIXES["v0"],
        **FIXES["min_pool2"],
        **FIXES["exclude_none"],
        "reduction.rounds": 8,
    },
    "all_v0_pooled": {
        **FIXES["loss"],
        **FIXES["v0"],
        **FIXES["min_pool2"],
        **FIXES["exclude_none"],
        "reduction.estimate": "pooled",
    },
    "all_v0_t8_pooled": {
        **FIXES["loss"],
        **FIXES["v0"],
        **FIXES["min_pool2"],
        **FIXES["exclude_none"],
        "reduction.rounds": 8,
        "reduction.estimate": "pooled",
    },
    # Baselines on the same schedule: alpha alone decides, or nothing is removed (PC-DARTS's argmax).
    "alpha": {"reduction.strategy": "alpha"},
    "none": {"reduction.strategy": "none"},
    "defaults": {},  # exactly the project's defaults for these settings (variant_settings)
}
DEFAULT_VARIANTS = ("paper", "snapshot", "loss", "min_pool2", "exclude_none", "ucb", "all", "all_v0")


def variant_settings(name: str) -> dict[str, Any]:
    """The mechanics settings of variant ``name`` (PAPER, then its own); ``defaults`` sets none: it runs
    bench_schedules' ``defaults`` schedule, what ``python -m bnas search`` runs with no flags."""
    if name == "defaults":
        return {}
    return {**PAPER, **VARIANTS[name]}


def schedule_for(name: str, default: str) -> bs.Schedule:
    return bs.SCHEDULES["defaults" if name == "defaults" else default]


def _stage_lists(final: dict[str, Any]) -> tuple[list[list[float]], list[float]]:
    """Per stage the sub-network scores in evaluation order, and the per-stage SNR figures."""
    scores, snr = [], []
    for st in final.get("stage_times", []):
        subs = st.get("subnets") or []
        if subs:
            scores.append([s["score"] for s in sorted(subs, key=lambda s: s["position"])])
        v = (st.get("diagnostics") or {}).get("snr")
        if isinstance(v, (int, float)) and v == v:
            snr.append(float(v))
    return scores, snr


def summarize(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """One row per variant (see the module docstring)."""
    expect = random_shared_expectation()
    rows = []
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        genos = [Genotype.from_dict(r["genotype"]) for r in mine]
        shared = mean_pairwise_shared(genos)
        groups: list[list[float]] = []
        snrs: list[float] = []
        for r in mine:
            g, s = _stage_lists(r["final"])
            groups += g
            snrs += s
        rho, p, n_scores = pooled_order_correlation(groups)
        rows.append(
            {
                "variant": name,
                "settings": variant_settings(name),
                "seeds": [r["seed"] for r in mine],
                "digests": [g.digest for g in genos],
                "shared_edges": shared,
                "random_expectation": expect,
                "shared_ratio": shared / expect if shared == shared else math.nan,
                "param_free_normal": statistics.fmean(param_free_share(g.normal) for g in genos),
                "param_free_reduce": statistics.fmean(param_free_share(g.reduce) for g in genos),
                "order_rho": rho,
                "order_p": p,
                "order_n": n_scores,
                "snr_median": statistics.median(snrs) if snrs else math.nan,
                "search_s": statistics.median(r["final"]["search_time_s"] for r in mine),
                "proxy_val_acc": statistics.fmean(r["final"]["proxy_val_acc"] for r in mine),
                "derived_val_acc": statistics.fmean(r["final"]["derived_val_acc"] for r in mine),
            }
        )
    return rows


def _f(v: float, fmt: str) -> str:
    return "-" if v is None or v != v else format(v, fmt)


def render(rows: list[dict[str, Any]], header: list[str]) -> str:
    lines = [
        *header,
        "",
        "| variant | shared edges (x random) | param-free normal / reduce | order rho (p, n) | "
        "SNR (median) | search s (median) | proxy acc | shared-weight acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {_f(r['shared_edges'], '.2f')} ({_f(r['shared_ratio'], '.2f')}x) | "
            f"{_f(r['param_free_normal'], '.2f')} / {_f(r['param_free_reduce'], '.2f')} | "
            f"{_f(r['order_rho'], '+.2f')} ({_f(r['order_p'], '.2g')}, {r['order_n']}) | "
            f"{_f(r['snr_median'], '.2f')} | {_f(r['search_s'], '.1f')} | {_f(r['proxy_val_acc'], '.3f')} | "
            f"{_f(r['derived_val_acc'], '.3f')} |"
        )
    lines += ["", "Variants (settings on top of the paper's mechanics as recalled):", ""]
    for r in rows:
        own = {k: v for k, v in r["settings"].items() if PAPER.get(k, "?") != v}
        what = (
            "the project's defaults (`python -m bnas search` with no flags)"
            if r["variant"] == "defaults"
            else (own or "the paper as recalled")
        )
        lines.append(f"- `{r['variant']}`: {what}; genotypes {' '.join(r['digests'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(bs.SCALES), default="cpu")
    p.add_argument("--schedule", choices=sorted(bs.SCHEDULES), default="bnas_k4")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(DEFAULT_VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--jobs", type=int, default=2, help="searches at once (one torch thread each)")
    p.add_argument("--data-root", help=f"CIFAR-10 folder (else $BNAS_DATA_ROOT, else {bs.SHARED_DATA})")
    p.add_argument("--fake", action="store_true", help="generated CIFAR-10 (bnas.testing.make_fake_cifar)")
    p.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more setting for every variant (repeatable)",
    )
    p.add_argument("--out", help="folder for configs, runs and results (default: a temporary folder)")
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("--seeds: at least 2 (agreement is measured between seeds)")
    import yaml

    extra: dict[str, Any] = {}
    for item in args.extra:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        extra[key.strip()] = yaml.safe_load(value)

    t0 = time.perf_counter()
    scale = bs.SCALES[args.scale]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_signal_"))
    out.mkdir(parents=True, exist_ok=True)
    data = bs.prepare_data(out, args.data_root, scale.train_images, args.fake)
    schedule = bs.SCHEDULES[args.schedule]

    jobs = []
    for name in args.variants:
        for seed in args.seeds:
            s = bs.build_settings(
                schedule_for(name, args.schedule),
                scale,
                seed,
                data,
                scale.train_images,
                scale.device,
                1,
                scale.epoch_factor,
                {**variant_settings(name), **extra},
            )
            jobs.append((name, seed, s))

    def one(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
        name, seed, s = job
        run_dir = out / "runs" / f"{name}_s{seed}"
        res = bs.run_search(s, out / "configs" / f"{name}_s{seed}.yaml", run_dir)
        genotype = json.loads((run_dir / "genotype.json").read_text())
        print(
            f"{name} seed {seed}: {res['genotype_digest']} search {res['search_time_s']:.1f}s "
            f"proxy {res['proxy_val_acc']:.3f}",
            file=sys.stderr,
            flush=True,
        )
        return {"variant": name, "seed": seed, "settings": s, "genotype": genotype, "final": res}

    with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(one, jobs))

    rows = summarize(runs, args.variants)
    wall = time.perf_counter() - t0
    meta = provenance(argv, wall, Path(__file__).name)
    header = [
        f"Search signal, scale={args.scale} ({scale.about}), schedule {schedule.label}, "
        f"{'generated' if args.fake else 'CIFAR-10 (rebuilt copy)'} data, "
        f"seeds {' '.join(map(str, args.seeds))}, "
        f"{args.jobs} searches at once, 1 thread each{'; extra ' + str(extra) if extra else ''}.",
        f"Random expectation of shared edges (two uniform random genotypes, exact): "
        f"{random_shared_expectation():.3f}.",
        f"commit {meta['commit'][:12]}{' (uncommitted changes)' if meta['dirty'] else ''}; "
        f"`{meta['command']}`; {meta['machine']}; wall {wall / 60:.1f} min.",
    ]
    report = render(rows, header)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=2))
    (out / "signal.md").write_text(report + "\n")
    print(report)
    print(f"\nresults.json and signal.md in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
