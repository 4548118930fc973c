"""A small but real study store for the analysis tests, written by the platform's own writer.

Two real tiny searches (in process, on the fake CIFAR-10) give real ``genotype.json``,
``history.json``, ``metrics.jsonl`` and ``config.json`` artifacts and per-epoch metrics; around them a
real SQLite MLflow store, written through :class:`bnas.platform.tracking.StudyTracker` exactly as the
platform's Tune callback calls it, holds the parent run, five search runs (two sharing a genotype,
one pruned, one failed), retraining runs (two seeds of one genotype, one of another, a
full-precision retraining and a reference genotype) with real size figures, and a real Optuna SQLite
study beside it. Free of Ray: builds in a few seconds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

STUDY = "unit_study"
RETRAIN = {"retrain.layers": 3, "retrain.init_channels": 8, "retrain.auxiliary": False, "retrain.epochs": 1}


@dataclass
class FakeStudy:
    """Where the store is and what was written into it (the tests' ground truth)."""

    uri: str
    out_dir: Path
    study: str
    parent_id: str
    search: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial id -> info
    retrain: list[dict[str, Any]] = field(default_factory=list)


def _tiny_search(root: Path, out: Path, overrides: dict[str, Any]) -> Any:
    from bnas.config import config_from_dict
    from bnas.search import run_search

    data = {
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "data": {"dataset": "cifar10", "root": str(root), "image_size": 16, "train_subset": 64},
        "search": {
            "layers": 3,
            "init_channels": 4,
            "sampling_k": 2,
            "batch_size": 32,
            "ops": ["max_pool_3x3", "skip_connect", "sep_conv_3x3"],
            "max_batches_per_epoch": 1,
        },
        "reduction": {
            "epochs_per_stage": 1,
            "warmup_epochs": 0,
            "rounds": 1,
            "subnet_epochs": 1,
            "subnet_batch_size": 32,
            "subnet_max_batches": 1,
        },
    }
    for dotted, v in overrides.items():
        sec, key = dotted.split(".")
        data.setdefault(sec, {})[key] = v
    cfg = config_from_dict(data)
    return cfg, run_search(cfg, out, log=None)


def _size(cfg: Any, genotype: Any, method: str | None = None) -> dict[str, int]:
    from bnas.config import config_from_dict
    from bnas.data import get_info
    from bnas.model_size import size_report
    from bnas.retrain import build_network

    d = cfg.to_dict()
    for dotted, v in RETRAIN.items():
        sec, key = dotted.split(".")
        d[sec][key] = v
    if method:
        d["binarization"]["method"] = method
    rcfg = config_from_dict(d)
    rep = size_report(build_network(rcfg, genotype, get_info(rcfg.data)))
    return {k: rep[k] for k in ("params", "binary_params", "fp_params", "packed_bytes", "fp32_bytes")}, rcfg


def build_fake_study(tmp: Path, cifar_root: Path) -> FakeStudy:
    """The store, written through the platform's own writer (:class:`StudyTracker`), as its Tune
    callback does: the schema is the writer's, never a copy of it here."""
    import optuna

    from bnas.genotype import GENOTYPES
    from bnas.platform.tracking import StudyTracker, TrackerConfig
    from bnas.platform.tracking_schema import OPTUNA_DB, RETRAIN, SEARCH, SEARCH_FINAL_METRICS, State

    tmp.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(tmp / 'mlflow.db').resolve()}"
    out = tmp / "bnas_runs" / STUDY
    out.mkdir(parents=True)
    # MLflow puts a SQLite store's artifacts under ./mlruns of the process: keep them in tmp.
    with contextlib.chdir(tmp):
        tracker = StudyTracker(TrackerConfig(uri, STUDY, str(out)))
    tracker.begin_study()
    fake = FakeStudy(uri, out, STUDY, tracker.parent_id)

    # ---- search runs: two real searches; trial 3 found trial 1's genotype with other settings
    real = {
        "t1": ({"binarization.method": "xnor", "reduction.strategy": "performance"}, 0.02),
        "t2": ({"binarization.method": "pcnn", "reduction.strategy": "alpha"}, 0.04),
    }
    results = {}
    for tid, (over, lr) in real.items():
        cfg, res = _tiny_search(cifar_root, tmp / "searches" / tid, {**over, "search.lr": lr})
        results[tid] = (cfg, res, over, lr)
    plan = [
        ("t1", "t1", 0.0),
        ("t2", "t2", 0.0),
        ("t3", "t1", -0.05),  # same genotype as t1, slightly lower derived accuracy
    ]
    for tid, src, delta in plan:
        cfg, res, over, lr = results[src]
        sampled = {**over, "search.lr": lr if tid != "t3" else 0.03}
        run_id = tracker.open_search_run(tid, cfg.flat(), sampled)
        for m in res.metrics:
            tracker.log_epoch(SEARCH, tid, m, int(m["epoch"]))
        size, _ = _size(cfg, res.genotype)
        final = {k: res.final[k] for k in SEARCH_FINAL_METRICS if k in res.final}
        final.update(size, derived_val_acc=res.final["derived_val_acc"] + delta)
        tracker.finish(
            SEARCH,
            tid,
            state=State.COMPLETE,
            result=final,
            genotype_digest=res.genotype.digest,
            artifact_dir=res.out_dir,
            last_epoch=len(res.metrics),
        )
        fake.search[tid] = {
            "run_id": run_id,
            "digest": res.genotype.digest,
            "genotype": res.genotype,
            "final": final,
            "sampled": sampled,
            "epochs": len(res.metrics),
            "cfg": cfg,
        }
    # A pruned trial (one epoch, no final figures, no artifacts) and a failed one.
    cfg1 = results["t1"][0]
    run_id = tracker.open_search_run("t4", cfg1.flat(), {"binarization.method": "xnor", "search.lr": 0.011})
    tracker.log_epoch(SEARCH, "t4", results["t1"][1].metrics[0], 1)
    tracker.finish(SEARCH, "t4", state=State.PRUNED, last_epoch=1)
    fake.search["t4"] = {"run_id": run_id, "digest": None, "state": State.PRUNED}
    run_id = tracker.open_search_run("t5", cfg1.flat(), {"binarization.method": "xnor_channel"})
    tracker.finish(SEARCH, "t5", state=State.FAILED, error="RuntimeError: out of memory")
    fake.search["t5"] = {"run_id": run_id, "digest": None, "state": State.FAILED}

    # ---- retraining runs
    def retrain(
        tid: str | None, seed: int, acc: float, method: str | None = None, name: str | None = None
    ) -> None:
        if tid is not None:
            info = fake.search[tid]
            genotype, cfg, search_run_id = info["genotype"], info["cfg"], info["run_id"]
        else:
            genotype, cfg, search_run_id = GENOTYPES.get(name), cfg1, None
        size, rcfg = _size(cfg, genotype, method)
        trial = f"r{len(fake.retrain)}"
        run_id = tracker.open_retrain_run(
            trial,
            rcfg.flat(),
            genotype_digest=genotype.digest,
            seed=seed,
            search_run_id=search_run_id,
            genotype_name=name,
        )
        # Two epochs; the final test_acc is the last epoch's (logged once, at step 2).
        tracker.log_epoch(RETRAIN, trial, {"test_acc": acc - 0.1, "train_acc": 0.4}, 1)
        tracker.log_epoch(RETRAIN, trial, {"test_acc": acc, "train_acc": 0.5}, 2)
        final = {"test_acc": acc, "test_loss": 2.0, "wall_time_s": 3.0 + seed, **size}
        tracker.finish(RETRAIN, trial, state=State.COMPLETE, result=final, last_epoch=2)
        fake.retrain.append(
            {"run_id": run_id, "digest": genotype.digest, "seed": seed, "acc": acc, "method": method, **size}
        )

    retrain("t1", 0, 0.30)
    retrain("t1", 1, 0.34)
    retrain("t2", 0, 0.40)
    retrain("t2", 0, 0.45, method="fp")  # the same architecture in full precision
    retrain(None, 0, 0.20, name="bnas_xnor")  # a reference genotype

    # ---- Optuna's view of the same trials
    storage = f"sqlite:///{(out / OPTUNA_DB).resolve()}"
    ostudy = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    dists = {
        "binarization.method": optuna.distributions.CategoricalDistribution(["xnor", "xnor_channel", "pcnn"]),
        "search.lr": optuna.distributions.FloatDistribution(0.01, 0.05, log=True),
    }
    for tid in ("t1", "t2", "t3"):
        s = fake.search[tid]
        params = {
            "binarization.method": s["sampled"]["binarization.method"],
            "search.lr": s["sampled"]["search.lr"],
        }
        ostudy.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=s["final"]["derived_val_acc"])
        )
    ostudy.add_trial(
        optuna.trial.create_trial(
            params={"binarization.method": "xnor", "search.lr": 0.011},
            distributions=dists,
            state=optuna.trial.TrialState.PRUNED,
        )
    )
    tracker.close_study()
    return fake


@pytest.fixture(scope="session")
def fake_study(tmp_path_factory: pytest.TempPathFactory, fake_cifar_root: Path) -> FakeStudy:
    return build_fake_study(tmp_path_factory.mktemp("analysis_store"), fake_cifar_root)
