"""Run a BNAS study on Ray Tune with Optuna and MLflow: ``python run.py --study bnas_smoke``.

A study is a YAML file in ``tune_configs/`` (``--list`` shows them). The search stage runs one Ray Tune
trial per BNAS search, the retraining stage retrains the best derived genotypes; everything is
recorded in MLflow (default: ``./mlflow.db``, MLflow's own default store, so ``mlflow ui`` started in
this folder shows it). Study output (Ray results, Optuna study, run-id map) goes to
``./bnas_runs/<name>/`` unless ``--out`` says otherwise; the name is the study file's unless ``--name``
gives the run its own (one name holds one study: the same name with other data or settings is
refused). Where no data root is named, CIFAR-10 is downloaded into ``./data`` if missing.

Examples::

    python run.py --list
    python run.py --study bnas_smoke                              # fetches CIFAR-10 into ./data
    python run.py --study bnas_smoke --data-root ../shared/data   # offline, with a copy
    python run.py --study bnas_smoke --name smoke_own --set fixed.data.dataset=folder --data-root DIR
    python run.py --study bnas_smoke --resume                     # after a crash
    python run.py --study bnas_smoke --stage retrain              # retrain a finished study again
    python run.py --study bnas_cifar --address 10.0.0.1:6379 --mlflow-uri http://10.0.0.1:5000

This file is the only place that reads the command line and the environment (``BNAS_DATA_ROOT``,
``RAY_ADDRESS``); bad input prints one ``error: ...`` paragraph and exits with status 2 before any
trial, folder or run is created.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported for real only after the Ray settings below
    from bnas.platform.study import StudySpec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--list", action="store_true", help="list the studies in tune_configs/ and exit")
    p.add_argument("--study", help="study name (tune_configs/<name>.yaml) or path to a study YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override part of the study, e.g. trials=2, fixed.search.layers=3, "
        "retrain.seeds=[0], 'space.search.sampling_k={choice: [2]}' (repeatable)",
    )
    p.add_argument(
        "--stage",
        choices=("all", "search", "retrain"),
        default="all",
        help="search, retrain (the best genotypes of a finished search) or both (default)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted trials of the last run of this study folder",
    )
    p.add_argument(
        "--name",
        help="name of this study run (default: the study file's name): its MLflow experiment bnas/<name>, "
        "its folder ./bnas_runs/<name> and its Optuna study. One name holds one study: the same name "
        "with other data or settings is refused",
    )
    p.add_argument("--out", help="study folder (default ./bnas_runs/<name>)")
    p.add_argument(
        "--data-root",
        help="dataset folder (default $BNAS_DATA_ROOT, else the study's data.root, else ./data)",
    )
    p.add_argument(
        "--address", help="existing Ray cluster, e.g. 127.0.0.1:6379 (default $RAY_ADDRESS, else a local one)"
    )
    p.add_argument(
        "--mlflow-uri", help="tracking server or store (default: MLflow's default, sqlite ./mlflow.db)"
    )
    p.add_argument(
        "--no-dashboard", action="store_true", help="do not start the Ray dashboard (local cluster)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="run every check a run makes (study, dataset, store, per-trial resources against the "
        "cluster, without starting Ray) and exit",
    )
    p.add_argument(
        "--quiet", action="store_true", help="one line per finished trial instead of one per trial epoch"
    )
    p.add_argument(
        "--ray-logs",
        action="store_true",
        help="show Ray's and Tune's own output and every trial's console (off: one progress line per "
        "trial epoch, from the driver)",
    )
    return p.parse_args(argv)


def _load_study(args: argparse.Namespace) -> StudySpec:
    """The study with its data root: ``--data-root``, else ``$BNAS_DATA_ROOT``, else the study's
    ``data.root``, else ``./data`` (:func:`bnas.data.resolve_data_root`, the one precedence); renamed
    by ``--name``.

    Where no root is named anywhere (the default ``./data``), a missing CIFAR dataset is downloaded
    there (``data.download``: torchvision, official checksums): a first run on a machine with internet
    just works (``--check`` never downloads: it reports the dataset missing). A named root is never
    downloaded into unless the study says ``data.download: true``, so a mistyped path is an error, not
    a 170 MB download into it.
    """
    from bnas.data import DEFAULT_ROOT, resolve_data_root
    from bnas.platform.identity import check_name
    from bnas.platform.study import load_study

    overrides = list(args.overrides)
    spec = load_study(args.study, overrides)  # data.root: the study's, else ./data (absolute)
    configured = spec.base_config.data.root
    root = resolve_data_root(args.data_root, configured, os.environ)
    fetch = root == Path(DEFAULT_ROOT).resolve() and not spec.base_config.data.download
    if fetch and args.check:
        fetch = False  # --check creates nothing: a missing dataset is reported, not downloaded
    if fetch:
        overrides.append("fixed.data.download=true")  # nothing named a root: ./data, fetched if missing
    if fetch or configured is None or root != Path(configured):
        spec = load_study(args.study, overrides, data_root=root)
    if args.name is not None:
        spec = dataclasses.replace(spec, name=check_name(args.name))
    else:
        # The file's name is the study's name: the same rules as --name (a file `...yaml` would
        # otherwise name the study `..` and make the working directory's parent its folder).
        check_name(spec.name, spec.source, "study name (the file's name; --name gives another)")
    return spec


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before Ray is imported anywhere: no usage statistics leave this machine.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not args.ray_logs:
        # The console is the driver's progress lines (bnas.platform.callbacks). Tune's newer console
        # output prints its configuration table and TensorBoard hints even at verbose=0; the classic
        # reporter is silent at 0. MLflow's INFO lines (database creation) are noise to a study.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # Short CPU trials checkpoint every few seconds, which Tune reports as "snapshotting has been
        # triggered multiple times" (advice to tune num_to_keep; nothing a study user acts on).
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Also before Ray is imported (it reads its auth mode once, at import):
    address = args.address or os.environ.get("RAY_ADDRESS")
    if (
        address
        and "RAY_AUTH_MODE" not in os.environ
        and (os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file())
    ):
        # Ray sends its token to a cluster named by address only in token mode (set explicitly);
        # `ray start --address` decides the same way when it joins a node.
        os.environ["RAY_AUTH_MODE"] = "token"

    from bnas.config import ConfigError
    from bnas.data import BadDatasetError, DatasetNotFoundError
    from bnas.errors import user_os_error
    from bnas.genotype import GenotypeError
    from bnas.platform.orchestrate import RunOptions, StudyInterrupted, preflight, run_study
    from bnas.platform.study import STUDIES_DIR, list_studies
    from bnas.platform.tracking_schema import default_study_dir, default_tracking_uri
    from bnas.registry import UnknownNameError

    if args.list:
        studies = list_studies()
        width = max((len(n) for n in studies), default=0)
        print(f"studies in {STUDIES_DIR}:")
        for name, desc in studies.items():
            print(f"  {name:<{width}}  {desc}")
        return 0
    if not args.study:
        print("error: name a study with --study NAME (python run.py --list shows them)", file=sys.stderr)
        return 2

    try:
        spec = _load_study(args)
        opts = RunOptions(
            out_dir=Path(args.out).resolve() if args.out else default_study_dir(spec.name),
            tracking_uri=args.mlflow_uri or default_tracking_uri(),
            stage=args.stage,
            resume=args.resume,
            address=address,
            dashboard=not args.no_dashboard,
            verbose=not args.quiet,
            ray_logs=args.ray_logs,
        )
        if args.check:
            preflight(spec, opts, log=print)
            print(f"{spec.source}: ok ({len(spec.space.params)} sampled setting(s), {spec.trials} trial(s))")
            for p in spec.space.params:
                print(f"  {p.describe()}")
            return 0
        outcome = run_study(spec, opts)
    except (ConfigError, DatasetNotFoundError, BadDatasetError, GenotypeError, UnknownNameError) as e:
        text = str(e)
        if args.check and isinstance(e, DatasetNotFoundError) and not args.data_root:
            text += (
                " (--check never downloads; a run without it fetches CIFAR into ./data when no root is named)"
            )
        print(f"error: {text}", file=sys.stderr)
        return 2
    except OSError as e:
        if (text := user_os_error(e)) is None:
            raise
        print(f"error: {text}", file=sys.stderr)
        return 2
    except StudyInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    if not outcome.summary:
        print(
            "error: no search trial of this study finished (see the failures above and in MLflow)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
