"""Retrained networks as MLflow Logged Models, versions of one registered model, and the champion.

Driver side only (called by :class:`~bnas.platform.tracking.StudyTracker` when a retraining run
finishes; the single MLflow writer). For each finished retraining:

1. the network is read back from the trial's packed file (``model.bnas``, format v2: BN folded,
   :mod:`bnas.folding`) and wrapped to return logits only (:class:`bnas.onnx_export.LogitsOnly`);
2. it is logged with ``mlflow.pytorch.log_model`` as a **Logged Model** named ``model`` in the
   study's experiment, linked to the run (``source_run_id``, the run's model outputs, and the run's
   last-epoch metrics), with the run's params, a signature and an input example of 2 images at the
   study's image size (batch axis dynamic). MLflow 3 saves it as ``pt2`` (``torch.export``): loading
   it needs torch only, not this package;
3. it is registered as a version of ``bnas-<study>`` tagged with genotype digest, binarization,
   activations, seed, test accuracy, packed bytes, study and run id (:class:`ModelTag`), and the
   Logged Model names that version in its ``mlflow.modelVersions`` tag (what the UI shows);
4. the alias ``champion`` is (re)computed (:func:`choose_champion`): the best **architecture** --
   versions grouped by (genotype digest, binarization, activations) -- is the one with the highest
   mean test accuracy over its seeds, ties broken by the smaller packed size, then by the older first
   version; the alias names that architecture's best seed (highest test accuracy, then the older
   version). It moves only when another architecture now ranks strictly above the current champion's.

Using a version without this package: ``mlflow.pytorch.load_model("models:/bnas-<study>@champion")``
gives torch.export's module of the network, already in inference mode (exported in eval mode, BN
folded): call it under ``torch.no_grad()`` on float32 images ``(N, 3, S, S)`` (S: the version's
``bnas.image_size`` tag) for ``(N, classes)`` logits. torch.export makes its ``.eval()`` and
``.train()`` raise; for code that calls them anyway, ``del model.train, model.eval`` restores torch's
own (they then only set flags). ``mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})``
serves it (``predict`` on a numpy batch): without that config a CUDA machine picks ``cuda``, which a
pt2 model saved on the CPU refuses.

A retraining run that already has a version (a resumed driver) is not logged twice. Reading the
registry back (``python -m bnas.platform.models export models:/bnas-<study>@champion --format onnx
--out FILE``) exports a registered version like ``python -m bnas export`` does a run folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnas.platform.mlflow_ui import link_logged_model, logged_model_id
from bnas.platform.tracking_schema import (
    CHAMPION_ALIAS,
    LOGGED_MODEL_NAME,
    ModelTag,
    is_number,
    registered_model_name,
    rounded,
)

#: Images in the input example (> 1 so that MLflow's pt2 export keeps the batch axis dynamic).
EXAMPLE_BATCH = 2
#: Seconds to wait for a new model version to be READY (local stores are immediate).
AWAIT_REGISTRATION_S = 60


@dataclass(frozen=True)
class VersionInfo:
    """What the champion rule reads of a registered version (from its tags)."""

    version: int
    architecture: tuple[str, str, str]  # genotype digest, binarization, activations
    test_acc: float
    packed_bytes: float

    @classmethod
    def from_version(cls, v: Any) -> VersionInfo | None:
        """From an MLflow ``ModelVersion``; None when its tags lack a usable accuracy."""
        tags = v.tags or {}
        try:
            acc = float(tags.get(ModelTag.TEST_ACC, "nan"))
            size = float(tags.get(ModelTag.PACKED_BYTES, "inf"))
        except ValueError:
            return None
        if not is_number(acc):
            return None
        keys = (ModelTag.GENOTYPE_DIGEST, ModelTag.BINARIZATION, ModelTag.ACTIVATIONS)
        arch = tuple(tags.get(k, "") for k in keys)
        return cls(int(v.version), arch, acc, size)  # type: ignore[arg-type]


Arch = tuple[str, str, str]


def _architecture_ranks(versions: Iterable[VersionInfo]) -> dict[Arch, tuple[float, float, int]]:
    """Per architecture its sort key (smaller is better): (-mean test accuracy over its seeds, packed
    bytes, first version)."""
    groups: dict[Arch, list[VersionInfo]] = {}
    for v in versions:
        groups.setdefault(v.architecture, []).append(v)
    return {
        arch: (
            -statistics.fmean(v.test_acc for v in vs),
            min(v.packed_bytes for v in vs),
            min(v.version for v in vs),
        )
        for arch, vs in groups.items()
    }


def choose_champion(versions: Iterable[VersionInfo], current: int | None = None) -> int | None:
    """The version the ``champion`` alias should name (rule: module docstring); None without versions.

    ``current``: the version the alias names now. It stays when its architecture is still ranked
    first (ties included: a challenger must be strictly better on mean accuracy, or equal on it and
    strictly smaller), so the alias moves only when another architecture beats the champion.
    """
    versions = list(versions)
    if not versions:
        return None
    ranks = _architecture_ranks(versions)
    by_version = {v.version: v for v in versions}
    best_arch = min(ranks, key=lambda a: ranks[a])
    if current in by_version:
        cur_arch = by_version[current].architecture
        if ranks[cur_arch][:2] <= ranks[best_arch][:2]:
            return current
    seeds = [v for v in versions if v.architecture == best_arch]
    return min(seeds, key=lambda v: (-v.test_acc, v.version)).version


def _versions(client: Any, name: str) -> list[Any]:
    return list(client.search_model_versions(f"name='{name}'"))


def update_champion(client: Any, study: str) -> tuple[int | None, int | None]:
    """Point ``champion`` of ``bnas-<study>`` at :func:`choose_champion`'s version; (before, after)."""
    from mlflow.exceptions import MlflowException

    name = registered_model_name(study)
    try:
        current: int | None = int(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException:
        current = None
    infos = [i for i in (VersionInfo.from_version(v) for v in _versions(client, name)) if i is not None]
    chosen = choose_champion(infos, current)
    if chosen is not None and chosen != current:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, str(chosen))
    return current, chosen


def inference_network(packed_path: str | Path) -> Any:
    """The network of a packed file, returning logits only, in eval mode (what is logged)."""
    from bnas.export import load_packed
    from bnas.onnx_export import LogitsOnly

    return LogitsOnly(load_packed(packed_path)).eval()


def input_example(network: Any, image_size: int, seed: int = 0) -> Any:
    """A fixed float32 batch of :data:`EXAMPLE_BATCH` random images (numpy) for ``network``."""
    import torch

    from bnas.onnx_export import input_shape

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(EXAMPLE_BATCH, *input_shape(network, image_size), generator=gen).numpy()


def log_retrained_model(
    client: Any,
    tracking_uri: str,
    experiment_id: str,
    study: str,
    run_id: str,
    packed_path: str | Path,
    *,
    result: Mapping[str, Any],
    params: Mapping[str, str],
    seed: str,
) -> int:
    """Log ``packed_path``'s network as the run's Logged Model, register it, update the champion.

    ``result``: the retraining's final figures (``test_acc``, ``packed_bytes``, ``genotype_digest``);
    ``params``: the run's params (``data.image_size``, ``binarization.method``/``activations``).
    Returns the version number (an existing one when the run was registered before).
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    name = registered_model_name(study)
    existing = list(client.search_model_versions(f"name='{name}' and run_id='{run_id}'"))
    if existing:
        if model_id := logged_model_id(existing[0]):  # registered before the link was written: now
            link_logged_model(client, model_id, name, existing[0].version)
        return int(existing[0].version)
    image_size = int(params["data.image_size"])
    network = inference_network(packed_path)
    example = input_example(network, image_size)
    with torch.no_grad():
        logits = network(torch.from_numpy(example)).numpy()
    tags = {
        ModelTag.GENOTYPE_DIGEST: str(result.get("genotype_digest", "")),
        ModelTag.BINARIZATION: params.get("binarization.method", ""),
        ModelTag.ACTIVATIONS: params.get("binarization.activations", ""),
        ModelTag.SEED: seed,
        # Six digits: more are the float32 noise of the metric (0.33099999874830244 for 0.331).
        ModelTag.TEST_ACC: str(rounded(float(result["test_acc"]))),
        ModelTag.PACKED_BYTES: str(int(size)) if is_number(size := result.get("packed_bytes")) else "",
        ModelTag.STUDY: study,
        ModelTag.RUN_ID: run_id,
        ModelTag.IMAGE_SIZE: str(image_size),
    }
    # The Logged Model is created in the study's experiment explicitly: log_model alone would put it
    # in the process's active experiment (the Default one, with ./mlruns artifacts) on the driver.
    # With the run's params (the resolved retraining settings), as log_model would copy them.
    logged = client.create_logged_model(
        experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id, tags=tags, params=dict(params)
    )
    # Fluent API on a given store without touching the process-wide tracking URI; the registry
    # resolves a models:/<id> source through that URI too (else it opens ./mlflow.db).
    with _use_tracking_uri(tracking_uri):
        info = mlflow.pytorch.log_model(
            network,
            name=LOGGED_MODEL_NAME,
            model_id=logged.model_id,
            run_id=run_id,
            # The run's metrics at this step are linked to the model: the last epoch's test_acc,
            # test_loss, train_acc, train_loss and lr show on the model page and in its table.
            step=int(result.get("epochs") or result.get("epoch") or 0),  # final.json / a trial's report
            signature=infer_signature(example, logits),
            input_example=example,
            # Explicit: inferring them would import the model in a subprocess (slow, and it needs
            # this package on that interpreter's path); pt2 needs torch only.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
        )
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(
                name,
                tags={ModelTag.STUDY: study},
                description=f"Retrained binarized networks of BNAS study {study!r}; alias "
                f"{CHAMPION_ALIAS!r}: the best architecture (mean test accuracy over seeds, then "
                "packed size).",
            )
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags=tags,
            model_id=logged.model_id,
            await_creation_for=AWAIT_REGISTRATION_S,
        )
    # The Logged Model's "Registered models" column in the UI reads this link.
    link_logged_model(client, logged.model_id, name, version.version)
    update_champion(client, study)
    return int(version.version)


# ------------------------------------------------------------------------------------------------
# Export of a registered version
# ------------------------------------------------------------------------------------------------


def export_model_version(
    model_uri: str, fmt: str, out: str | Path, tracking_uri: str, image_size: int | None = None
) -> dict[str, Any]:
    """Export a registered version (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``) like a run folder:
    its run's ``model.bnas`` artifact through :func:`bnas.export.export_run` (ONNX checked with
    onnxruntime, or packed v2); the image size defaults to the version's ``bnas.image_size`` tag."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bnas.errors import ConfigError
    from bnas.export import export_run

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    ref = model_uri.removeprefix("models:/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = ref.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except (MlflowException, ValueError) as e:
        raise ConfigError(
            f"no registered model version {model_uri!r} in {tracking_uri} ({str(e).splitlines()[0]}); "
            "give models:/NAME/VERSION or models:/NAME@ALIAS",
            "export",
            "MODEL_URI",
        ) from None
    with tempfile.TemporaryDirectory(prefix="bnas_export_") as tmp:
        client.download_artifacts(version.run_id, "model.bnas", tmp)
        size = image_size or int((version.tags or {}).get(ModelTag.IMAGE_SIZE, 0)) or None
        report = export_run(tmp, fmt, out, size)
    return {**report, "source": f"{model_uri} (version {version.version}, run {version.run_id})"}


def main(argv: list[str] | None = None) -> int:
    """``python -m bnas.platform.models export MODEL_URI --format onnx|packed --out FILE``."""
    from bnas.errors import ConfigError
    from bnas.platform.tracking_schema import resolve_tracking_uri

    p = argparse.ArgumentParser(prog="python -m bnas.platform.models", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="export a registered model version (ONNX or packed v2)")
    e.add_argument(
        "model_uri", metavar="MODEL_URI", help="models:/bnas-<study>@champion or models:/NAME/VERSION"
    )
    e.add_argument("--format", default="onnx", help="onnx (default) or packed")
    e.add_argument("--out", required=True, help="file to write")
    e.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else the platform's)")
    e.add_argument("--image-size", type=int, help="ONNX input side (default: the version's)")
    args = p.parse_args(argv)
    try:
        uri = resolve_tracking_uri(args.tracking_uri)
        print(json.dumps(export_model_version(args.model_uri, args.format, args.out, uri, args.image_size)))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
