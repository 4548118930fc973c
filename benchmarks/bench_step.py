"""Milliseconds per super-network training step, binarization variants side by side in one process.

One step is what the search's weight step does per batch (``bnas.search.Search._weight_step``):
forward through the super-network (all remaining ops mixed by softmax(alpha), softmax(beta)),
cross-entropy (+ PCNN's projection loss), backward, gradient-norm clip, SGD with momentum; with
``--arch-step`` also a first-order architecture step (forward, grad w.r.t. alpha/beta, Adam).
Inputs are random tensors (the data pipeline is not measured).

Variants are built once and run **alternately**: every round times one step of each variant, the
order rotating from round to round, so that load from other processes on a shared CPU hits all of
them alike; on CPU the clock is the process's CPU time, which leaves out the time other processes
hold the cores. The median over rounds is reported with the ratio to ``fp`` at the same K. Defaults:
5 cells, C=8, batch 32, 16x16 inputs, all 8 operations on every edge, 1 thread (issue: search speed).

    python benchmarks/bench_step.py                                   # the default table
    python benchmarks/bench_step.py --steps 12 --profile xnor:4       # + torch.profiler top ops
    python benchmarks/bench_step.py --variants fp:2,xnor:2 --device cuda --batch 64
    python benchmarks/bench_step.py --variants xnor:4,xnor:4:compiled   # torch.compile: its cost, its gain

A ``:compiled`` variant runs the step through ``torch.compile`` (inductor), as ``runtime.compile``
does; its first step (compilation, wall time) is reported beside the median, with the number of steps
after which compiling pays for itself against the same variant uncompiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bnas.binarization import BINARIZATIONS, BinarySpec, projection_loss, reset_projection_terms  # noqa: E402
from bnas.operations import OPS  # noqa: E402
from bnas.supernet import SuperNetwork  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pcdarts_reference import PCDartsNetwork  # noqa: E402

#: The variant name of PC-DARTS's own network design (full precision, all 8 ops mixed).
REFERENCE = "pcdarts"

#: fp at K=2 is in the default list so that xnor at K=2 has its ratio at the same K.
DEFAULT_VARIANTS = "fp:4,xnor:4,xnor_channel:4,pcnn:4,fp:2,xnor:2"
# Optimizer settings of the search (bnas.config.SearchConfig defaults [R]); they do not change the cost.
LR, MOMENTUM, WEIGHT_DECAY, GRAD_CLIP = 0.025, 0.9, 5e-4, 5.0
ARCH_LR, ARCH_BETA1, ARCH_WEIGHT_DECAY = 0.01, 0.5, 1e-3
PCNN_LAMBDA = 1e-4  # BinarySpec default [R]


@dataclass
class Variant:
    method: str
    k: int
    net: SuperNetwork
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    per_edge: bool = False
    compiled: bool = False
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def label(self) -> str:
        suffix = f":{PER_EDGE}" if self.per_edge else f":{COMPILED}" if self.compiled else ""
        return f"{self.method}:{self.k}{suffix}"


#: Variant suffix: the mixed pass one edge at a time (``runtime.batch_edges: false``).
PER_EDGE = "per-edge"
#: Variant suffix: the forward pass through torch.compile (``runtime.compile: true``).
COMPILED = "compiled"


def parse_variants(text: str) -> list[tuple[str, int, bool]]:
    """``"fp:4,xnor:2:per-edge"`` -> [("fp", 4, ""), ("xnor", 2, "per-edge")]; methods are checked
    against the registry; ``pcdarts:K`` is PC-DARTS's own network design (:mod:`pcdarts_reference`, full
    precision); the ``:per-edge`` suffix runs the edges one at a time instead of batched, ``:compiled``
    the forward pass through torch.compile."""
    out = []
    for item in text.split(","):
        method, _, rest = item.strip().partition(":")
        k, _, suffix = rest.partition(":")
        if method != REFERENCE:
            BINARIZATIONS.get(method)  # unknown names raise with the valid list
        bad_suffix = suffix not in ("", PER_EDGE, COMPILED) or (suffix and method == REFERENCE)
        if not k.isdigit() or int(k) < 1 or bad_suffix:
            raise SystemExit(f"variant {item!r}: expected METHOD:K[:{PER_EDGE}|:{COMPILED}] with K >= 1")
        out.append((method, int(k), suffix))
    return out


def build(method: str, k: int, args: argparse.Namespace, device: torch.device, suffix: str = "") -> Variant:
    torch.manual_seed(0)  # the same initial weights and alphas for every variant of a K
    if method == REFERENCE:
        net = PCDartsNetwork(args.channels, 10, args.layers, k).to(device)
    else:
        ops = OPS.names()[: args.ops]
        if args.none_op == "exclude":
            ops = [o for o in ops if o != "none"]
        net = SuperNetwork(
            args.channels, 10, args.layers, ops, k, BinarySpec(method, args.activations, PCNN_LAMBDA)
        ).to(device)
        net.batch_edges = suffix != PER_EDGE
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    a_opt = torch.optim.Adam(
        net.arch_parameters(), lr=ARCH_LR, betas=(ARCH_BETA1, 0.999), weight_decay=ARCH_WEIGHT_DECAY
    )
    compiled = suffix == COMPILED
    forward = torch.compile(net) if compiled else net
    return Variant(method, k, net, w_opt, a_opt, suffix == PER_EDGE, compiled, forward)


def train_step(v: Variant, x: torch.Tensor, y: torch.Tensor, arch_step: bool) -> float:
    """One weight step as in the search (and optionally a first-order architecture step first)."""
    net = v.net
    forward = v.forward if v.forward is not None else net
    if arch_step:
        arch = net.arch_parameters()
        grads = torch.autograd.grad(F.cross_entropy(forward(x), y), arch)
        v.a_opt.zero_grad(set_to_none=True)
        for p, g in zip(arch, grads, strict=True):
            p.grad = g
        v.a_opt.step()
    reset_projection_terms(net)
    loss = F.cross_entropy(forward(x), y)
    total = loss
    if v.method == "pcnn":
        total = loss + projection_loss(net, PCNN_LAMBDA).to(loss.device)
    v.w_opt.zero_grad(set_to_none=True)
    total.backward()
    nn.utils.clip_grad_norm_(net.weight_parameters(), GRAD_CLIP)
    v.w_opt.step()
    for p in net.arch_parameters():
        p.grad = None
    return loss.item()  # .item() synchronises a GPU, so the step is timed whole


def profile(v: Variant, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, top: int) -> str:
    """Top ops by self CPU time over ``args.profile_steps`` steps of one variant."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            train_step(v, x, y, args.arch_step)
    sort = "self_device_time_total" if x.is_cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=40)


def write_results(
    args: argparse.Namespace, rows: list[dict], report: list[str], wall_s: float, argv: list[str] | None
) -> None:
    """``results.json`` (provenance, arguments, rows) and ``step.md`` (the printed table) in ``args.out``."""
    from provenance import provenance

    args.out.mkdir(parents=True, exist_ok=True)
    meta = provenance(sys.argv[1:] if argv is None else argv, wall_s, Path(__file__).name)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "args": settings, "results": rows}, indent=2) + "\n"
    )
    header, table = report[0], report[1:]
    text = [
        "# Super-network step",
        f"commit {meta['commit'][:7]}",
        "",
        header + ".",
        "",
        "```",
        *table,
        "```",
    ]
    (args.out / "step.md").write_text("\n".join(text) + "\n")
    print(f"results written to {args.out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="METHOD:K list, comma separated")
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--ops", type=int, default=8, help="operations per edge (the first N of the registry)")
    p.add_argument(
        "--none-op",
        choices=["candidate", "exclude"],
        default="candidate",
        help="the project's variants: `none` mixed in (as PC-DARTS) or left out (search.none_op)",
    )
    p.add_argument("--activations", default="real", choices=["real", "binary"])
    p.add_argument("--steps", type=int, default=8, help="timed rounds (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="process CPU time (default on CPU: time other processes take is not counted) "
        "or wall time (default on GPU)",
    )
    p.add_argument("--arch-step", action="store_true", help="add a first-order architecture step")
    p.add_argument("--profile", default="", help="METHOD:K list to profile after timing")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--top", type=int, default=15, help="rows of the profile table")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument(
        "--out", type=Path, default=None, help="write results.json (with provenance) and step.md there"
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    report: list[str] = []

    def say(line: str) -> None:
        print(line)
        report.append(line)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = [build(m, k, args, device, pe) for m, k, pe in parse_variants(args.variants)]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)

    clock_name = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    first: dict[str, float] = {}  # wall time of each variant's first step (a compiled one compiles then)
    for r in range(args.warmup + args.steps):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:  # rotate the order every round
            t0, w0 = clock(), time.perf_counter()
            train_step(v, x, y, args.arch_step)
            if r == 0:
                first[v.label] = time.perf_counter() - w0
            if r >= args.warmup:
                times[v.label].append(clock() - t0)

    median = {label: statistics.median(t) * 1e3 for label, t in times.items()}
    say(
        f"super-network step: {args.layers} cells, C={args.channels}, batch {args.batch}, "
        f"{args.image_size}x{args.image_size}, {args.ops} ops/edge, activations {args.activations}, "
        f"{'+ arch step, ' if args.arch_step else ''}{device}, {torch.get_num_threads()} thread(s), "
        f"{clock_name} time, median of {args.steps} alternated rounds"
    )
    # Ratios to fp at the same K: of the medians, of the minima, and the median of the per-round ratios
    # (a variant and its fp ran seconds apart in each round, so a shared CPU's load mostly cancels).
    # With a pcdarts:K variant, every variant of that K is compared with it instead of fp.
    say(
        f"{'variant':<16}{'ms/step':>9}{'min':>8}{'max':>8}{'img/s':>7}"
        f"{'x ref (median)':>15}{'x ref (min)':>12}{'x ref (paired)':>15}   ref"
    )
    rows = []
    for v in variants:
        t, ms = times[v.label], median[v.label]
        ref = f"{REFERENCE}:{v.k}" if f"{REFERENCE}:{v.k}" in times else f"fp:{v.k}"
        if v.compiled and f"{v.method}:{v.k}" in times:
            ref = f"{v.method}:{v.k}"  # compiled against the same variant uncompiled
        fp = times.get(ref)
        if fp:
            ratios = (
                ms / statistics.median(fp) / 1e3,
                min(t) / min(fp),
                statistics.median(a / b for a, b in zip(t, fp, strict=True)),
            )
            cols = "".join(f"{r:>{w}.3f}" for r, w in zip(ratios, (15, 12, 15), strict=True))
        else:
            ratios, cols = (None, None, None), f"{'-':>15}{'-':>12}{'-':>15}"
        say(
            f"{v.label:<16}{ms:>9.1f}{min(t) * 1e3:>8.1f}{max(t) * 1e3:>8.1f}"
            f"{args.batch / ms * 1e3:>7.1f}{cols}   {ref if fp else '-'}"
        )
        rows.append(
            {
                "variant": v.label,
                "ms_per_step": round(ms, 2),
                "min_ms": round(min(t) * 1e3, 2),
                "reference": ref if fp else None,
                "ratio_to_fp": dict(zip(("median", "min", "paired"), ratios, strict=True)),
                "first_step_s": round(first[v.label], 3),
            }
        )
    for v in variants:
        eager = f"{v.method}:{v.k}"
        if v.compiled and eager in times:
            # Compilation pays for itself after (first step's extra time) / (time saved per step).
            extra = first[v.label] - first[eager]
            saved = (median[eager] - median[v.label]) / 1e3
            pays = f"after {extra / saved:.0f} steps" if saved > 0 else "never (no step is faster)"
            say(
                f"{v.label}: first step {first[v.label]:.1f} s (uncompiled {first[eager]:.2f} s), "
                f"{saved * 1e3:+.1f} ms/step saved: compiling pays for itself {pays}"
            )
            next(r for r in rows if r["variant"] == v.label)["pays_after_steps"] = (
                round(extra / saved) if saved > 0 else None
            )
    if args.json:
        print(json.dumps({"args": vars(args), "results": rows}, default=str))
    if args.out is not None:
        write_results(args, rows, report, time.perf_counter() - started, argv)

    by_label = {v.label: v for v in variants}
    for label in filter(None, (s.strip() for s in args.profile.split(","))):
        if label not in by_label:
            raise SystemExit(f"--profile {label!r} is not one of the variants {list(by_label)}")
        print(f"\nprofile of {label}, {args.profile_steps} steps, top {args.top} ops by self time:")
        print(profile(by_label[label], x, y, args, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
