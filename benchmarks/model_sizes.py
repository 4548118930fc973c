"""Model size at the paper's network size: the reference genotypes, binarized and in full precision.

For each reference genotype and binarization, the evaluation network of 20 cells with C = 36 (the
paper's CIFAR-10 setting; auxiliary head excluded) is built and measured by
:func:`bnas.model_size.size_report`: parameters, packed bytes (1 bit per binary weight, BN folded into
per-channel scales; also unfolded) and float32 bytes. Nothing is trained: the figures depend on the
architecture alone, so any machine gives the same ones.

    python benchmarks/model_sizes.py --out docs/results/model_sizes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provenance import provenance  # noqa: E402

from bnas.binarization import BinarySpec  # noqa: E402
from bnas.genotype import GENOTYPES  # noqa: E402
from bnas.model_size import size_report  # noqa: E402
from bnas.networks import build_eval_network  # noqa: E402

#: (genotype, binarization) pairs measured: the paper's searched cell binarized both ways, the
#: PC-DARTS and DARTS cells binarized and in full precision (the control).
PAIRS = (
    ("bnas_xnor", "xnor"),
    ("bnas_xnor", "pcnn"),
    ("pc_darts", "xnor"),
    ("pc_darts", "fp"),
    ("darts_v2", "xnor"),
    ("darts_v2", "fp"),
)


def measure(channels: int, layers: int) -> list[dict]:
    rows = []
    for name, method in PAIRS:
        net = build_eval_network(
            "cifar",
            GENOTYPES.get(name),
            C=channels,
            num_classes=10,
            layers=layers,
            auxiliary=False,
            spec=BinarySpec(method, "real"),
        )
        rows.append({"genotype": name, "binarization": method, **size_report(net)})
    return rows


def report(rows: list[dict], channels: int, layers: int, meta: dict) -> str:
    lines = [
        "# Model size at the paper's network size",
        "",
        f"commit `{meta['commit'][:12]}`; `{meta['command']}`; {meta['machine']}; {meta['wall_s']:.1f} s.",
        "",
        f"Evaluation networks of {layers} cells, C = {channels}, 10 classes, auxiliary head excluded; "
        "packed = 1 bit per binary weight, BN folded into per-channel scales (format v2); fp32 = every "
        "parameter and BN statistic as float32. Architecture only: no training, the same on any machine.",
        "",
        "| genotype | binarization | params | binary params | packed bytes | fp32 bytes | compression | "
        "compression, BN unfolded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['genotype']} | {r['binarization']} | {r['params']:,} | {r['binary_params']:,} | "
            f"{r['packed_bytes']:,} | {r['fp32_bytes']:,} | {r['compression']:.1f}x | "
            f"{r['compression_unfolded']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--out", type=Path, help="folder for results.json and sizes.md (default: print only)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = measure(args.channels, args.layers)
    meta = provenance(argv, time.perf_counter() - t0)
    text = report(rows, args.channels, args.layers, meta)
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=1) + "\n")
        (args.out / "sizes.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
