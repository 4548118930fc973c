"""Class folders streamed vs held in memory: resident memory against the number of images, and the
streaming loader's images/s for 0, 1 and 2 DataLoader workers.

Two measurements, each in a fresh process (``--child``) so that a reading is that process's own:

* **memory** -- for every ``--counts`` N, a class-folder dataset of N generated JPEGs
  (``--side`` px, 10 classes) is read by each storage path: ``stream`` (file index + one pass over
  every image through :class:`~bnas.data.StreamingImageDataset` in a DataLoader without workers) and
  ``memory`` (:func:`~bnas.data.load_dataset`, every image decoded into one uint8 tensor). Reported:
  resident memory after the pass (``VmRSS``) and its peak (``VmHWM``) minus the process's resident
  memory after imports, and what the decoded images take (N x 3 x S x S bytes).
* **throughput** -- images/s of one pass of the streamed training loader (``--image-size``, the
  ImageNet augmentation: random resized crop, flip, colour jitter) over ``--throughput-images``
  ImageNet-like JPEGs (``--photo`` size, 500x375 by default), batch 64, for ``--workers`` 0 1 2;
  the first batch (worker start-up) is timed apart.

    python benchmarks/bench_stream_loader.py                              # 2k and 20k images, 0/1/2 workers
    python benchmarks/bench_stream_loader.py --counts 200 2000 --throughput-images 256   # a minute

Generated folders go under ``--work`` (default: a temporary folder, removed afterwards); results are
printed as a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def _make_folder(root: Path, n: int, h: int, w: int, classes: int = 10) -> Path:
    """N JPEGs of h x w in ``classes`` class folders (plus one test image per class); reused if present."""
    from bnas.testing import make_image_folder

    if (root / "done").is_file():
        return root
    make_image_folder(
        root,
        tuple(f"c{i:02d}" for i in range(classes)),
        per_class=n // classes,
        n_test=1,
        sizes=((h, w),),
        formats=(".jpg",),
        grayscale_every=0,
    )
    (root / "done").write_text("ok")
    return root


def _child_memory(root: Path, storage: str, side: int) -> dict[str, Any]:
    import torch

    from bnas.config import DataConfig
    from bnas.data import StreamingImageDataset, folder_index, load_dataset
    from bnas.runtime import rss_mib

    torch.set_num_threads(1)
    base = rss_mib("VmRSS")
    cfg = DataConfig(dataset="folder", root=str(root), image_size=side, storage=storage)
    index = folder_index(cfg)
    t0 = time.perf_counter()
    if storage == "stream":
        ds = StreamingImageDataset(index.root, index.train_files, index.train_labels)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=0)
        n = sum(len(y) for _, y in loader)
    else:
        n = len(load_dataset(cfg).train_labels)
    return {
        "images": n,
        "seconds": time.perf_counter() - t0,
        "rss_mib": rss_mib("VmRSS") - base,
        "peak_mib": rss_mib("VmHWM") - base,
        "decoded_mib": index.decoded_bytes(side) / 2**20,
    }


def _child_throughput(root: Path, workers: int, size: int) -> dict[str, Any]:
    import torch

    from bnas.config import DataConfig
    from bnas.data import retrain_loaders

    torch.set_num_threads(1)
    cfg = DataConfig(dataset="folder", root=str(root), image_size=size, storage="stream", num_workers=workers)
    train, _, _ = retrain_loaders(cfg, 64, 64, seed=0, transforms="imagenet")
    t0 = time.perf_counter()
    it = iter(train)
    first = len(next(it)[1])
    t1 = time.perf_counter()
    rest = sum(len(y) for _, y in it)
    t2 = time.perf_counter()
    return {
        "workers": workers,
        "first_batch_s": t1 - t0,
        "images": first + rest,
        "images_per_s": rest / (t2 - t1) if rest else float("nan"),
    }


def _run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", type=int, nargs="+", default=[2000, 20000], help="dataset sizes (images)")
    p.add_argument("--side", type=int, default=64, help="side of the generated images and of image_size")
    p.add_argument("--storages", nargs="+", default=["stream", "memory"], choices=["stream", "memory"])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--throughput-images", type=int, default=1280)
    p.add_argument("--photo", type=int, nargs=2, default=[375, 500], metavar=("H", "W"))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--work", help="folder for the generated datasets (default: temporary)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, root, *rest = args.child
        res = (
            _child_memory(Path(root), rest[0], int(rest[1]))
            if kind == "memory"
            else _child_throughput(Path(root), int(rest[0]), int(rest[1]))
        )
        print(json.dumps(res))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        memory = []
        for n in args.counts:
            root = _make_folder(work / f"n{n}_s{args.side}", n, args.side, args.side)
            for storage in args.storages:
                memory.append(
                    {
                        "count": n,
                        "storage": storage,
                        **_run_child("memory", str(root), storage, str(args.side)),
                    }
                )
        photos = _make_folder(work / f"photos{args.throughput_images}", args.throughput_images, *args.photo)
        speed = [_run_child("throughput", str(photos), str(w), str(args.image_size)) for w in args.workers]

    print(
        f"resident memory after one pass over N generated {args.side}x{args.side} JPEGs "
        f"(MiB above the process after imports)"
    )
    print(f"{'N':>7}  {'storage':<7}  {'rss':>8}  {'peak':>8}  {'decoded':>8}  {'seconds':>8}")
    for r in memory:
        print(
            f"{r['count']:>7}  {r['storage']:<7}  {r['rss_mib']:>8.1f}  {r['peak_mib']:>8.1f}  "
            f"{r['decoded_mib']:>8.1f}  {r['seconds']:>8.1f}"
        )
    print(
        f"\nstreamed training loader, ImageNet augmentation to {args.image_size} px, "
        f"{args.photo[0]}x{args.photo[1]} JPEGs, batch 64, cpu count {os.cpu_count()}"
    )
    print(f"{'workers':>7}  {'images/s':>9}  {'first batch s':>13}")
    for r in speed:
        print(f"{r['workers']:>7}  {r['images_per_s']:>9.1f}  {r['first_batch_s']:>13.2f}")
    print(json.dumps({"memory": memory, "throughput": speed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
