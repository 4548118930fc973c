"""Evidence with statistical power: does the search beat random binary architectures, and does the
proxy rank like retraining? One protocol, statistics per architecture (``evidence_stats.py``, scipy).

1. **Proxy check.** ``proxy_random`` random genotypes (:func:`bnas.genotype.random_genotype`) retrained at
   the short budget (every retraining seed) and at ``long_factor`` x its epochs (the first seed):
   Kendall's tau between the two rankings, and sigma_arch / sigma_seed from the short runs. Below
   tau 0.5 the report says plainly that the short budget cannot rank architectures.
2. **Searches.** The BNAS schedule with the project's defaults (``python -m bnas search`` with no
   flags, at the profile's sizes) and PC-DARTS's schedule (``reduction.strategy: none``, K=4, 50
   epochs, its own learning rates; ``benchmarks/bench_schedules.py``), ``search_seeds`` seeds each, xnor.
3. **Retraining.** Every derived genotype, ``proxy_random + extra_random`` random genotypes (the proxy
   check's first) and the reference genotypes, each with the same retraining seeds.
4. **Statistics per architecture** (mean over its seeds): each derived genotype's percentile among the
   random ones; one-sided Mann-Whitney U for BNAS vs random, PC-DARTS vs random and BNAS vs PC-DARTS; a
   bootstrap interval of the mean difference resampled over architectures; the minimum detectable
   effect at this sample size (80 % power, level 0.05); Kendall's tau between each search's proxies
   (``proxy_val_acc``, ``derived_val_acc``) and the retrained accuracy; the mean number of edges two
   seeds' genotypes share against random genotypes'; the parameter-free shares of derived and random
   cells.

Profiles: ``tiny`` (generated data, a few minutes: the test suite runs it), ``cpu`` (CIFAR-10 subset,
16 px, 5-cell networks: about 80 minutes on 2 cores) and ``gpu`` (one call on a lent device:
``--genotypes`` from a ``cpu`` run's results.json retrained at 32 px, 8 cells, C=16 on ~10k images,
several processes at once, the epoch count sized by a short pilot to fit ``--budget-s``; results
under ``--out``, as ``gpu_check.sh`` does).

    python benchmarks/evidence.py --profile tiny --fake --out /tmp/ev
    python benchmarks/evidence.py --profile cpu --out docs/results/evidence_cpu
    python benchmarks/evidence.py --profile gpu --genotypes docs/results/evidence_cpu/results.json \\
        --data-root <subset> --out $OUT --budget-s 420

Every results file records the commit, the exact command, the machine and the wall time.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_schedules as bs  # noqa: E402
import evidence_stats as st  # noqa: E402

from bnas.config import DataConfig, config_from_dict  # noqa: E402
from bnas.data import ENV_ROOT, resolve_data_root, write_cifar10_subset  # noqa: E402
from bnas.diagnostics import mean_pairwise_shared, param_free_share, random_shared_expectation  # noqa: E402
from bnas.genotype import GENOTYPES, Genotype, random_genotype  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
REFERENCES = ["bnas_xnor", "pc_darts", "darts_v2"]
#: Seeds of the random genotypes: disjoint from every search seed.
RANDOM_SEED0 = 1000
#: [D] Below this Kendall tau between the short and the long budget the short one cannot rank.
RANK_TAU = 0.5

#: The two searched schedules: the project's defaults, and PC-DARTS's own (in xnor).
SCHEDULES = {
    "bnas": {},
    "pcdarts": {**bs.PCDARTS, "binarization.method": "xnor"},
}

_CPU_SIZES = {"data.image_size": 16, "search.layers": 5, "search.init_channels": 8}
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "search_seeds": [0, 1, 2],
        "proxy_random": 4,
        "extra_random": 1,
        "retrain_seeds": [0, 1],
        "long_factor": 2,
        "train_images": 96,
        "test_images": 40,
        "search": {
            "threads": 1,
            "data.image_size": 8,
            "data.train_subset": 48,
            "search.layers": 3,
            "search.init_channels": 4,
            "search.batch_size": 24,
            "search.max_batches_per_epoch": 1,
            "reduction.epochs_per_stage": 1,
            "reduction.warmup_epochs": 0,
            "reduction.rounds": 1,
            "reduction.subnet_max_batches": 1,
            "search.proxy_steps": 2,
        },
        "pcdarts_epochs": 2,
        "retrain": {
            "threads": 1,
            "data.image_size": 8,
            "data.train_subset": 96,
            "data.test_subset": 40,
            "retrain.layers": 3,
            "retrain.init_channels": 4,
            "retrain.epochs": 1,
            "retrain.batch_size": 32,
            "retrain.auxiliary": False,
            "retrain.cutout": 0,
            "retrain.drop_path_prob": 0.0,
        },
    },
    "cpu": {
        "search_seeds": [0, 1, 2, 3, 4, 5],
        "proxy_random": 12,
        "extra_random": 4,
        "retrain_seeds": [0, 1],
        "long_factor": 4,
        "train_images": 2000,
        "test_images": 1000,
        # bench_schedules' cpu scale: 256 + 256 images of 16 px, 5 cells, C=8, the schedules' epochs
        "search": {"threads": 1, "data.train_subset": 512, **_CPU_SIZES},
        "pcdarts_epochs": None,
        "retrain": {
            "threads": 1,
            "data.image_size": 16,
            "data.train_subset": 2000,
            "data.test_subset": 1000,
            "retrain.layers": 5,
            "retrain.init_channels": 8,
            "retrain.epochs": 4,
            "retrain.batch_size": 64,
            "retrain.lr": 0.05,
            "retrain.cutout": 16,
            "retrain.drop_path_prob": 0.0,
        },
    },
}
#: The gpu profile's retraining (32 px, 8 cells, C=16); its epochs come from the pilot.
GPU_RETRAIN = {
    "device": "cuda",
    "data.image_size": 32,
    "data.train_subset": 10_000,
    "data.test_subset": 1000,
    "data.num_workers": 0,
    "retrain.layers": 8,
    "retrain.init_channels": 16,
    "retrain.batch_size": 128,
    "retrain.lr": 0.05,
    "retrain.cutout": 16,
    "retrain.drop_path_prob": 0.0,
}


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    return bs.nest(dotted)


# ---------------------------------------------------------------------------- one job each
def _search_job(settings: dict[str, Any], out: str) -> dict[str, Any]:
    from bnas.search import run_search

    cfg = config_from_dict(nested(settings), "evidence search")
    res = run_search(cfg, out, resume=True, log=None)
    return {"genotype": res.genotype.to_dict(), **{k: v for k, v in res.final.items() if k != "stage_times"}}


def _retrain_job(settings: dict[str, Any], genotype: dict, out: str) -> dict[str, Any]:
    from bnas.retrain import retrain

    cfg = config_from_dict(nested(settings), "evidence retrain")
    r = retrain(cfg, Genotype.from_dict(genotype), out, resume=True, log=None)
    return {k: r[k] for k in ("test_acc", "test_loss", "wall_time_s", "packed_bytes", "params")}


def _run_jobs(fn, jobs: list[tuple], workers: int, say) -> list[dict]:
    """``fn(*job)`` for every job, ``workers`` spawned processes at once (0: in this process)."""
    if workers == 0:
        return [fn(*j) for j in jobs]
    results: list[dict | None] = [None] * len(jobs)
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(fn, *j): i for i, j in enumerate(jobs)}
        for n, fut in enumerate(cf.as_completed(futs)):
            results[futs[fut]] = fut.result()
            if (n + 1) % 5 == 0 or n + 1 == len(jobs):
                say(f"  {n + 1}/{len(jobs)} done")
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------- the protocol
def _genotypes(spec: dict[str, Any]) -> tuple[list[tuple[str, Genotype]], list[tuple[str, Genotype]]]:
    """(the proxy check's random genotypes, the extra random ones), labelled ``random/<seed>``."""
    n, extra = spec["proxy_random"], spec["extra_random"]
    rand = [(f"random/{RANDOM_SEED0 + i}", random_genotype(RANDOM_SEED0 + i)) for i in range(n + extra)]
    return rand[:n], rand[n:]


def _retrain_settings(
    spec: dict[str, Any], root: str, seed: int, epochs: int | None = None
) -> dict[str, Any]:
    s = {"seed": seed, "device": "cpu", "data.root": root, "binarization.method": "xnor", **spec["retrain"]}
    if epochs is not None:
        s["retrain.epochs"] = epochs
    return s


def _search_settings(spec: dict[str, Any], name: str, root: str, seed: int) -> dict[str, Any]:
    s = {
        "seed": seed,
        "device": "cpu",
        "data.root": root,
        "data.val_fraction": 0.5,
        **SCHEDULES[name],
        **spec["search"],
    }
    if name == "pcdarts" and spec.get("pcdarts_epochs"):
        s["reduction.epochs_per_stage"] = spec["pcdarts_epochs"]
        s["reduction.warmup_epochs"] = min(s["reduction.warmup_epochs"], spec["pcdarts_epochs"] - 1)
    return s


def run_protocol(profile: str, out: Path, root: str, jobs: int, say=print) -> dict[str, Any]:
    spec = PROFILES[profile]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seeds = spec["retrain_seeds"]

    # 1. Proxy check: random genotypes at the short budget (every seed) and the long one (first seed).
    proxy_rand, extra_rand = _genotypes(spec)
    long_epochs = spec["retrain"]["retrain.epochs"] * spec["long_factor"]
    jobs_1, keys_1 = [], []
    for label, g in proxy_rand:
        for seed in seeds:
            jobs_1.append(
                (
                    _retrain_settings(spec, root, seed),
                    g.to_dict(),
                    str(out / "retrain" / f"{label.replace('/', '_')}_s{seed}"),
                )
            )
            keys_1.append((label, g.digest, seed, "short"))
        jobs_1.append(
            (
                _retrain_settings(spec, root, seeds[0], long_epochs),
                g.to_dict(),
                str(out / "retrain_long" / f"{label.replace('/', '_')}_s{seeds[0]}"),
            )
        )
        keys_1.append((label, g.digest, seeds[0], "long"))
    for s in (j[0] for j in jobs_1):
        config_from_dict(nested(s), f"evidence profile {profile}")  # fail before any work

    # 2. Searches.
    jobs_2, keys_2 = [], []
    for name in SCHEDULES:
        for seed in spec["search_seeds"]:
            s = _search_settings(spec, name, root, seed)
            config_from_dict(nested(s), f"evidence profile {profile}, {name}")
            jobs_2.append((s, str(out / "search" / f"{name}_s{seed}")))
            keys_2.append((name, seed))
    say(f"[1/3] {len(jobs_2)} searches ({', '.join(SCHEDULES)} x {len(spec['search_seeds'])} seeds)")
    searches = [
        {"schedule": k[0], "seed": k[1], **r}
        for k, r in zip(keys_2, _run_jobs(_search_job, jobs_2, jobs, say), strict=True)
    ]

    # 3. Retraining: the proxy check's runs, then derived, extra random and reference genotypes.
    candidates = [
        (f"derived/{r['schedule']}/s{r['seed']}", Genotype.from_dict(r["genotype"])) for r in searches
    ]
    candidates += extra_rand + [(f"reference/{n}", GENOTYPES.get(n)) for n in REFERENCES]
    jobs_3, keys_3 = list(jobs_1), list(keys_1)
    for label, g in candidates:
        for seed in seeds:
            jobs_3.append(
                (
                    _retrain_settings(spec, root, seed),
                    g.to_dict(),
                    str(out / "retrain" / f"{label.replace('/', '_')}_s{seed}"),
                )
            )
            keys_3.append((label, g.digest, seed, "short"))
    say(
        f"[2/3] {len(jobs_3)} retrainings ({len(proxy_rand) + len(candidates)} genotypes x "
        f"{len(seeds)} seeds, "
        f"{len(proxy_rand)} also at {spec['long_factor']}x the epochs)"
    )
    runs = [
        {"label": k[0], "digest": k[1], "seed": k[2], "budget": k[3], **r}
        for k, r in zip(keys_3, _run_jobs(_retrain_job, jobs_3, jobs, say), strict=True)
    ]

    say("[3/3] statistics")
    genos = {label: g for label, g in proxy_rand + candidates}
    results = {
        "profile": profile,
        "settings": {k: spec[k] for k in spec},
        "searches": searches,
        "retrain_runs": runs,
        **analyse(runs, searches, genos, spec),
    }
    results["wall_s"] = time.perf_counter() - t0
    return results


def analyse(runs: list[dict], searches: list[dict], genos: dict[str, Genotype], spec: dict) -> dict[str, Any]:
    """Architectures (mean over seeds) and every statistic of the module docstring."""
    short = [r for r in runs if r["budget"] == "short"]
    by_label: dict[str, list[float]] = {}
    for r in short:
        by_label.setdefault(r["label"], []).append(r["test_acc"])
    archs = []
    for label, accs in by_label.items():
        g = genos[label]
        archs.append(
            {
                "label": label,
                "group": label.split("/")[0]
                + ("/" + label.split("/")[1] if label.startswith("derived") else ""),
                "digest": g.digest,
                "acc_mean": statistics.fmean(accs),
                "accs": accs,
                "param_free_normal": param_free_share(g.normal),
                "param_free_reduce": param_free_share(g.reduce),
            }
        )
    rand = [a for a in archs if a["group"] == "random"]
    bnas = [a for a in archs if a["group"] == "derived/bnas"]
    pcd = [a for a in archs if a["group"] == "derived/pcdarts"]

    # Proxy check over the random genotypes that ran at both budgets.
    long = {r["label"]: r["test_acc"] for r in runs if r["budget"] == "long"}
    pair = [(statistics.fmean(by_label[k]), v) for k, v in long.items()]
    proxy_check = st.rank_agreement([a for a, _ in pair], [b for _, b in pair])
    checked = {k: by_label[k] for k in long}
    proxy_check.update(st.variance_components(checked))
    proxy_check["can_rank"] = proxy_check["tau"] >= RANK_TAU
    proxy_check["long_factor"] = spec["long_factor"]

    stats: dict[str, Any] = {"proxy_check": proxy_check}
    sd_rand = statistics.stdev(a["acc_mean"] for a in rand)
    for name, group in (("bnas", bnas), ("pcdarts", pcd)):
        accs = [a["acc_mean"] for a in group]
        for a, pct in zip(group, st.percentiles(accs, [r["acc_mean"] for r in rand]), strict=True):
            a["percentile_among_random"] = pct
        stats[f"{name}_vs_random"] = {
            **st.mann_whitney(accs, [a["acc_mean"] for a in rand]),
            "bootstrap": st.bootstrap_diff(accs, [a["acc_mean"] for a in rand]),
            "mde": st.minimum_detectable_effect(len(accs), len(rand), sd_rand),
        }
        found = [s for s in searches if s["schedule"] == name]
        digest_acc = {a["digest"]: a["acc_mean"] for a in group}
        for proxy in ("proxy_val_acc", "derived_val_acc"):
            x = [s[proxy] for s in found]
            y = [digest_acc[Genotype.from_dict(s["genotype"]).digest] for s in found]
            stats[f"{name}_{proxy}_tau"] = st.rank_agreement(x, y)
        gs = [Genotype.from_dict(s["genotype"]) for s in found]
        stats[f"{name}_agreement"] = {
            "shared_edges": mean_pairwise_shared(gs),
            "random_expectation": random_shared_expectation(),
        }
        stats[f"{name}_param_free"] = {
            "normal": statistics.fmean(a["param_free_normal"] for a in group),
            "reduce": statistics.fmean(a["param_free_reduce"] for a in group),
        }
    sd_pool = statistics.stdev([a["acc_mean"] for a in bnas + pcd]) if len(bnas + pcd) > 2 else sd_rand
    stats["bnas_vs_pcdarts"] = {
        **st.mann_whitney([a["acc_mean"] for a in bnas], [a["acc_mean"] for a in pcd]),
        "bootstrap": st.bootstrap_diff([a["acc_mean"] for a in bnas], [a["acc_mean"] for a in pcd]),
        "mde": st.minimum_detectable_effect(len(bnas), len(pcd), sd_pool),
    }
    stats["random_param_free"] = {
        "normal": statistics.fmean(a["param_free_normal"] for a in rand),
        "reduce": statistics.fmean(a["param_free_reduce"] for a in rand),
    }
    stats["random_sd"] = sd_rand
    return {"architectures": archs, "stats": stats, "conclusion": conclusion(stats)}


def _verdict(name: str, other: str, s: dict[str, Any]) -> str:
    b = s["bootstrap"]
    ci = f"{100 * b['diff']:+.1f} points (95 % CI {100 * b['low']:+.1f} to {100 * b['high']:+.1f})"
    if s["p"] < 0.05:
        return (
            f"{name} beat {other} at p = {s['p']:.3f} (one-sided Mann-Whitney, n = {s['n_a']} vs "
            f"{s['n_b']}): {ci}."
        )
    return (
        f"{name} did not beat {other} detectably (p = {s['p']:.2f}, n = {s['n_a']} vs {s['n_b']}): {ci}; "
        f"no effect larger than the minimum detectable effect {100 * s['mde']:.1f} points (80 % power, "
        "level 0.05) is present at this sample size."
    )


def conclusion(stats: dict[str, Any]) -> dict[str, str]:
    pc = stats["proxy_check"]
    rank = (
        f"The short budget ranks architectures like {pc['long_factor']}x its epochs: Kendall tau "
        f"{pc['tau']:.2f} "
        f"(p = {pc['p']:.2g}, n = {pc['n']})."
        if pc["can_rank"]
        else f"The short budget CANNOT rank architectures: Kendall tau {pc['tau']:.2f} (p = {pc['p']:.2g}, "
        f"n = {pc['n']}) against {pc['long_factor']}x its epochs, below {RANK_TAU}; sigma_arch "
        f"{100 * pc['sigma_arch']:.1f} points against sigma_seed {100 * pc['sigma_seed']:.1f}. "
        "The comparisons "
        "below are about accuracy at this budget only."
    )
    return {
        "proxy": rank,
        "bnas_vs_random": _verdict("BNAS-derived architectures", "random ones", stats["bnas_vs_random"]),
        "pcdarts_vs_random": _verdict(
            "PC-DARTS-derived architectures", "random ones", stats["pcdarts_vs_random"]
        ),
        "bnas_vs_pcdarts": _verdict(
            "BNAS-derived architectures", "PC-DARTS-derived ones", stats["bnas_vs_pcdarts"]
        ),
    }


# ---------------------------------------------------------------------------- report
def markdown(res: dict[str, Any]) -> str:
    s, m = res["stats"], res["meta"]
    pc = s["proxy_check"]
    lines = [
        f"# Evidence, profile `{res['profile']}`",
        "",
        f"commit `{m['commit'][:12]}`{' (uncommitted changes)' if m['dirty'] else ''}; `{m['command']}`; "
        f"{m['machine']}; {res['wall_s'] / 60:.1f} min; {m['data']}.",
        "",
        "## Conclusions",
        "",
        *[f"- {v}" for v in res["conclusion"].values()],
        "",
        f"## Proxy check (random genotypes, short budget vs {pc['long_factor']}x its epochs)",
        "",
        f"Kendall tau {pc['tau']:.2f} (p = {pc['p']:.2g}, n = {pc['n']}); sigma_arch "
        f"{100 * pc['sigma_arch']:.2f} "
        f"points, sigma_seed {100 * pc['sigma_seed']:.2f} points ({pc['n_arch']} architectures x "
        f"{pc['n_seeds']} "
        "seeds).",
        "",
        "## Per group (architecture means over the retraining seeds)",
        "",
        "| group | n | test acc % mean | sd | min | max | param-free normal / reduce | seed "
        "agreement (shared "
        "edges, x random) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[str, list[dict]] = {}
    for a in res["architectures"]:
        groups.setdefault(a["group"], []).append(a)
    for g, items in groups.items():
        accs = [100 * a["acc_mean"] for a in items]
        agree = ""
        name = g.split("/")[-1] if g.startswith("derived") else None
        if name and f"{name}_agreement" in s:
            ag = s[f"{name}_agreement"]
            agree = f"{ag['shared_edges']:.2f} ({ag['shared_edges'] / ag['random_expectation']:.2f}x)"
        pf_n = statistics.fmean(a["param_free_normal"] for a in items)
        pf_r = statistics.fmean(a["param_free_reduce"] for a in items)
        lines.append(
            f"| {g} | {len(items)} | {statistics.fmean(accs):.2f} | "
            f"{statistics.stdev(accs) if len(accs) > 1 else 0:.2f} | {min(accs):.2f} | {max(accs):.2f} | "
            f"{pf_n:.2f} / {pf_r:.2f} | {agree} |"
        )
    lines += [
        "",
        "## Tests",
        "",
        "| comparison | U | one-sided p | P(a beats b) | diff, points (95 % CI) | MDE, points |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("bnas_vs_random", "pcdarts_vs_random", "bnas_vs_pcdarts"):
        t = s[key]
        b = t["bootstrap"]
        lines.append(
            f"| {key.replace('_', ' ')} | {t['U']:.0f} | {t['p']:.3f} | {t['prob_a_beats_b']:.2f} | "
            f"{100 * b['diff']:+.2f} ({100 * b['low']:+.2f} to {100 * b['high']:+.2f}) | "
            f"{100 * t['mde']:.2f} |"
        )
    lines += ["", "Kendall tau of each search's proxy against its genotype's retrained accuracy:", ""]
    for name in ("bnas", "pcdarts"):
        for proxy in ("proxy_val_acc", "derived_val_acc"):
            t = s[f"{name}_{proxy}_tau"]
            lines.append(f"- {name}, {proxy}: tau {t['tau']:.2f} (p = {t['p']:.2g}, n = {t['n']})")
    lines += [
        "",
        "## Derived genotypes",
        "",
        "| search | genotype | retrained acc % | percentile among random |",
        "|---|---|---|---|",
    ]
    for a in res["architectures"]:
        if a["group"].startswith("derived"):
            lines.append(
                f"| {a['label']} | `{a['digest']}` | {100 * a['acc_mean']:.2f} | "
                f"{a.get('percentile_among_random', math.nan):.0f} |"
            )
    return "\n".join(lines) + "\n"


def _plot(res: dict[str, Any], out: Path) -> None:
    from matplotlib.figure import Figure

    groups: dict[str, list[float]] = {}
    for a in res["architectures"]:
        groups.setdefault(a["group"], []).append(100 * a["acc_mean"])
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    names = list(groups)
    for i, n in enumerate(names):
        ax.scatter([i] * len(groups[n]), groups[n], alpha=0.7)
        ax.hlines(statistics.fmean(groups[n]), i - 0.3, i + 0.3, color="k")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("retrained test accuracy % (mean over seeds)")
    ax.set_title("One point per architecture; bar: the group's mean")
    fig.savefig(out / "accuracy_by_group.png", dpi=120)


# ---------------------------------------------------------------------------- gpu profile
def run_gpu(
    genotypes_file: Path, out: Path, root: str, budget_s: float, jobs: int, say=print
) -> dict[str, Any]:
    """Retrain a cpu run's architectures at the gpu profile's sizes, ``jobs`` processes at once on one
    GPU, the epochs sized by a pilot so that everything fits in ``budget_s`` (see the module docstring)."""
    cpu = json.loads(genotypes_file.read_text())
    archs = [a for a in cpu["architectures"]]
    genos = {a["label"]: Genotype.from_dict(_find_genotype(cpu, a)) for a in archs}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pilot_label = archs[0]["label"]
    pilot = _retrain_job(
        {"seed": 0, "data.root": root, "binarization.method": "xnor", **GPU_RETRAIN, "retrain.epochs": 1},
        genos[pilot_label].to_dict(),
        str(out / "pilot"),
    )
    epoch_s = pilot["wall_time_s"]
    left = budget_s - (time.perf_counter() - t0)
    # The pilot ran alone; `jobs` at once share the GPU: assume they overlap to half the serial time.
    epochs = max(1, int(left * jobs * 0.5 / (epoch_s * len(archs) * 1.15)))
    say(
        f"pilot: {epoch_s:.1f} s per epoch alone; {len(archs)} architectures x {epochs} epochs, "
        f"{jobs} at once"
    )
    job_list = [
        (
            {
                "seed": 0,
                "data.root": root,
                "binarization.method": "xnor",
                **GPU_RETRAIN,
                "retrain.epochs": epochs,
            },
            genos[a["label"]].to_dict(),
            str(out / "retrain" / a["label"].replace("/", "_")),
        )
        for a in archs
    ]
    runs = [
        {"label": a["label"], "digest": a["digest"], "seed": 0, "budget": "short", **r}
        for a, r in zip(archs, _run_jobs(_retrain_job, job_list, jobs, say), strict=True)
    ]
    by_label = {r["label"]: r["test_acc"] for r in runs}
    groups: dict[str, list[float]] = {}
    for a in archs:
        groups.setdefault(a["group"], []).append(by_label[a["label"]])
    rand = groups.get("random", [])
    tests = {}
    for g in ("derived/bnas", "derived/pcdarts"):
        if g in groups and len(rand) > 1:
            tests[g] = {
                **st.mann_whitney(groups[g], rand),
                "bootstrap": st.bootstrap_diff(groups[g], rand),
                "mde": st.minimum_detectable_effect(len(groups[g]), len(rand), statistics.stdev(rand)),
            }
    cpu_acc = {a["label"]: a["acc_mean"] for a in archs}
    labels = [a["label"] for a in archs]
    return {
        "profile": "gpu",
        "epochs": epochs,
        "pilot_epoch_s": epoch_s,
        "runs": runs,
        "groups": {g: statistics.fmean(v) for g, v in groups.items()},
        "tests": tests,
        "cpu_vs_gpu_rank": st.rank_agreement([cpu_acc[k] for k in labels], [by_label[k] for k in labels]),
        "wall_s": time.perf_counter() - t0,
    }


def _find_genotype(cpu: dict[str, Any], arch: dict[str, Any]) -> dict:
    label = arch["label"]
    if label.startswith("reference/"):
        return GENOTYPES.get(label.split("/", 1)[1]).to_dict()
    if label.startswith("random/"):
        return random_genotype(int(label.split("/")[1])).to_dict()
    name, seed = label.split("/")[1], int(label.split("/")[2][1:])
    return next(s["genotype"] for s in cpu["searches"] if s["schedule"] == name and s["seed"] == seed)


# ---------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=[*PROFILES, "gpu"], default="cpu")
    p.add_argument("--data-root", help=f"CIFAR-10 folder (else ${ENV_ROOT}, else {SHARED_DATA})")
    p.add_argument("--fake", action="store_true", help="generated CIFAR-10 (bnas.testing.make_fake_cifar)")
    p.add_argument("--jobs", type=int, default=2, help="searches / retrainings at once (0: in this process)")
    p.add_argument("--genotypes", help="gpu profile: a cpu run's results.json")
    p.add_argument("--budget-s", type=float, default=420, help="gpu profile: seconds for the whole run")
    p.add_argument("--out", default="results/evidence", help="results folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.fake:
        from bnas.testing import make_fake_cifar

        spec = PROFILES.get(args.profile, PROFILES["tiny"])
        root = str(make_fake_cifar(out / "data", n_train=spec["train_images"], n_test=spec["test_images"]))
        data_note = "generated data (bnas.testing.make_fake_cifar)"
    else:
        base = resolve_data_root(args.data_root, str(SHARED_DATA), os.environ)
        if args.profile == "gpu":
            root, data_note = str(base), f"CIFAR-10 (rebuilt copy) at {base}"
        else:
            spec = PROFILES[args.profile]
            root = str(
                write_cifar10_subset(
                    DataConfig(
                        root=str(base), train_subset=spec["train_images"], test_subset=spec["test_images"]
                    ),
                    out / "data",
                )
            )
            data_note = (
                f"CIFAR-10 (rebuilt copy), a balanced subset of {spec['train_images']} training and "
                f"{spec['test_images']} test images"
            )
    if args.profile == "gpu":
        if not args.genotypes:
            p.error("--profile gpu needs --genotypes (a cpu run's results.json)")
        res = run_gpu(Path(args.genotypes), out, root, args.budget_s, max(1, args.jobs))
    else:
        res = run_protocol(args.profile, out, root, args.jobs)
    from provenance import provenance

    res["meta"] = {**provenance(argv, time.perf_counter() - t0, "evidence.py"), "data": data_note}
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    if args.profile != "gpu":
        (out / "results.md").write_text(markdown(res))
        _plot(res, out)
        print(markdown(res))
    else:
        print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1, default=str))
    print(f"results in {out.absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
