"""Command line of the core: ``python -m bnas {retrain,summary,settings,search} ...``.

* ``search``   -- run (or resume) a BNAS search (:func:`bnas.search.run_search`); progress lines go to
  stdout, then the genotype, its digest, ``derived_val_acc`` and ``search_time_s`` as one JSON line.
* ``retrain``  -- train a genotype's evaluation network (:func:`bnas.retrain.retrain`); progress goes to
  stderr, the final metrics to stdout as one JSON object.
* ``summary``  -- size figures of a genotype's inference network as one JSON object (no data needed).
* ``settings`` -- every setting with its default and source mark (the provenance table).
* ``export``   -- a retraining folder's network as ONNX (checked with onnxruntime) or packed v2, one JSON
  line: path, bytes, and for ONNX ``max_abs_diff`` against PyTorch (:func:`bnas.export.export_run`).

The dataset folder is taken from ``--data-root``, else ``$BNAS_DATA_ROOT``, else ``data.root`` of the
configuration, else ``./data`` (:func:`bnas.data.resolve_data_root`; the environment is read here, at
the entry point, and nowhere in the library). Configuration problems (bad settings, unknown names, bad
genotypes, a missing dataset, an output folder holding another run's checkpoint) print one
``error: ...`` paragraph to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bnas.binarization import BinarySpec
from bnas.config import ConfigError, ExperimentConfig, describe_settings, load_config, parse_overrides
from bnas.errors import user_os_error
from bnas.genotype import GenotypeError, load_genotype
from bnas.logs import info, show_progress
from bnas.registry import UnknownNameError
from bnas.settings import build

#: Errors that are the user's to fix: reported in one paragraph, exit status 2, no traceback.
#: (bnas.data's DatasetNotFoundError too; it is checked lazily, so `summary` never imports the data stack.)
USER_ERRORS = (ConfigError, GenotypeError, UnknownNameError)


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, USER_ERRORS):
        return True
    if user_os_error(e) is not None:
        return True
    data = sys.modules.get("bnas.data")  # a DatasetNotFoundError can only come from an imported bnas.data
    return data is not None and isinstance(e, data.DatasetNotFoundError | data.BadDatasetError)


def _error_text(e: BaseException) -> str:
    """The message of a user error; one raised in a DataLoader worker (an unreadable image) comes back
    wrapped with the worker's traceback, of which the last line is the message."""
    if (text := user_os_error(e)) is not None:
        return text
    text = str(e)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


NETWORK_HELP = "network layout: cifar or imagenet (DARTS NetworkImageNet); default: from the dataset"
DATA_ROOT_HELP = "dataset folder (else $BNAS_DATA_ROOT, else data.root of the configuration, else ./data)"

# retrain flag -> dotted setting; flags win over --config and --set.
_RETRAIN_FLAGS = {
    "binarization": "binarization.method",
    "activations": "binarization.activations",
    "channels": "retrain.init_channels",
    "layers": "retrain.layers",
    "epochs": "retrain.epochs",
    "batch_size": "retrain.batch_size",
    "max_batches": "retrain.max_batches_per_epoch",
    "dataset": "data.dataset",
    "train_subset": "data.train_subset",
    "test_subset": "data.test_subset",
    "image_size": "data.image_size",
    "network": "network",
    "device": "device",
    "seed": "seed",
}


def _add_set(parser: argparse.ArgumentParser, example: str) -> None:
    """The repeatable ``--set KEY=VALUE`` override of the search and retrain commands."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one setting, e.g. --set {example} (repeatable)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnas", description="Binarized Neural Architecture Search (core)."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{retrain,summary,settings,search,export}")

    r = sub.add_parser(
        "retrain",
        help="train a genotype's evaluation network",
        description="Train a genotype's evaluation network (DARTS protocol, binarized cells).",
    )
    r.add_argument(
        "--genotype", required=True, help="reference name (e.g. bnas_xnor) or a genotype JSON file"
    )
    r.add_argument("--config", help="experiment YAML (defaults when omitted)")
    _add_set(r, "retrain.lr=0.05")
    r.add_argument("--binarization", help="xnor, xnor_channel, pcnn or fp")
    r.add_argument("--activations", choices=["real", "binary"], help="real (w1a32) or binary (w1a1)")
    r.add_argument("--channels", type=int, help="initial channels C")
    r.add_argument("--layers", type=int, help="number of cells")
    r.add_argument("--epochs", type=int)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--max-batches", type=int, help="cap on training batches per epoch")
    r.add_argument("--dataset", help="cifar10, cifar100 or folder")
    r.add_argument("--train-subset", type=int, help="use only this many training images")
    r.add_argument("--test-subset", type=int, help="use only this many test images")
    r.add_argument("--image-size", type=int, help="input side in pixels (CPU runs: 16)")
    r.add_argument("--network", help=NETWORK_HELP)
    r.add_argument("--data-root", help=DATA_ROOT_HELP)
    r.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--seed", type=int)
    r.add_argument("--out", required=True, help="output folder (checkpoint, metrics, packed model)")
    r.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress lines")

    s = sub.add_parser(
        "summary",
        help="size figures of a genotype's inference network (JSON)",
        description="Parameter counts and packed vs fp32 bytes (auxiliary head excluded).",
    )
    s.add_argument("--genotype", required=True, help="reference name or genotype JSON file")
    s.add_argument("--channels", type=int, default=36)
    s.add_argument("--layers", type=int, default=20)
    s.add_argument("--binarization", default="xnor")
    s.add_argument("--activations", choices=["real", "binary"], default="real")
    s.add_argument("--num-classes", type=int, help="classifier classes (default: cifar 10, imagenet 1000)")
    s.add_argument("--in-channels", type=int, default=3)
    s.add_argument("--network", default="cifar", help="cifar (default) or imagenet: the network layout")

    sub.add_parser("settings", help="every setting with its default and source mark")

    e = sub.add_parser(
        "export",
        help="export a retrained network (ONNX, checked with onnxruntime; or packed v2)",
        description="Export the network of a retraining output folder: ONNX (dynamic batch, binary "
        "weights as their +-scale values, BN folded; checked against PyTorch with onnxruntime, which "
        "prints the max abs difference) or the packed format v2. A registered MLflow model version: "
        "python -m bnas.platform.models export models:/NAME@ALIAS ...",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a finished retraining (model.bnas)")
    e.add_argument("--format", default="onnx", help="onnx (default) or packed")
    e.add_argument("--out", required=True, help="file to write")
    e.add_argument("--image-size", type=int, help="ONNX input side in pixels (default: the run's)")

    q = sub.add_parser(
        "search",
        help="run (or resume) a BNAS search",
        description="Run a BNAS search: PC-DARTS super-network training with operation space reduction; "
        "resumes from --out's checkpoint when it holds one of the same run.",
    )
    q.add_argument("--config", help="YAML experiment file (see configs/); defaults apply when omitted")
    _add_set(q, "search.sampling_k=4")
    q.add_argument("--data-root", help=DATA_ROOT_HELP)
    q.add_argument("--device", help="auto, cpu, cuda or cuda:N (sets device)")
    q.add_argument("--network", help=NETWORK_HELP + " (sets network)")
    q.add_argument(
        "--out", required=True, help="output folder (checkpoint, genotype.json, history.json, ...)"
    )
    q.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    q.add_argument("--quiet", action="store_true", help="print only the final JSON line")
    return p


def _config(
    path: str | None, overrides: dict[str, Any], flag_root: str | None, environ: Mapping[str, str]
) -> ExperimentConfig:
    """The configuration with ``data.root`` resolved by the one precedence (see the module docstring)."""
    from bnas.data import resolve_data_root

    cfg = load_config(path, overrides)
    root = resolve_data_root(flag_root, cfg.data.root, environ)
    return load_config(path, {**overrides, "data.root": str(root)})


def _search(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from bnas.search import run_search

    overrides: dict[str, Any] = parse_overrides(args.set)
    if args.device:
        overrides["device"] = args.device
    if args.network:
        overrides["network"] = args.network
    cfg = _config(args.config, overrides, args.data_root, environ)
    show_progress(stderr=False)
    res = run_search(cfg, Path(args.out), resume=not args.no_resume, log=None if args.quiet else info)
    summary = {"genotype": res.genotype.to_dict(), "digest": res.genotype.digest}
    print(json.dumps({**summary, **{k: res.final[k] for k in ("derived_val_acc", "search_time_s")}}))
    return 0


def _retrain(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from bnas.retrain import retrain

    overrides: dict[str, Any] = parse_overrides(args.set)
    for flag, key in _RETRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    cfg = _config(args.config, overrides, args.data_root, environ)
    genotype = load_genotype(args.genotype)

    show_progress(stderr=True)  # stdout holds the final JSON
    final = retrain(cfg, genotype, args.out, resume=not args.no_resume, log=None if args.quiet else info)
    print(json.dumps(final, sort_keys=True))
    return 0


def _summary(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from bnas.model_size import size_report
    from bnas.networks import build_eval_network

    if args.num_classes is None:  # the benchmark of the layout: CIFAR-10 or ImageNet-1k
        args.num_classes = 1000 if args.network == "imagenet" else 10
    # The network's settings are checked by the sections' own rules (bounds, registries, the ImageNet
    # stem's even C), each problem named by the flag that gave it.
    flags = {
        "retrain.init_channels": "--channels",
        "retrain.layers": "--layers",
        "binarization.method": "--binarization",
        "network": "--network",
    }
    try:
        build(
            ExperimentConfig,
            {
                "network": args.network,
                "binarization": {"method": args.binarization, "activations": args.activations},
                "retrain": {"init_channels": args.channels, "layers": args.layers},
            },
        )
    except ConfigError as e:

        def as_flags(text: str) -> str:
            for key, flag in flags.items():
                text = text.replace(key, flag)
            return text

        problems = [(flags.get(k or "", k), as_flags(m)) for k, m in e.problems]
        raise ConfigError.collect(problems, "summary") from None
    for key, value in (("--num-classes", args.num_classes), ("--in-channels", args.in_channels)):
        if value < 1:  # the data's figures, not settings
            raise ConfigError(f"must be >= 1, got {value}", "summary", key)
    genotype = load_genotype(args.genotype)
    model = build_eval_network(
        args.network,
        genotype,
        C=args.channels,
        num_classes=args.num_classes,
        layers=args.layers,
        auxiliary=False,
        spec=BinarySpec(args.binarization, args.activations),
        in_channels=args.in_channels,
    )
    report = {
        "genotype": args.genotype,
        "genotype_digest": genotype.digest,
        "binarization": args.binarization,
        "activations": args.activations,
        "channels": args.channels,
        "layers": args.layers,
        "num_classes": args.num_classes,
        **size_report(model),
    }
    print(json.dumps(report))
    return 0


def _export(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from bnas.export import export_run

    print(json.dumps(export_run(args.run_dir, args.format, args.out, args.image_size)))
    return 0


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    rows = [(key, mark, json.dumps(default), doc) for key, default, mark, doc in describe_settings()]
    key_w = max(len(r[0]) for r in rows)
    default_w = 12  # longer defaults (the op list) push their doc further right
    print(f"{'setting':<{key_w}}  mark  {'default':<{default_w}}  meaning")
    for key, mark, default, doc in rows:
        print(f"{key:<{key_w}}  {mark:<4}  {default:<{default_w}}  {doc}")
    # The ImageNet protocol: what network: imagenet fills in for the settings a configuration omits.
    from bnas.config import IMAGENET_PROTOCOL_KEYS, ImageNetProtocol

    print("\nwith network: imagenet, unless set (the DARTS ImageNet protocol):")
    for name, value, mark, doc in describe_settings(ImageNetProtocol):
        key = f"{IMAGENET_PROTOCOL_KEYS[name]}.{name}"
        print(f"{key:<{key_w}}  {mark:<4}  {json.dumps(value):<{default_w}}  {doc}")
    print(
        "\nmarks: [P] paper, [C] released code, [R] recalled from the paper (uncertain), [D] design decision"
    )
    return 0


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; ``environ`` is the environment the entry point passes (``$BNAS_DATA_ROOT``).

    Returns the exit status: 0 done, 2 a problem the user can fix (one ``error: ...`` paragraph on
    stderr), 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        handler = {
            "retrain": _retrain,
            "summary": _summary,
            "settings": _settings,
            "search": _search,
            "export": _export,
        }
        return handler[args.command](args, environ or {})
    except Exception as e:
        if not _is_user_error(e):
            raise
        print(f"error: {_error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console() -> int:
    """The ``bnas`` console command: :func:`main` with this process's environment, as ``python -m bnas``."""
    return main(environ=os.environ)


if __name__ == "__main__":
    sys.exit(console())
