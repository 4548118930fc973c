"""The Ray Tune function trainables: one search trial = one :func:`bnas.search.run_search`, one
retraining trial = one :func:`bnas.retrain.retrain`. The only module that calls Tune's in-trial API.

Every epoch the core writes its checkpoint into the trial's output folder and calls ``on_epoch``; the
trainable then reports the epoch's metrics with that folder as a :class:`ray.tune.Checkpoint` (Tune
copies it into the study's storage). A trial restarted by ``FailureConfig(max_failures)`` or by
``Tuner.restore`` gets the folder back from :func:`ray.tune.get_checkpoint` and the core continues
from its ``checkpoint.pt``.

Trials do not write to MLflow (the driver is the single writer, :mod:`bnas.platform.tracking`): the
last report carries ``final: True`` plus the final figures, and its checkpoint holds the artifacts
(genotype.json, history.json, metrics.jsonl, cells/*.png; or model.bnas for a retraining).

What a search trial reports
    every epoch: ``epoch`` (1-based, global), ``stage``, ``total_epochs``, ``train_loss``,
    ``train_acc``, ``val_loss``, ``val_acc`` (super-network), ``ops_per_edge``, ``elapsed_s``,
    ``final: False`` and each objective as NaN (Tune requires the searcher's metrics in every
    result; NaN says "not known yet").
    at the end: the last epoch's figures again, ``final: True``, ``derived_val_acc``,
    ``supernet_val_acc``, ``search_time_s``, ``genotype_digest``, and the size figures of the
    derived genotype's evaluation network at the retraining settings (``params``,
    ``binary_params``, ``fp_params``, ``packed_bytes``, ``fp32_bytes``).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from bnas.platform.study import StudySpec
from bnas.platform.tracking_schema import SEARCH_FINAL_METRICS, SIZE_METRICS

#: Per-epoch keys a search trial passes on from ``run_search``'s ``on_epoch``.
SEARCH_EPOCH_KEYS = (
    "stage",
    "epoch",
    "total_epochs",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "ops_per_edge",
    "elapsed_s",
)
#: Per-epoch keys a retraining trial passes on from ``retrain``'s ``on_epoch``.
RETRAIN_EPOCH_KEYS = (
    "epoch",
    "epochs",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "elapsed_s",
)
#: Final keys of a retraining trial.
RETRAIN_FINAL_KEYS = (
    "test_acc",
    "test_loss",
    "train_acc",
    "wall_time_s",
    "genotype_digest",
    "config_digest",
    *SIZE_METRICS,
)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a stage shares: the study, the device it runs on and its torch threads
    (its CPU count; they go into the trial's settings as ``device`` and ``threads``)."""

    study: StudySpec
    device: str  # "cuda" when the trial holds a GPU, else "cpu"
    threads: int
    verbose: bool = True


def _prepare(stage: str) -> Path:
    """The trial's output folder: restored from Tune's latest checkpoint when the trial is resumed or
    retried, empty otherwise (an actor reused from another trial leaves nothing in it)."""
    # Tune makes the trial's own folder the working directory; the trial id keeps folders apart even
    # where it does not (RAY_CHDIR_TO_TRIAL_DIR=0).
    out = Path(f"{stage}-{tune.get_context().get_trial_id()}").absolute()
    shutil.rmtree(out, ignore_errors=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        checkpoint.to_directory(str(out))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _progress(setup: TrialSetup) -> Callable[[str], None] | None:
    """The core's progress lines on the worker's standard output (Ray shows them with the trial's
    name) when the study is verbose; nothing otherwise."""
    from bnas.logs import info, show_progress

    if not setup.verbose:
        return None
    show_progress()
    return info


def _report(metrics: dict[str, Any], out: Path) -> None:
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out)))


def search_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """A Tune trial: ``config`` holds the sampled values (dotted setting -> value)."""
    from bnas.data import get_info
    from bnas.model_size import size_report
    from bnas.retrain import build_network
    from bnas.search import run_search
    from bnas.visualize import save_cell_pictures

    study = setup.study
    cfg = study.trial_config(config, device=setup.device, threads=setup.threads)
    out = _prepare("search")
    pending = {o.metric: math.nan for o in study.objectives}

    def on_epoch(m: dict[str, Any]) -> None:
        if study.scheduler.metric not in m:
            return  # no validation this epoch (search.validate_every): the scheduler judges the next one
        _report({**{k: m[k] for k in SEARCH_EPOCH_KEYS if k in m}, **pending, "final": False}, out)

    res = run_search(cfg, out, on_epoch=on_epoch, resume=True, log=_progress(setup))
    retrain_cfg = study.retrain_config(cfg.to_dict(), study.retrain.seeds[0], device="cpu")
    size = size_report(build_network(retrain_cfg, res.genotype, get_info(retrain_cfg.data)))
    save_cell_pictures(res.genotype, out / "cells")
    last = {k: res.metrics[-1][k] for k in SEARCH_EPOCH_KEYS} if res.metrics else {}
    final = {k: res.final[k] for k in SEARCH_FINAL_METRICS if k in res.final}
    final.update({k: size[k] for k in SIZE_METRICS})
    _report({**last, **final, "final": True, "genotype_digest": res.genotype.digest}, out)


def retrain_trial(config: dict[str, Any], setup: TrialSetup, candidates: dict[str, dict[str, Any]]) -> None:
    """A Tune trial: ``config["job"]`` = ``{"candidate": <search run id>, "seed": int}``; ``candidates``
    maps search run ids to ``{"settings": resolved settings dict, "genotype": genotype dict, ...}``."""
    from bnas.genotype import Genotype
    from bnas.retrain import retrain

    job = config["job"]
    cand = candidates[job["candidate"]]
    cfg = setup.study.retrain_config(cand["settings"], int(job["seed"]), setup.device, setup.threads)
    genotype = Genotype.from_dict(cand["genotype"])
    out = _prepare("retrain")

    def on_epoch(m: dict[str, Any]) -> None:
        _report({**{k: m[k] for k in RETRAIN_EPOCH_KEYS}, "final": False}, out)

    final = retrain(cfg, genotype, out, on_epoch=on_epoch, resume=True, log=_progress(setup))
    _report({**{k: final[k] for k in RETRAIN_FINAL_KEYS}, "epoch": final["epochs"], "final": True}, out)
