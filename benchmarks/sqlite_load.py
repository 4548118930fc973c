"""How the SQLite stores hold when several processes write one file at once (README, "SQLite stores
under load").

A study never does this (its driver is the only writer of ``mlflow.db`` and ``optuna.db``); two studies
sharing one store, or trials that log themselves, do. ``--writers`` processes each create an MLflow run
and log ``--metrics`` metric values to one SQLite MLflow store, and as many processes each run
``--metrics / 4`` Optuna trials (ask, three intermediate values, tell) on one SQLite Optuna storage, all
at the same time. Prints per writer what was written, what failed (with the first error, e.g.
``database is locked``) and what the store holds afterwards::

    python benchmarks/sqlite_load.py --writers 4 --metrics 200 --out /tmp/sqlite_load
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path
from typing import Any


def _mlflow_writer(uri: str, exp_id: str, i: int, n: int, q: Any) -> None:
    import mlflow

    client = mlflow.MlflowClient(uri)
    errors, first = 0, ""
    try:
        run_id = client.create_run(exp_id, run_name=f"writer-{i}").info.run_id
    except Exception as e:  # noqa: BLE001  (every failure is the measurement)
        q.put(("mlflow", i, 0, n, repr(e)[:160], None))
        return
    for step in range(n):
        try:
            client.log_metric(run_id, "val_acc", step / n, step=step)
        except Exception as e:  # noqa: BLE001
            errors, first = errors + 1, first or repr(e)[:160]
    try:
        client.set_terminated(run_id)
    except Exception as e:  # noqa: BLE001
        first = first or repr(e)[:160]
    q.put(("mlflow", i, n - errors, errors, first, run_id))


def _optuna_writer(url: str, i: int, n: int, q: Any) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="load", storage=url)
    errors, first = 0, ""
    for _ in range(n):
        try:
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            for k in range(3):
                trial.report(x * k, k)
            study.tell(trial, x)
        except Exception as e:  # noqa: BLE001
            errors, first = errors + 1, first or repr(e)[:160]
    q.put(("optuna", i, n - errors, errors, first, None))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writers", type=int, default=4, help="processes per store")
    p.add_argument("--metrics", type=int, default=200, help="metric values per MLflow writer")
    p.add_argument("--out", default="/tmp/bnas_sqlite_load", help="folder for the two stores (emptied)")
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    import optuna

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    uri, url = f"sqlite:///{out / 'mlflow.db'}", f"sqlite:///{out / 'optuna.db'}"
    exp_id = mlflow.MlflowClient(uri).create_experiment("load")
    optuna.create_study(study_name="load", storage=url)
    q: Any = mp.Queue()
    procs = [
        mp.Process(target=_mlflow_writer, args=(uri, exp_id, i, args.metrics, q)) for i in range(args.writers)
    ]
    procs += [
        mp.Process(target=_optuna_writer, args=(url, i, args.metrics // 4, q)) for i in range(args.writers)
    ]
    t0 = time.perf_counter()
    for proc in procs:
        proc.start()
    results = sorted((q.get() for _ in procs), key=lambda r: (r[0], r[1]))
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - t0
    client = mlflow.MlflowClient(uri)
    for store, i, ok, failed, first, run_id in results:
        held = f", store holds {len(client.get_metric_history(run_id, 'val_acc'))}" if run_id else ""
        print(f"{store} writer {i}: {ok} written, {failed} failed{held}{' -- ' + first if first else ''}")
    trials = optuna.load_study(study_name="load", storage=url).trials
    states = sorted({t.state.name for t in trials})
    print(f"optuna storage holds {len(trials)} trials ({', '.join(states)}); wall {wall:.1f} s")


if __name__ == "__main__":
    main()
