"""A newcomer's first hour, timed: clone, install, the smoke study, its report, and a search and a
retraining on a held-out class folder, each command as the README gives it.

The class folder is made from CIFAR-10's *test* batch (never searched or trained on by the smoke
study): 10 classes, 400 training and 100 test images each, upscaled to 96 px PNGs so that the
loader has to resize them, as with photos. Every step runs in a fresh clone of the committed tree
(``git clone`` of this checkout: uncommitted changes are not in it) with its own virtual environment.

    python benchmarks/walkthrough.py --data-root ../shared/data --out docs/results/walkthrough_cpu
    python benchmarks/walkthrough.py --no-install ...   # reuse this checkout's .venv (no install timed)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bnas, run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

PER_CLASS = (400, 100)  # training, test images per class of the held-out folder
SIDE = 96


def make_folder(cifar_root: Path, out: Path) -> Path:
    """The held-out class folder from CIFAR-10's test batch (PNG, ``SIDE`` px)."""
    import numpy as np
    from PIL import Image

    from bnas.data.sources import DATASETS  # the project's own (safe) CIFAR reader

    arrays = DATASETS.get("cifar10").read_uncached(cifar_root)
    names, labels = arrays.classes, arrays.test_labels.numpy()
    images = arrays.test_images.permute(0, 2, 3, 1).numpy()
    for c, name in enumerate(names):
        idx = np.flatnonzero(labels == c)
        for split, chosen in (("train", idx[: PER_CLASS[0]]), ("test", idx[PER_CLASS[0] : sum(PER_CLASS)])):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i]).resize((SIDE, SIDE)).save(folder / f"{i:05d}.png")
    return out


def steps(data_root: Path, images: Path, install: bool) -> list[tuple[str, str]]:
    """(name, shell command) in the order a newcomer runs them (the README's commands)."""
    out = (
        [("install", "python -m venv .venv && .venv/bin/pip install -q -r requirements.txt")]
        if install
        else []
    )
    py = ".venv/bin/python"
    return out + [
        ("smoke study", f"{py} run.py --study bnas_smoke --data-root {data_root}"),
        ("report", f"{py} -m analysis.report --study bnas_smoke"),
        (
            "own images: search",
            f"{py} -m bnas search --config configs/search_tiny.yaml --set data.dataset=folder "
            f"--set data.image_size=16 --set data.train_subset=512 --data-root {images} --out runs/my_search",
        ),
        (
            "own images: retraining",
            f"{py} -m bnas retrain --genotype runs/my_search/genotype.json --dataset folder --image-size 16 "
            "--channels 8 --layers 5 --epochs 4 --batch-size 64 --max-batches 25 --set retrain.lr=0.1 "
            "--set retrain.cutout=0 --set retrain.drop_path_prob=0 --set retrain.auxiliary=false "
            f"--data-root {images} --device cpu --out runs/my_retrain",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="a folder holding cifar-10-batches-py/")
    p.add_argument("--out", type=Path, required=True, help="results.json and walkthrough.md go here")
    p.add_argument("--no-install", action="store_true", help="link this checkout's .venv instead")
    args = p.parse_args(argv)
    if not (args.data_root / "cifar-10-batches-py").is_dir():
        raise SystemExit(f"--data-root {args.data_root}: no cifar-10-batches-py/ in it")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bnas_walk_"))
    try:
        images = make_folder(args.data_root.resolve(), work / "my_photos")
        clone = work / "clone"
        t0 = time.perf_counter()
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        rows = [{"step": "clone", "command": "git clone", "seconds": time.perf_counter() - t0, "rc": 0}]
        if args.no_install:
            os.symlink(REPO / ".venv", clone / ".venv")
        logs: dict[str, str] = {}
        for name, cmd in steps(args.data_root.resolve(), images, not args.no_install):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, shell=True, cwd=clone, capture_output=True, text=True)
            took = time.perf_counter() - t0
            shown = cmd.replace(str(images), "my_photos")  # the temporary folder's name says nothing
            rows.append({"step": name, "command": shown, "seconds": took, "rc": proc.returncode})
            logs[name] = proc.stdout + proc.stderr
            print(f"{name}: {rows[-1]['seconds']:.1f} s (exit {proc.returncode})", flush=True)
            if proc.returncode != 0:
                print(logs[name][-3000:], file=sys.stderr)
                break
        venv = subprocess.run(
            ["du", "-sh", "--dereference-args", str(clone / ".venv")], capture_output=True, text=True
        )
        summary = _between(logs.get("smoke study", ""), "summary (", "Ray dashboard:")
        retrain = [
            ln.split(" -> ")[0]
            for ln in logs.get("own images: retraining", "").splitlines()
            if ln.startswith("done:")
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = provenance(sys.argv[1:] if argv is None else argv, time.perf_counter() - started, "walkthrough.py")
    meta["data"] = (
        f"CIFAR-10 (rebuilt copy) at {args.data_root}; held-out folder (my_photos) from its test batch, "
        f"{PER_CLASS[0]} + {PER_CLASS[1]} images per class"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "steps": rows, "venv": venv.stdout.split("\t")[0], "smoke_summary": summary}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Timed walkthrough", f"commit {meta['commit'][:7]}", "", "| step | seconds | exit | command |"]
    lines += ["|---|---|---|---|"] + [
        f"| {r['step']} | {r['seconds']:.1f} | {r['rc']} | `{r['command']}` |" for r in rows
    ]
    lines += ["", f"Virtual environment: {result['venv']} (pip's download cache as this machine had it)."]
    lines += ["", "The smoke study's summary:", "", "```"]
    lines += [*summary.splitlines(), "```", "", "The retraining on the held-out folder:", "", *retrain]
    (args.out / "walkthrough.md").write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


def _between(text: str, start: str, end: str) -> str:
    """The lines of ``text`` from the one starting with ``start`` up to the one starting with ``end``."""
    out, on = [], False
    for line in text.splitlines():
        if line.startswith(start):
            on = True
        elif on and line.startswith(end):
            break
        if on:
            out.append(line)
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
