"""Bad inputs as an adversarial user gives them, through the real entry points, each in its own process:
what each does now (exit status, first line of its error, a traceback or not, wall time).

The probes are those of the hardening issue (groups 2 to 7; the two-driver lock and a disk that fills
mid-study need a running study and live in ``tests/platform/test_faults.py``). Every probe names what
is expected: ``refused`` (exit 2, one ``error:`` line, no traceback, nothing created where the probe
says so) or ``handled`` (exit 0, the damage noted). Generated CIFAR-10 (``bnas.testing``), no Ray
cluster (``run.py --check`` reads the local machine as Ray would; runs are refused before Ray starts).

    python benchmarks/hardening_probes.py --out docs/results/hardening_probes
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Seconds a probe may take before it counts as a hang.
TIMEOUT_S = 120


@dataclass
class Probe:
    group: str
    name: str
    expected: str  # "refused" or "handled"
    argv: Callable[[Path], list[str]]  # the command, given the workspace
    setup: Callable[[Path], None] | None = None
    words: str = ""  # a phrase the error (or output) must hold


def _study(ws: Path, text: str, name: str = "probe.yaml") -> Path:
    path = ws / "studies" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _smoke_text(**replace: str) -> str:
    text = (REPO / "tune_configs" / "bnas_smoke.yaml").read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def run_py(
    ws: Path, *extra: str, study: str = "bnas_smoke", check: bool = True, out: str = "out"
) -> list[str]:
    args = [sys.executable, str(REPO / "run.py"), "--study", study, "--data-root", str(ws / "cifar")]
    args += ["--out", str(ws / out), "--mlflow-uri", f"sqlite:///{ws / 'mlflow.db'}", *extra]
    return [*args, "--check"] if check else [*args, "--no-dashboard", "--quiet"]


def bnas(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnas", *args]


def _billion_laughs(ws: Path) -> None:
    from bnas.testing import billion_laughs_yaml

    _study(ws, billion_laughs_yaml(), "laughs.yaml")


def _packed_run(ws: Path, edit: Callable[[dict], None] | None = None, image_size: int = 16) -> None:
    from bnas.eval_network import EvalNetwork
    from bnas.export import export_packed
    from bnas.genotype import GENOTYPES
    from bnas.testing import rewrite_packed_header

    run = ws / "run"
    run.mkdir(exist_ok=True)
    export_packed(EvalNetwork(GENOTYPES.get("bnas_xnor"), C=4, num_classes=10, layers=3), run / "model.bnas")
    (run / "config.json").write_text(json.dumps({"data": {"image_size": image_size}}))
    if edit is not None:
        rewrite_packed_header(run / "model.bnas", edit)


def _cifar_damage() -> dict[str, object]:
    """What ``data_batch_1`` is replaced with, by probe name."""
    import numpy as np

    return {
        "a pickled list": [1, 2, 3],
        "wrong shape": {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]},
        "label out of range": {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]},
    }


def _bad_cifar(ws: Path, damage: str) -> None:
    from bnas.testing import make_fake_cifar

    root = ws / "badcifar"
    make_fake_cifar(root)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(_cifar_damage()[damage], 2))


def _bad_cifar_search(ws: Path) -> list[str]:
    return bnas("search", "--data-root", str(ws / "badcifar"), "--out", str(ws / "s"), *TINY_SEARCH)


def _finished_search(ws: Path, edit: Callable[[dict], None]) -> None:
    import torch

    out = ws / "search"
    cmd = bnas("search", "--data-root", str(ws / "cifar"), "--out", str(out), "--quiet", *TINY_SEARCH)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, check=True, capture_output=True, cwd=ws, timeout=600, env=env)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, out / "checkpoint.pt")


TINY_SEARCH = [
    *("--set", "data.train_subset=96", "--set", "data.image_size=8", "--set", "search.layers=3"),
    *("--set", "search.init_channels=4", "--set", "search.batch_size=16", "--set", "reduction.stages=1"),
    *(
        "--set",
        "reduction.epochs_per_stage=1",
        "--set",
        "reduction.warmup_epochs=0",
        "--set",
        "search.ops=[skip_connect,max_pool_3x3]",
    ),
]


def _edit_position(ckpt: dict) -> None:
    ckpt["position"]["global_epoch"] = -5


PROBES: list[Probe] = [
    # 2. bounded work
    Probe(
        "2",
        "YAML billion laughs (340 bytes)",
        "refused",
        lambda ws: run_py(ws, study=str(ws / "studies" / "laughs.yaml")),
        _billion_laughs,
        "100,000 values",
    ),
    Probe(
        "2",
        "YAML nested 40,000 deep",
        "refused",
        lambda ws: run_py(ws, study=str(ws / "studies" / "deep.yaml")),
        lambda ws: _study(ws, "a: " + "[" * 40_000 + "]" * 40_000, "deep.yaml"),
        "nested more than 32",
    ),
    Probe(
        "2",
        "study file of 200 KB",
        "refused",
        lambda ws: run_py(ws, study=str(ws / "studies" / "big.yaml")),
        lambda ws: _study(ws, _smoke_text() + "#" + "x" * 200_000 + "\n", "big.yaml"),
        "100,000",
    ),
    Probe(
        "2",
        "model.bnas header: build C=1000, layers=100",
        "refused",
        lambda ws: bnas("export", str(ws / "run"), "--format", "packed", "--out", str(ws / "m.bnas")),
        lambda ws: _packed_run(ws, lambda h: h["build"].update(C=1000, layers=100)),
        "describes a network",
    ),
    Probe(
        "2",
        "model.bnas header: a key missing",
        "refused",
        lambda ws: bnas("export", str(ws / "run"), "--format", "packed", "--out", str(ws / "m.bnas")),
        lambda ws: _packed_run(ws, lambda h: h.pop("floats")),
        "header key 'floats'",
    ),
    Probe(
        "2",
        "data.image_size = 100000",
        "refused",
        lambda ws: run_py(ws, "--set", "fixed.data.image_size=100000"),
        None,
        "1024",
    ),
    Probe(
        "2",
        "summary --channels 1000000",
        "refused",
        lambda ws: bnas("summary", "--genotype", "bnas_xnor", "--channels", "1000000"),
        None,
        "",
    ),
    Probe(
        "2",
        "run folder config.json image_size 30000 (ONNX export)",
        "refused",
        lambda ws: bnas("export", str(ws / "run"), "--out", str(ws / "m.onnx")),
        lambda ws: _packed_run(ws, image_size=30000),
        "30000",
    ),
    Probe(
        "2",
        "a search step beyond memory (512 px, C=256)",
        "refused",
        lambda ws: run_py(
            ws, "--set", "fixed.data.image_size=512", "--set", "fixed.search.init_channels=256"
        ),
        None,
        "one search step needs at least",
    ),
    # 3. --check == the run's checks
    Probe(
        "3",
        "search.lr = .inf",
        "refused",
        lambda ws: run_py(ws, "--set", "fixed.search.lr=.inf"),
        None,
        "infinity",
    ),
    Probe(
        "3",
        "sampler n_startup_trials: abc (run, not --check)",
        "refused",
        lambda ws: run_py(ws, "--set", "sampler.options={n_startup_trials: abc}", check=False),
        None,
        "expects int",
    ),
    Probe(
        "3",
        "space samples data.root",
        "refused",
        lambda ws: run_py(ws, "--set", "space.data.root={choice: [a, b]}"),
        None,
        "cannot be sampled",
    ),
    Probe(
        "3",
        "retrain.overrides.device: cuda",
        "refused",
        lambda ws: run_py(ws, "--set", "retrain.overrides.device=cuda"),
        None,
        "cluster decides",
    ),
    Probe(
        "3",
        "seed 2**64",
        "refused",
        lambda ws: run_py(ws, "--set", "fixed.seed=18446744073709551616"),
        None,
        "4294967295",
    ),
    Probe(
        "3",
        "a value both fixed and sampled",
        "refused",
        lambda ws: run_py(ws, "--set", "fixed.search.sampling_k=2"),
        None,
        "also sampled",
    ),
    # 4. one error line
    Probe(
        "4",
        "--out is a file (run)",
        "refused",
        lambda ws: run_py(ws, check=False, out="afile"),
        lambda ws: (ws / "afile").write_text("x"),
        "",
    ),
    Probe(
        "4",
        "study_state.json truncated, --resume",
        "refused",
        lambda ws: run_py(ws, "--resume", check=False),
        lambda ws: ((ws / "out").mkdir(), (ws / "out" / "study_state.json").write_text('{"search": [')),
        "study_state.json",
    ),
    Probe(
        "4",
        "mlflow_runs.json mistyped, --resume",
        "refused",
        lambda ws: run_py(ws, "--resume", check=False),
        lambda ws: ((ws / "out").mkdir(), (ws / "out" / "mlflow_runs.json").write_text('{"runs": [1]}')),
        "mlflow_runs.json",
    ),
    *(
        Probe(
            "4",
            f"CIFAR batch: {damage}",
            "refused",
            lambda ws: bnas(
                "search", "--data-root", str(ws / "badcifar"), "--out", str(ws / "s"), *TINY_SEARCH
            ),
            lambda ws, damage=damage: _bad_cifar(ws, damage),
            "data_batch_1",
        )
        for damage in ("a pickled list", "wrong shape", "label out of range")
    ),
    Probe(
        "4",
        "export --out names a folder",
        "refused",
        lambda ws: bnas("export", str(ws / "run"), "--format", "packed", "--out", str(ws)),
        lambda ws: _packed_run(ws),
        "",
    ),
    Probe(
        "4",
        "export --out in a missing folder",
        "refused",
        lambda ws: bnas("export", str(ws / "run"), "--out", str(ws / "no" / "m.onnx")),
        lambda ws: _packed_run(ws),
        "",
    ),
    Probe(
        "4",
        "export --image-size 0",
        "refused",
        lambda ws: bnas("export", str(ws / "run"), "--image-size", "0", "--out", str(ws / "m.onnx")),
        lambda ws: _packed_run(ws),
        "",
    ),
    # 5. names
    Probe(
        "5",
        "study file named ...yaml",
        "refused",
        lambda ws: run_py(ws, study=str(ws / "studies" / "...yaml")),
        lambda ws: _study(ws, _smoke_text(), "...yaml"),
        "'..' is not a usable study name",
    ),
    Probe(
        "5",
        "study file named 'a b<i>.yaml'",
        "refused",
        lambda ws: run_py(ws, study=str(ws / "studies" / "a b<i>.yaml")),
        lambda ws: _study(ws, _smoke_text(), "a b<i>.yaml"),
        "is not a usable study name",
    ),
    # 7. resume trusts the folder
    Probe(
        "7",
        "search checkpoint with global_epoch -5",
        "refused",
        lambda ws: bnas(
            "search", "--data-root", str(ws / "cifar"), "--out", str(ws / "search"), *TINY_SEARCH
        ),
        lambda ws: _finished_search(ws, _edit_position),
        "its global_epoch is -5",
    ),
]


def run_probe(probe: Probe, base: Path) -> dict:
    """Run one probe in a fresh workspace; what it did."""
    from bnas.testing import make_fake_cifar

    ws = Path(tempfile.mkdtemp(prefix="probe", dir=base))
    make_fake_cifar(ws / "cifar")
    if probe.setup is not None:
        probe.setup(ws)
    before = sorted(p.name for p in ws.iterdir())
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    try:
        res = subprocess.run(
            probe.argv(ws), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ws, env=env
        )
        rc, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = None, "", f"(no answer within {TIMEOUT_S} s)"
    wall = time.perf_counter() - started
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error: ")]
    traceback = "Traceback (most recent call last)" in err
    created = sorted(set(p.name for p in ws.iterdir()) - set(before))
    if probe.expected == "refused":
        held = rc == 2 and len(error_lines) == 1 and not traceback and probe.words in err
    else:
        held = rc == 0 and not traceback and probe.words in out + err
    first = (error_lines or lines or [out.strip().splitlines()[-1] if out.strip() else ""])[0]
    return {
        "group": probe.group,
        "probe": probe.name,
        "expected": probe.expected,
        "rc": rc,
        "traceback": traceback,
        "created": created,
        "wall_s": round(wall, 2),
        "held": held,
        "message": first.replace(str(ws), "<ws>")[:300],
    }


def main(argv: list[str] | None = None) -> int:
    from provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="write results.json and probes.md there")
    p.add_argument("--only", default="", help="probes whose name contains this text")
    args = p.parse_args(argv)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bnasprobes") as base:
        for probe in PROBES:
            if args.only and args.only not in probe.name:
                continue
            row = run_probe(probe, Path(base))
            rows.append(row)
            mark = "ok  " if row["held"] else "FAIL"
            print(
                f"{mark} [{row['group']}] {row['probe']}: rc {row['rc']}, {row['wall_s']} s, {row['message']}"
            )
    held = sum(r["held"] for r in rows)
    print(f"{held} of {len(rows)} probes behave as expected")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = provenance(
            sys.argv[1:] if argv is None else argv, time.perf_counter() - started, Path(__file__).name
        )
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        table = [
            "| group | probe | expected | exit | traceback | wall s | as expected | first line |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            msg = r["message"].replace("|", "\\|")
            tb, ok = ("yes" if r["traceback"] else "no"), ("yes" if r["held"] else "NO")
            cells = (r["group"], r["probe"], r["expected"], r["rc"], tb, r["wall_s"], ok, msg)
            table.append("| " + " | ".join(str(c) for c in cells) + " |")
        head = [
            "# Hardening probes",
            f"commit {meta['commit'][:7]}",
            "",
            f"{held} of {len(rows)} as expected.",
            "",
        ]
        (args.out / "probes.md").write_text("\n".join(head + table) + "\n")
    return 0 if held == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
