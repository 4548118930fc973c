"""Search cost of the paper's BNAS schedule against PC-DARTS's own schedule, side by side.

The paper's headline (method.md section 1) is a search "40 % faster than PC-DARTS" (0.6x the wall time)
at comparable accuracy. That compares two *schedules*, not two strategies at equal epochs:

* **PC-DARTS** [C]: K=4, batch 256, 50 epochs in one stage (the first 15 train the weights only), nothing
  removed (``reduction.strategy: none``, argmax at the end), SGD lr 0.1, weight decay 3e-4, arch lr 6e-4;
  in full precision (``fp``, the original) and binarized (``xnor``).
* **BNAS** (method.md section 6, the project's defaults [R]): performance-based reduction, 7 stages x L=5
  epochs (W=3 warm-up), T=3 sampling rounds of V=1 epoch at sub-network batch 400, batch 128, xnor; with
  K=2 (recalled from the paper) and K=4 (PC-DARTS's K).

Every search runs in its own process (``python -m bnas search --config FILE --out DIR --no-resume
--quiet``), so its peak memory is its own; all see the same data on the same machine. Round ``r`` runs
every schedule once with seed ``seeds[r mod len(seeds)]``, the order reversed every other round so that
load from other processes hits all schedules alike. Wall time is the median over rounds, the derived
genotype's validation accuracy (shared weights) the mean over seeds. The per-phase breakdown is read
from each search's ``final.json["phase_times_s"]`` ("-" where the search does not report a phase).

    python benchmarks/bench_schedules.py --scale tiny --fake        # seconds, generated data
    python benchmarks/bench_schedules.py --scale cpu                # ~30 min on a 2-core CPU
    python benchmarks/bench_schedules.py --scale gpu --device cuda  # paper sizes, hours
    python benchmarks/bench_schedules.py --schedules bnas_k4 none_k4 bnas_k2 none_k2   # equal epochs

Results (``results.json``, ``schedules.csv``, ``schedules.md``) land in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO), str(REPO / "benchmarks")):  # run as a script from anywhere
    if _path not in sys.path:
        sys.path.insert(0, _path)

#: Training images the paper's search uses per epoch: half of CIFAR-10's 50,000 [C] (the other half
#: drives alpha/beta). GPU-days are extrapolated to it.
PAPER_IMAGES_PER_EPOCH = 25_000
CIFAR10_TRAIN_IMAGES = 50_000
#: Phases of ``final.json["phase_times_s"]`` (bnas.search's PhaseTimer), in the order printed.
PHASES = (
    "data",
    "weight_step",
    "arch_step",
    "validation",
    "subnet_train",
    "subnet_eval",
    "checkpoint",
    "derive",
)
REFERENCES = ("pcdarts_fp", "pcdarts_xnor")  # the ratios' denominators
SHARED_DATA = REPO.parent / "shared" / "data"  # the rebuilt CIFAR-10 copy next to the repository

# ---------------------------------------------------------------------------------------------- schedules
# PC-DARTS's released search script (train_search.py, CIFAR-10); marks: [C] released code, [D] ours.
PCDARTS: dict[str, Any] = {
    "reduction.strategy": "none",  # [C] no reduction: argmax of the mixed weights at the end
    "reduction.stages": 1,  # [D] all epochs in one stage (``none`` removes nothing between stages)
    "reduction.epochs_per_stage": 50,  # [C] 50 search epochs
    "reduction.warmup_epochs": 15,  # [C] architecture steps start at epoch 15
    "search.sampling_k": 4,  # [C] partial channels: 1/4
    "search.batch_size": 256,  # [C]
    "search.layers": 8,  # [C] 8 cells (the tiny and cpu scales set the size of every schedule)
    "search.init_channels": 16,  # [C]
    "search.lr": 0.1,  # [C] SGD, cosine to lr_min
    "search.lr_min": 0.0,  # [C]
    "search.momentum": 0.9,  # [C]
    "search.weight_decay": 3e-4,  # [C]
    "search.arch_lr": 6e-4,  # [C] Adam
    "search.arch_weight_decay": 1e-3,  # [C]
    "search.validate_every": 1000,  # [C] train_search.py validates after the last epoch only
    "search.none_op": "candidate",  # [C] `none` is one of its 8 ops
    "runtime.batch_edges": False,  # [C] its code runs the edges one at a time (MixedOp per edge)
}
# BNAS (method.md section 6; configs/search_paper.yaml): the project's defaults, written out so that the
# benchmark keeps testing the paper's schedule if a default moves. Marks: [P] paper, [R] recalled.
BNAS: dict[str, Any] = {
    "binarization.method": "xnor",  # [P]
    "reduction.strategy": "performance",  # [P]
    "reduction.stages": 7,  # [P] 8 ops per edge -> 7 stages to one
    "reduction.epochs_per_stage": 5,  # [R] L
    "reduction.warmup_epochs": 3,  # [R] W (first stage)
    "reduction.rounds": 3,  # [R] T
    "reduction.subnet_epochs": 1,  # [R] V
    "reduction.subnet_batch_size": 400,  # [R]
    "search.batch_size": 128,  # [R]
    "search.lr": 0.025,  # [R]
    "search.weight_decay": 5e-4,  # [R]
    "search.arch_lr": 0.01,  # [R]
    # The reduction mechanics as recalled (the project's defaults depart from them: README, search signal).
    "search.none_op": "candidate",  # [P] `none` is one of the 8 ops
    "search.max_param_free": None,  # [P] no cap on parameter-free ops
    "reduction.subnet_weights": "shared",  # [R] sub-networks train one after another, changes kept
    "reduction.subnet_score": "accuracy",  # [P]
    "reduction.estimate": "edge",  # [P]
    "reduction.min_pool": 1,  # [R] the lower-alpha half only
    "search.validate_every": 1,  # [C] DARTS: every epoch (the project's cadence until the defaults moved)
    "search.checkpoint_every": 1,  # [D] every epoch (likewise)
}


@dataclass(frozen=True)
class Schedule:
    """A named search schedule: dotted setting overrides (``python -m bnas settings`` names)."""

    label: str
    overrides: dict[str, Any]


SCHEDULES: dict[str, Schedule] = {
    "pcdarts_fp": Schedule("PC-DARTS, fp", {**PCDARTS, "binarization.method": "fp"}),  # [C] the original
    "pcdarts_xnor": Schedule("PC-DARTS, xnor", {**PCDARTS, "binarization.method": "xnor"}),  # [D]
    # PC-DARTS's schedule on this project's engine (edges batched): the schedule's share of the saving.
    "pcdarts_xnor_batched": Schedule(
        "PC-DARTS, xnor, edges batched",
        {**PCDARTS, "binarization.method": "xnor", "runtime.batch_edges": True},
    ),  # [D]
    "bnas_k2": Schedule("BNAS, K=2", {**BNAS, "search.sampling_k": 2}),  # [R] K=2
    "bnas_k4": Schedule("BNAS, K=4", {**BNAS, "search.sampling_k": 4}),  # [D] PC-DARTS's K
    # Equal-epoch controls (not run by default): BNAS's schedule with nothing removed and no sampled
    # sub-networks, i.e. what the performance strategy adds or saves at the same K and epochs.
    "none_k2": Schedule(
        "BNAS epochs, none, K=2", {**BNAS, "reduction.strategy": "none", "search.sampling_k": 2}
    ),
    "none_k4": Schedule(
        "BNAS epochs, none, K=4", {**BNAS, "reduction.strategy": "none", "search.sampling_k": 4}
    ),
    # What `python -m bnas search` runs with no flags: the project's defaults, whatever they are now.
    "defaults": Schedule("BNAS, the defaults", {}),
    # The defaults with torch.compile (inductor): is its compile time repaid within one search? On CPU
    # not (bench_step.py :compiled, docs/results/compile_cpu); a GPU may differ.
    "defaults_compiled": Schedule("BNAS, the defaults, compiled", {"runtime.compile": True}),
}
DEFAULT_SCHEDULES = ("pcdarts_fp", "pcdarts_xnor", "bnas_k2", "bnas_k4")

# How the engine runs, applied to EVERY schedule alike (so the comparison stays schedule vs schedule):
# ``paper`` validates the super-network and checkpoints after every epoch (DARTS's cadence);
# ``fast`` validates only after the last epoch, as PC-DARTS's own train_search.py does [C], and
# checkpoints every 5 epochs (and after every reduction). Neither changes the derived genotype: the
# per-epoch validation feeds only the logs (and ASHA on the platform), and checkpoints only resume.
ENGINES: dict[str, dict[str, Any]] = {
    "paper": {"search.validate_every": 1, "search.checkpoint_every": 1},
    "fast": {"search.validate_every": 1000, "search.checkpoint_every": 5},
}


# ------------------------------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class Scale:
    """Problem size. ``settings`` override every schedule's; epochs scale by ``epoch_factor``."""

    train_images: int | None  # search subset (train + validation); None = all of CIFAR-10's 50,000
    settings: dict[str, Any]
    epoch_factor: float = 1.0
    device: str = "cpu"
    threads: int | None = 1
    seeds: tuple[int, ...] = (0,)
    about: str = ""


SCALES: dict[str, Scale] = {
    # Seconds per search, for the test: 24 + 24 images of 8 px, one batch (all 24) per epoch and per
    # sub-network, one sampling round (T=1: 19 sampled sub-networks instead of 57, which would dominate
    # the test). Every schedule's batch is cut to the 24 images (a search refuses less than one batch).
    "tiny": Scale(
        48,
        {
            "data.image_size": 8,
            "search.layers": 3,
            "search.init_channels": 4,
            "search.batch_size": 24,
            "search.max_batches_per_epoch": 1,
            "reduction.subnet_max_batches": 1,
            "reduction.rounds": 1,
        },
        epoch_factor=0.2,
        about="smoke check: BNAS 7 stages x 1 epoch, T=1, against PC-DARTS 10 epochs (3 warm-up)",
    ),
    # Minutes: 256 + 256 images of 16 px, 5 cells, C=8 (platform.md's CPU table), the paper's epochs.
    # Measured one at a time earlier: BNAS K=2 254 s, PC-DARTS xnor 224 s, fp 191 s.
    "cpu": Scale(
        512,
        {"data.image_size": 16, "search.layers": 5, "search.init_channels": 8},
        seeds=(0, 1),
        about="the paper's epoch counts on a CPU-sized problem",
    ),
    # As "cpu", but every schedule keeps its own search network depth: PC-DARTS 8 cells [C], BNAS the
    # project's search.layers (6 [R]), which the paper's comparison includes; slower (PC-DARTS's 8 cells).
    "cpu_own_depth": Scale(
        512,
        {"data.image_size": 16, "search.init_channels": 8},
        seeds=(0, 1),
        about="the paper's epoch counts and each schedule's own cell count on a CPU-sized problem",
    ),
    # The `cpu` sizes with nothing else set: `python -m bnas search` with no flags (torch's threads too)
    # against PC-DARTS's schedule, >= 3 rounds (main() picks these schedules and rounds).
    "defaults": Scale(
        512,
        {"data.image_size": 16, "search.layers": 5, "search.init_channels": 8},
        threads=None,
        seeds=(0, 1, 2),
        about="the project's defaults at the cpu sizes against PC-DARTS's schedule",
    ),
    # The same comparison in seconds, for the test: tiny sizes and epochs.
    "defaults_tiny": Scale(
        48,
        {
            "data.image_size": 8,
            "search.layers": 3,
            "search.init_channels": 4,
            "search.batch_size": 24,
            "search.max_batches_per_epoch": 1,
            "reduction.subnet_max_batches": 1,
            "reduction.rounds": 1,
        },
        epoch_factor=0.2,
        threads=None,
        seeds=(0, 1, 2),
        about="smoke check of the defaults scale",
    ),
    # The paper's sizes: 25,000 + 25,000 images of 32 px, C=16, full epochs; the layers are each
    # schedule's own (PC-DARTS 8, BNAS the project's search.layers).
    "gpu": Scale(
        None,
        {"data.image_size": 32, "search.init_channels": 16, "data.num_workers": 4},
        device="cuda",
        threads=None,
        about="the paper's sizes",
    ),
}


def scale_epochs(settings: dict[str, Any], factor: float) -> dict[str, Any]:
    """Epoch counts times ``factor`` (half rounds up): L -> max(1, round(f L)), W -> min(round(f W), L).

    The same factor for every schedule keeps their shape (PC-DARTS 50 (15) epochs against BNAS 7 x 5
    (3)) while making both affordable; the sampling rounds T and sub-network epochs V are not scaled.
    """
    out = dict(settings)
    if factor == 1:
        return out
    if "reduction.epochs_per_stage" not in out:  # a schedule of defaults: scale the defaults
        from bnas.config import ReductionConfig

        d = ReductionConfig()
        out.setdefault("reduction.epochs_per_stage", d.epochs_per_stage)
        out.setdefault("reduction.warmup_epochs", d.warmup_epochs)
    epochs = max(1, math.floor(out["reduction.epochs_per_stage"] * factor + 0.5))
    out["reduction.epochs_per_stage"] = epochs
    warmup = math.floor(out.get("reduction.warmup_epochs", 0) * factor + 0.5)
    out["reduction.warmup_epochs"] = min(warmup, epochs)
    return out


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": 2}`` -> ``{"a": {"b": 1}, "c": 2}`` (the YAML layout of ``--config``)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def build_settings(
    schedule: Schedule,
    scale: Scale,
    seed: int,
    data_root: Path,
    n_images: int | None,
    device: str,
    threads: int | None,
    epoch_factor: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Dotted settings of one search: schedule, then the scale's sizes, epochs scaled by ``epoch_factor``."""
    s: dict[str, Any] = {
        "seed": seed,
        "device": device,
        "data.dataset": "cifar10",
        "data.root": str(data_root),
        "data.train_subset": n_images,
        "data.val_fraction": 0.5,  # [C] half the images drive alpha/beta
    }
    if threads is not None:
        s["threads"] = threads
    s.update(schedule.overrides)
    s.update(scale.settings)
    s.update(extra or {})
    return scale_epochs(s, epoch_factor)


def images_per_epoch(settings: dict[str, Any], n_images: int) -> int:
    """Training images one super-network epoch uses: the search split's train half, capped by
    ``search.max_batches_per_epoch`` x batch (bnas.data.search_split's rounding, no ``drop_last``)."""
    n_val = min(n_images - 1, max(1, round(n_images * settings["data.val_fraction"])))
    n_train = n_images - n_val
    cap = settings.get("search.max_batches_per_epoch")
    return n_train if cap is None else min(n_train, cap * settings["search.batch_size"])


# ------------------------------------------------------------------------------------------------ running
def prepare_data(out: Path, data_root: str | None, n_images: int | None, fake: bool) -> Path:
    """The folder every search reads: generated data, a written subset, or the CIFAR-10 folder itself.

    The folder is ``data_root`` (``--data-root``), else ``$BNAS_DATA_ROOT``, else ../shared/data: the
    precedence of every entry point (``bnas.data.resolve_data_root``).
    """
    if fake:
        try:  # bnas.testing is the helpers' new home; bnas.data held them before
            from bnas.testing import make_fake_cifar
        except ImportError:
            from bnas.data import make_fake_cifar  # type: ignore[attr-defined,no-redef]
        return make_fake_cifar(out / "data", n_train=n_images or CIFAR10_TRAIN_IMAGES, n_test=10)
    from bnas.config import DataConfig
    from bnas.data import resolve_data_root, write_cifar10_subset

    root = resolve_data_root(data_root, str(SHARED_DATA), os.environ)
    if not (root / "cifar-10-batches-py").is_dir():
        raise SystemExit(f"no CIFAR-10 under {root}: pass --data-root, or --fake for generated data")
    if n_images is None:
        return root

    # Each search process reads only its subset (written once, outside the repository), so its peak
    # memory is the search's own rather than the 60,000 images' pickles.
    cfg = DataConfig(root=str(root), train_subset=n_images, test_subset=10)
    return write_cifar10_subset(cfg, out / "data")


def run_search(settings: dict[str, Any], config: Path, run_dir: Path) -> dict[str, Any]:
    """One search in its own process; returns its ``final.json`` plus the process wall time."""
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(nest(settings), sort_keys=False))
    # --data-root too: the flag wins over $BNAS_DATA_ROOT, which would otherwise replace data.root.
    cmd = [
        sys.executable,
        "-m",
        "bnas",
        "search",
        "--config",
        str(config),
        "--data-root",
        str(settings["data.root"]),
        "--out",
        str(run_dir),
        "--no-resume",
        "--quiet",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"search failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return {"process_wall_s": wall, **json.loads((run_dir / "final.json").read_text())}


def plan(names: list[str], rounds: int, seeds: list[int]) -> list[tuple[int, int, str]]:
    """(round, seed, schedule) in run order: round r uses seeds[r mod len], reversed every other round."""
    return [(r, seeds[r % len(seeds)], n) for r in range(rounds) for n in (names[::-1] if r % 2 else names)]


# ------------------------------------------------------------------------------------------------ summary
def _median(values: list[float | None]) -> float | None:
    return statistics.median(values) if values and all(v is not None for v in values) else None


def summarize(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """One row per schedule: medians over rounds, accuracy mean over seeds, ratios to PC-DARTS."""
    rows = []
    for name in names:
        mine = [r for r in runs if r["schedule"] == name]
        by_seed: dict[int, list[float]] = {}
        for r in mine:
            by_seed.setdefault(r["seed"], []).append(r["derived_val_acc"])
        seed_acc = {s: statistics.fmean(v) for s, v in sorted(by_seed.items())}
        phases = {p: _median([r.get("phase_times_s", {}).get(p) for r in mine]) for p in PHASES}
        cuda = [s.get("peak_cuda_mib") for r in mine for s in r.get("stage_times", [])]
        search_s = statistics.median(r["search_time_s"] for r in mine)
        known = [v for v in phases.values() if v is not None]
        n_stages = min(len(r["stage_times"]) for r in mine)
        stage_wall = [statistics.median(r["stage_times"][i]["wall_s"] for r in mine) for i in range(n_stages)]
        stage_phases = [
            {p: _median([r["stage_times"][i].get("phases", {}).get(p) for r in mine]) for p in PHASES}
            for i in range(n_stages)
        ]
        rows.append(
            {
                "schedule": name,
                "label": SCHEDULES[name].label,
                "search_s": search_s,
                "process_s": statistics.median(r["process_wall_s"] for r in mine),
                "search_s_per_round": [r["search_time_s"] for r in mine],
                "epochs": mine[0]["epochs"],
                "stages": mine[0]["stages"],
                "images_per_epoch": mine[0]["images_per_epoch"],
                "phases_s": phases,
                "other_s": search_s - sum(known) if known else None,
                "stage_wall_s": stage_wall,
                "stage_phases_s": stage_phases,
                "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
                "peak_cuda_mib": max((c for c in cuda if c is not None), default=None),
                "derived_val_acc": statistics.fmean(seed_acc.values()),
                "proxy_val_acc": (
                    statistics.fmean(r["proxy_val_acc"] for r in mine)
                    if all("proxy_val_acc" in r for r in mine)
                    else None
                ),
                "derived_val_acc_per_seed": seed_acc,
                "days_at_25k": search_s * PAPER_IMAGES_PER_EPOCH / mine[0]["images_per_epoch"] / 86400,
                "device": mine[0]["device"],
            }
        )
    for row in rows:
        for ref in REFERENCES:
            base = next((r for r in rows if r["schedule"] == ref), None)
            row[f"vs_{ref}"] = row["search_s"] / base["search_s"] if base else None
            # The ratio within each round (the two ran back to back): its median and spread.
            mine = {r.get("round"): r["search_time_s"] for r in runs if r["schedule"] == row["schedule"]}
            theirs = {r.get("round"): r["search_time_s"] for r in runs if r["schedule"] == ref}
            mine.pop(None, None)
            per_round = [mine[k] / theirs[k] for k in sorted(mine) if k in theirs]
            row[f"vs_{ref}_per_round"] = per_round
    return rows


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    """``schedule / reference: median x (min-max over n rounds)`` for every pair measured in the same
    rounds (the reference rows themselves left out)."""
    lines = []
    for row in rows:
        for ref in REFERENCES:
            per = row.get(f"vs_{ref}_per_round") or []
            if row["schedule"] == ref or not per:
                continue
            lines.append(
                f"- {row['schedule']} / {ref}: {statistics.median(per):.2f}x "
                f"(min {min(per):.2f}, max {max(per):.2f} over {len(per)} rounds)"
            )
    return lines


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render(rows: list[dict[str, Any]], header: list[str]) -> str:
    """The Markdown report: header lines, the main table, the per-phase (and per-stage) table."""
    gpu = all(r["device"].startswith("cuda") for r in rows)
    days = "GPU-days @25k (extrap.)" if gpu else "CPU-days @25k (extrap., not GPU-days)"
    lines = [
        *header,
        "",
        f"| schedule | search s (median) | process s | vs PC-DARTS fp | vs PC-DARTS xnor | epochs | "
        f"img/epoch | peak RSS MiB | peak CUDA MiB | derived val acc (mean) | per seed | proxy acc (mean) | "
        f"{days} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = " ".join(f"{s}:{a:.3f}" for s, a in r["derived_val_acc_per_seed"].items())
        lines.append(
            f"| {r['schedule']} | {r['search_s']:.1f} | {r['process_s']:.1f} | "
            f"{_f(r['vs_pcdarts_fp'], '.2f')} | {_f(r['vs_pcdarts_xnor'], '.2f')} | {r['epochs']} | "
            f"{r['images_per_epoch']} | {r['peak_rss_mib']:.0f} | {_f(r['peak_cuda_mib'], '.0f')} | "
            f"{r['derived_val_acc']:.3f} | {per_seed} | {_f(r.get('proxy_val_acc'), '.3f')} | "
            f"{r['days_at_25k']:.3g} |"
        )
    ratios = ratio_lines(rows)
    if ratios:
        lines += [
            "",
            "Search time ratio within each round (back-to-back runs), median and spread:",
            "",
            *ratios,
        ]
    lines += [
        "",
        "Per-phase seconds (median over rounds; '-': not reported by the search):",
        "",
        "| schedule | " + " | ".join(PHASES) + " | other | per-stage wall s |",
        "|---" * (len(PHASES) + 3) + "|",
    ]
    for r in rows:
        cells = [_f(r["phases_s"][p], ".1f") for p in PHASES] + [_f(r["other_s"], ".1f")]
        stages = " ".join(f"{w:.1f}" for w in r["stage_wall_s"])
        lines.append(f"| {r['schedule']} | " + " | ".join(cells) + f" | {stages} |")
    return "\n".join(lines)


def write_outputs(
    out: Path, rows: list[dict[str, Any]], runs: list[dict[str, Any]], meta: dict[str, Any], report: str
) -> None:
    """results.json (everything), schedules.csv (one row per schedule), schedules.md (the report)."""
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=2))
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
        f.update({f"phase_{p}_s": v for p, v in r["phases_s"].items()})
        flat.append(f)
    with (out / "schedules.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    (out / "schedules.md").write_text(report + "\n")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    # A SIGTERM unwinds like Ctrl-C, so that subprocess.run kills the search it is waiting for.
    signal.signal(signal.SIGTERM, _terminate)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument(
        "--schedules",
        nargs="+",
        choices=sorted(SCHEDULES),
        help=f"default: {' '.join(DEFAULT_SCHEDULES)}; at the defaults scales: defaults pcdarts_fp",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help="runs of every schedule (timing: median over them); default 2, 3 at the defaults scales",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="seeds, one per round in turn (default: the scale's)")
    p.add_argument("--data-root", help=f"CIFAR-10 folder (else $BNAS_DATA_ROOT, else {SHARED_DATA})")
    p.add_argument("--fake", action="store_true", help="generated CIFAR-10 (bnas.testing.make_fake_cifar)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the scale's)")
    p.add_argument("--threads", type=int, help="torch CPU threads per search (default: the scale's)")
    p.add_argument("--epoch-factor", type=float, help="scale every schedule's epochs (default: the scale's)")
    p.add_argument(
        "--engine",
        choices=sorted(ENGINES),
        help="applied to every schedule: paper = validate and checkpoint every epoch; fast = "
        "validate after the last epoch only (PC-DARTS's code) and checkpoint every 5 epochs; "
        "default: none, each schedule runs its own cadence (the defaults: the project's)",
    )
    p.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more setting for every schedule (repeatable), e.g. reduction.subnet_eval_batches=1",
    )
    p.add_argument("--out", help="folder for configs, runs and results (default: a temporary folder)")
    args = p.parse_args(argv)
    extra = dict(ENGINES[args.engine]) if args.engine else {}
    for item in args.extra:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        extra[key.strip()] = yaml.safe_load(value)

    t_start = time.perf_counter()
    scale = SCALES[args.scale]
    at_defaults = args.scale.startswith("defaults")
    if args.schedules is None:
        args.schedules = ["defaults", "pcdarts_fp"] if at_defaults else list(DEFAULT_SCHEDULES)
    if args.rounds is None:
        args.rounds = 3 if at_defaults else 2
    seeds = list(args.seeds or scale.seeds)
    if args.rounds < max(1, len(seeds)):
        p.error(f"--rounds ({args.rounds}) must be at least the number of seeds ({len(seeds)})")
    factor = scale.epoch_factor if args.epoch_factor is None else args.epoch_factor
    if factor <= 0:
        p.error("--epoch-factor must be positive")
    device = args.device or scale.device
    threads = args.threads if args.threads is not None else scale.threads
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_schedules_"))
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, args.data_root, scale.train_images, args.fake)
    n_images = scale.train_images or CIFAR10_TRAIN_IMAGES

    runs = []
    for r, seed, name in plan(args.schedules, args.rounds, seeds):
        settings = build_settings(
            SCHEDULES[name], scale, seed, data, scale.train_images, device, threads, factor, extra
        )
        res = run_search(settings, out / "configs" / f"{name}_s{seed}.yaml", out / "runs" / f"r{r}_{name}")
        runs.append(
            {
                "round": r,
                "seed": seed,
                "schedule": name,
                "settings": settings,
                "images_per_epoch": images_per_epoch(settings, n_images),
                **res,
            }
        )
        print(
            f"round {r + 1}/{args.rounds} seed {seed} {name}: search {res['search_time_s']:.1f}s, "
            f"derived_val_acc {res['derived_val_acc']:.3f}",
            file=sys.stderr,
            flush=True,
        )

    rows = summarize(runs, args.schedules)
    scaled = ""
    if factor != 1:
        scaled = f"; BOTH schedules' epoch counts scaled by {factor:g} (T and V are not scaled)"
    header = [
        f"Search schedules, scale={args.scale} ({scale.about}), device={device}, threads={threads}, "
        f"{'generated' if args.fake else 'CIFAR-10 (rebuilt copy)'} data: {n_images} images, half for the "
        f"weights and half for alpha/beta{scaled}.",
        f"Engine {args.engine or 'none'}, for every schedule: {extra or 'each its own cadence'}.",
        f"{args.rounds} round(s), seeds {' '.join(map(str, seeds))}, order reversed every other round; "
        "search s = final.json search_time_s (process s adds interpreter start and data loading).",
        f"Days @25k = search s x ({PAPER_IMAGES_PER_EPOCH} / img/epoch) / 86400: a linear extrapolation to "
        "the paper's 25,000 training images per epoch, not a measurement.",
    ]
    from provenance import provenance

    prov = provenance(
        list(sys.argv[1:] if argv is None else argv), time.perf_counter() - t_start, Path(__file__).name
    )
    header.append(
        f"commit {prov['commit'][:12]}{' (uncommitted changes)' if prov['dirty'] else ''}; "
        f"`{prov['command']}`; "
        f"{prov['machine']}; wall {prov['wall_s'] / 60:.1f} min."
    )
    report = render(rows, header)
    meta = {
        **prov,
        "scale": args.scale,
        "engine": args.engine or "none",
        "extra_settings": extra,
        "device": device,
        "threads": threads,
        "epoch_factor": factor,
        "rounds": args.rounds,
        "seeds": seeds,
        "fake_data": args.fake,
        "data": str(data),
        "schedules": {n: SCHEDULES[n].overrides for n in args.schedules},
    }
    write_outputs(out, rows, runs, meta, report)
    print(report)
    print(f"\nconfigs, runs, results.json, schedules.csv and schedules.md in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
