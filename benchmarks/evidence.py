"""Evidence: the paper's claims checked side by side, on the same data and seeds for every row.

What one run measures (issue 6; claims in method.md section 1):

* search: the ``performance`` reduction vs ``alpha`` vs ``none`` (plain PC-DARTS), for ``xnor``,
  ``pcnn`` and ``fp``: wall time, peak memory, ratio to PC-DARTS (``none``, same method and K);
* quality: every derived genotype retrained with the same budget, plus random genotypes from the
  same space and the reference genotypes, each retrained in every binarization method; test accuracy
  (mean and spread over the seeds) and packed size;
* the gap between each binarized result and its full-precision counterpart.

Profiles: ``cpu`` (about an hour on a 2-core machine, CIFAR-10 subset, shrunk networks) and ``gpu``
(paper-scale settings: one GPU per search; for a cluster run the same grid through ``run.py``).
``--miniature`` shrinks a profile to seconds (the test suite runs it). Searches run one at a time in
fresh processes so their wall time and peak memory are their own; retrainings run ``--jobs`` at once.

    python benchmarks/evidence.py --profile cpu --out results/evidence_cpu
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from bnas.config import DataConfig, config_from_dict  # noqa: E402
from bnas.data import ENV_ROOT, resolve_data_root, write_cifar10_subset  # noqa: E402
from bnas.genotype import GENOTYPES, Genotype, random_genotype  # noqa: E402

# The benchmark's own data.root: the rebuilt CIFAR-10 copy next to the repository.
SHARED_DATA = REPO.parent / "shared" / "data"

METHODS = ["xnor", "pcnn", "fp"]
STRATEGIES = ["performance", "alpha", "none"]
REFERENCES = ["bnas_xnor", "pc_darts"]

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {
        "seeds": [0, 1],
        "random_genotypes": 3,
        "search": {
            "threads": 1,
            "data": {"image_size": 16, "train_subset": 512},
            "search": {"layers": 4, "init_channels": 8, "sampling_k": 2, "batch_size": 32},
            "reduction": {
                "epochs_per_stage": 1,
                "warmup_epochs": 0,
                "rounds": 1,
                "subnet_epochs": 1,
                "subnet_batch_size": 64,
                "subnet_max_batches": 2,
            },
        },
        "retrain": {
            "threads": 1,
            "data": {"image_size": 16, "train_subset": 2000, "test_subset": 1000},
            "retrain": {
                "layers": 5,
                "init_channels": 8,
                "epochs": 4,
                "batch_size": 64,
                "cutout": 16,
                "drop_path_prob": 0.0,
                "lr": 0.05,
            },
        },
    },
    "gpu": {
        "seeds": [0, 1],
        "random_genotypes": 3,
        "search": {  # configs/search_paper.yaml's values (method.md [R] marks)
            "data": {"image_size": 32, "num_workers": 4},
            "search": {"layers": 6, "init_channels": 16, "sampling_k": 2, "batch_size": 128},
            "reduction": {
                "epochs_per_stage": 5,
                "warmup_epochs": 3,
                "rounds": 3,
                "subnet_epochs": 1,
                "subnet_batch_size": 400,
            },
        },
        "retrain": {  # the DARTS protocol (method.md section 8)
            "data": {"image_size": 32, "num_workers": 4},
            "retrain": {"layers": 20, "init_channels": 36, "epochs": 600, "batch_size": 96},
        },
    },
}

MINIATURE = {
    "random_genotypes": 3,
    "search": {
        "threads": 1,
        "data": {"image_size": 8, "train_subset": 40},
        "search": {
            "layers": 3,
            "init_channels": 4,
            "sampling_k": 2,
            "batch_size": 20,
            "ops": ["skip_connect", "max_pool_3x3", "sep_conv_3x3"],
        },
        "reduction": {
            "epochs_per_stage": 1,
            "warmup_epochs": 0,
            "rounds": 1,
            "subnet_epochs": 1,
            "subnet_batch_size": 20,
            "subnet_max_batches": 1,
        },
    },
    "retrain": {
        "threads": 1,
        "data": {"image_size": 8, "train_subset": 40, "test_subset": 20},
        "retrain": {"layers": 3, "init_channels": 4, "epochs": 1, "batch_size": 20, "auxiliary": False},
    },
}


def _deep_merge(a: dict, b: dict) -> dict:
    out = json.loads(json.dumps(a))
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------- one job each
def _search_job(cfg_dict: dict, out: str) -> dict:
    from bnas.search import run_search

    cfg = config_from_dict(cfg_dict, "evidence search")
    t0 = time.perf_counter()
    res = run_search(cfg, out, resume=True, log=None)
    return {"genotype": res.genotype.to_dict(), "process_wall_s": time.perf_counter() - t0, **res.final}


def _retrain_job(cfg_dict: dict, genotype: dict, out: str) -> dict:
    from bnas.retrain import retrain

    cfg = config_from_dict(cfg_dict, "evidence retrain")
    return retrain(cfg, Genotype.from_dict(genotype), out, resume=True, log=None)


def _run_jobs(fn, jobs: list[tuple], workers: int, fresh: bool, say) -> list[dict]:
    """Run ``fn(*args)`` for every job: in this process (workers=0) or in spawned processes."""
    if workers == 0:
        out = []
        for i, args in enumerate(jobs):
            out.append(fn(*args))
            say(f"  {i + 1}/{len(jobs)} done")
        return out
    ctx = mp.get_context("spawn")
    results: list[dict | None] = [None] * len(jobs)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1 if fresh else None) as pool:
        futs = {pool.submit(fn, *args): i for i, args in enumerate(jobs)}
        for n, fut in enumerate(cf.as_completed(futs)):
            results[futs[fut]] = fut.result()
            say(f"  {n + 1}/{len(jobs)} done")
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------- the protocol
def run_protocol(
    profile: str, out: Path, data_root: str, miniature: bool = False, jobs: int = 2, say=print
) -> dict:
    spec = PROFILES[profile]
    if miniature:
        spec = _deep_merge(spec, MINIATURE)
    seeds, n_random = spec["seeds"], spec["random_genotypes"]
    # Every process reads only the images the protocol uses (one balanced subset, written once to
    # the results folder): fast to load, and peak memory is the model's rather than the pickles'.
    root = str(Path(data_root).absolute())
    subsets = [spec[k]["data"].get("train_subset") for k in ("search", "retrain")]
    out.mkdir(parents=True, exist_ok=True)
    if None not in subsets:
        test_n = spec["retrain"]["data"].get("test_subset")
        root = str(
            write_cifar10_subset(
                DataConfig(root=root, train_subset=max(subsets), test_subset=test_n), out / "data"
            )
        )
    base = {
        "data": {"root": root},
        "device": "cpu" if profile == "cpu" else "auto",
    }
    t_start = time.perf_counter()

    # 1. Searches: every method x strategy, same data and seed, one at a time, each in a fresh process.
    search_cfgs = []
    for m in METHODS:
        for s in STRATEGIES:
            d = _deep_merge(
                _deep_merge(base, spec["search"]),
                {"seed": seeds[0], "binarization": {"method": m}, "reduction": {"strategy": s}},
            )
            config_from_dict(d, f"evidence profile {profile}")  # fail before any work
            search_cfgs.append(((m, s), d))
    say(f"[1/2] {len(search_cfgs)} searches ({profile}{' miniature' if miniature else ''})")
    search_res = _run_jobs(
        _search_job,
        [(d, str(out / "search" / f"{m}_{s}")) for (m, s), d in search_cfgs],
        0 if jobs == 0 else 1,
        fresh=True,
        say=say,
    )
    searches = []
    for ((m, s), _), r in zip(search_cfgs, search_res, strict=True):
        searches.append({"method": m, "strategy": s, **r})
    for r in searches:
        ref = next(x for x in searches if x["method"] == r["method"] and x["strategy"] == "none")
        r["time_vs_pcdarts"] = r["search_time_s"] / ref["search_time_s"]

    # 2. Retraining: derived genotypes in their own method; random and reference genotypes in every method.
    search_ops = spec["search"]["search"].get("ops")
    candidates: list[tuple[str, str, Genotype]] = []  # (label, method, genotype)
    for r in searches:
        candidates.append((f"derived/{r['strategy']}", r["method"], Genotype.from_dict(r["genotype"])))
    for i in range(n_random):
        g = random_genotype(1000 + i, ops=search_ops)
        candidates += [(f"random/{i}", m, g) for m in METHODS]
    for name in REFERENCES:
        candidates += [(f"reference/{name}", m, GENOTYPES.get(name)) for m in METHODS]
    retrain_jobs, keys = [], []
    for label, m, g in candidates:
        for seed in seeds:
            d = _deep_merge(_deep_merge(base, spec["retrain"]), {"seed": seed, "binarization": {"method": m}})
            retrain_jobs.append(
                (d, g.to_dict(), str(out / "retrain" / f"{label.replace('/', '_')}_{m}_s{seed}"))
            )
            keys.append((label, m, seed, g.digest))
    say(f"[2/2] {len(retrain_jobs)} retrainings ({len(candidates)} genotype x method, {len(seeds)} seeds)")
    retrain_res = _run_jobs(_retrain_job, retrain_jobs, jobs, fresh=False, say=say)
    runs = [
        {"label": k[0], "method": k[1], "seed": k[2], "digest": k[3], **r}
        for k, r in zip(keys, retrain_res, strict=True)
    ]

    # 3. Aggregate: mean and spread over seeds; the gap to the same row in full precision.
    rows = []
    for label, m, g in candidates:
        accs = [r["test_acc"] for r in runs if r["label"] == label and r["method"] == m]
        first = next(r for r in runs if r["label"] == label and r["method"] == m)
        rows.append(
            {
                "label": label,
                "method": m,
                "digest": g.digest,
                "acc_mean": statistics.fmean(accs),
                "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "n_seeds": len(accs),
                "packed_bytes": first["packed_bytes"],
                "fp32_bytes": first["fp32_bytes"],
                "params": first["params"],
            }
        )
    for row in rows:
        fp = next(x for x in rows if x["label"] == row["label"] and x["method"] == "fp")
        row["gap_to_fp"] = row["acc_mean"] - fp["acc_mean"]
        row["size_vs_fp"] = row["packed_bytes"] / fp["packed_bytes"]
    results = {
        "profile": profile,
        "miniature": miniature,
        "seeds": seeds,
        "data_root": data_root,
        "settings": {"search": spec["search"], "retrain": spec["retrain"]},
        "searches": searches,
        "retrain_runs": runs,
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
        "machine": _machine(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(markdown(results))
    _plots(results, out)
    return results


def _machine() -> dict:
    import os
    import platform

    import torch

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [
        f"# Evidence, profile `{res['profile']}`{' (miniature)' if res['miniature'] else ''}",
        "",
        f"CIFAR-10 (rebuilt copy) at {s['search']['data']['image_size']} px. Search: "
        f"{s['search']['data']['train_subset']} training images split train/val, "
        f"{s['search']['search']['layers']} cells, C={s['search']['search']['init_channels']}, "
        f"K={s['search']['search']['sampling_k']}. "
        f"Retraining: {s['retrain']['data']['train_subset']} train / "
        f"{s['retrain']['data']['test_subset']} test images, {s['retrain']['retrain']['layers']} cells, "
        f"C={s['retrain']['retrain']['init_channels']}, {s['retrain']['retrain']['epochs']} epochs, "
        f"seeds {res['seeds']}. Machine: {res['machine']['cpu_count']} CPU cores, "
        f"torch {res['machine']['torch']}, GPU {res['machine']['cuda']}. Total {res['wall_s'] / 60:.1f} min.",
        "",
        "## Search cost",
        "",
        "| method | strategy | search s | vs PC-DARTS (`none`) | peak RSS MiB "
        "| derived val acc (shared weights) "
        "| genotype |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["searches"]:
        lines.append(
            f"| {r['method']} | {r['strategy']} | {r['search_time_s']:.1f} | {r['time_vs_pcdarts']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['derived_val_acc']:.3f} | `{r['genotype_digest']}` |"
        )
    lines += [
        "",
        "## Retrained accuracy (test split), mean ± std over seeds",
        "",
        "| genotype | method | test acc % | gap to fp (points) | packed KiB | vs fp size | params |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(res["rows"], key=lambda r: (r["label"], METHODS.index(r["method"]))):
        lines.append(
            f"| {r['label']} | {r['method']} | {100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} | "
            f"{100 * r['gap_to_fp']:+.1f} | {r['packed_bytes'] / 1024:.1f} | {r['size_vs_fp']:.2f} | "
            f"{r['params']:,} |"
        )
    return "\n".join(lines) + "\n"


def _plots(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"xnor": "tab:blue", "pcnn": "tab:orange", "fp": "tab:gray"}
    markers = {"derived": "o", "random": "x", "reference": "s"}
    for r in res["rows"]:
        kind = r["label"].split("/")[0]
        ax.errorbar(
            r["packed_bytes"] / 1024,
            100 * r["acc_mean"],
            yerr=100 * r["acc_std"],
            fmt=markers[kind],
            color=colors[r["method"]],
            alpha=0.8,
        )
    for m, c in colors.items():
        ax.plot([], [], "o", color=c, label=m)
    for k, mk in markers.items():
        ax.plot([], [], mk, color="k", label=k)
    ax.set_xscale("log")
    ax.set_xlabel("packed model size (KiB, log)")
    ax.set_ylabel("test accuracy % (CIFAR-10 rebuilt copy)")
    ax.set_title("Accuracy vs packed size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_size.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['method']}\n{r['strategy']}" for r in res["searches"]]
    ax.bar(
        range(len(labels)),
        [r["search_time_s"] for r in res["searches"]],
        color=[colors[r["method"]] for r in res["searches"]],
    )
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("search wall time (s)")
    ax.set_title("Search cost per method and reduction strategy")
    fig.tight_layout()
    fig.savefig(out / "search_time.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--miniature", action="store_true", help="shrink the profile to seconds (for tests)")
    p.add_argument("--data-root", help=f"CIFAR-10 folder (else ${ENV_ROOT}, else {SHARED_DATA})")
    p.add_argument("--jobs", type=int, default=2, help="retrainings at once (0: all in this process)")
    p.add_argument("--out", default="results/evidence", help="results folder")
    args = p.parse_args(argv)
    # The one precedence of every entry point: --data-root, else $BNAS_DATA_ROOT, else the configured root.
    data_root = resolve_data_root(args.data_root, str(SHARED_DATA), os.environ)
    res = run_protocol(args.profile, Path(args.out), str(data_root), args.miniature, args.jobs)
    print(markdown(res))
    print(f"results in {Path(args.out).absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
