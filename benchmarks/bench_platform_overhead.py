"""What Ray Tune + Optuna + MLflow cost on top of the searches themselves.

1. ``python run.py --study STUDY --stage search`` with the FIFO scheduler (no trial stopped early, so
   every trial does the whole search), a fresh study folder and a fresh MLflow SQLite store; wall time
   from process start to exit (Ray start, trials, tracking, shutdown).
2. The very same searches (each trial's resolved settings, read back from its MLflow ``config.json``
   artifact) through ``python -m bnas search``, as many at a time as the study's concurrency, one
   torch thread each (what a 1-CPU trial gets); wall time of the whole batch.

With ``--rounds N`` the two alternate N times (platform, direct, platform, direct, ...; every platform
round in a fresh folder and store, sampling the same settings since the sampler is seeded), so that
drift in the load of a shared machine hits both sides; medians and their ratio are printed. Usage::

    python benchmarks/bench_platform_overhead.py --data-root ../shared/data            # bnas_smoke
    python benchmarks/bench_platform_overhead.py --rounds 2 --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="bnas_smoke")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--data-root",
        help="dataset folder (else $BNAS_DATA_ROOT, else the study's data.root, else ./data)",
    )
    p.add_argument("--work", help="folder for all runs (default: a new temporary folder)")
    p.add_argument("--rounds", type=int, default=1, help="platform/direct pairs, alternating (default 1)")
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    work = Path(args.work or tempfile.mkdtemp(prefix="bnas_overhead_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    sys.path.insert(0, str(REPO))
    from bnas.data import resolve_data_root
    from bnas.platform.study import load_study

    spec = load_study(args.study, args.overrides)
    # The one precedence of every entry point, resolved here (run.py runs in the study folder, where a
    # relative path would point elsewhere): --data-root, else $BNAS_DATA_ROOT, else the study's data.root.
    data_root = resolve_data_root(args.data_root, (spec.fixed.get("data") or {}).get("root"), os.environ)
    threads = max(1, int(spec.resources.cpu))

    def platform(round_: int) -> tuple[float, list]:
        """run.py --stage search (FIFO) in a fresh folder and store; wall time and the search runs."""
        folder = work / f"platform_{round_}"
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        cmd = [
            sys.executable,
            str(REPO / "run.py"),
            "--study",
            args.study,
            "--stage",
            "search",
            "--out",
            str(folder / "study"),
            "--mlflow-uri",
            uri,
            "--no-dashboard",
            "--quiet",
            "--set",
            "scheduler.name=fifo",
        ]
        for item in args.overrides:
            cmd += ["--set", item]
        cmd += ["--data-root", str(data_root)]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (folder / "run.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            raise RuntimeError(f"run.py failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        import mlflow

        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(f"bnas/{spec.name}")
        return wall, (client, client.search_runs([exp.experiment_id], "tags.`bnas.kind` = 'search'"))

    def settings_of(client, runs) -> list[Path]:
        """Each trial's resolved settings (its config.json artifact) as a YAML file for the core CLI."""
        out = []
        for r in runs:
            path = Path(
                client.download_artifacts(r.info.run_id, "config.json", str(work / "configs" / r.info.run_id))
            )
            out.append(path.with_suffix(".yaml"))
            out[-1].write_text(yaml.safe_dump(json.loads(path.read_text())))
        return out

    def direct(job: tuple[str, Path]) -> float:
        name, cfg = job
        t = time.perf_counter()
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "bnas",
                "search",
                "--config",
                str(cfg),
                "--out",
                str(work / "direct" / name),
                "--quiet",
            ],
            cwd=REPO,
            env={**env, "OMP_NUM_THREADS": str(threads)},
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-3000:])
        return time.perf_counter() - t

    def direct_batch(round_: int, configs: list[Path]) -> float:
        """The same searches, ``concurrency`` at a time, as plain processes; wall time of the batch."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(spec.concurrency) as pool:
            list(pool.map(direct, [(f"{round_}_{i}", c) for i, c in enumerate(configs)]))
        return time.perf_counter() - t0

    platform_s, direct_s, inside_s, configs = [], [], [], None
    for round_ in range(args.rounds):
        wall, (client, runs) = platform(round_)
        platform_s.append(wall)
        inside_s.append(sum(r.data.metrics.get("search_time_s", 0.0) for r in runs))
        configs = configs or settings_of(client, runs)
        direct_s.append(direct_batch(round_, configs))
        print(
            f"round {round_ + 1}: platform {platform_s[-1]:6.1f} s, direct {direct_s[-1]:6.1f} s "
            f"(search_time_s summed inside the platform's trials: {inside_s[-1]:.1f} s)",
            flush=True,
        )

    p_med, d_med = statistics.median(platform_s), statistics.median(direct_s)
    print(
        f"study {spec.name}: {len(configs)} searches, {spec.concurrency} at a time, {threads} thread(s) each"
    )
    print(f"platform (run.py --stage search: Ray + Optuna + MLflow, FIFO): median {p_med:7.1f} s wall")
    print(f"direct   (python -m bnas search, same settings, same concurrency): median {d_med:7.1f} s wall")
    print(f"ratio platform / direct: {p_med / d_med:.2f}")
    print(f"folders: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
