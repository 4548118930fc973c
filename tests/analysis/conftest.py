"""A small but real study store for the analysis tests, written exactly in the platform's schema.

Two real tiny searches (in process, on the fake CIFAR-10) give real ``genotype.json``,
``history.json``, ``metrics.jsonl`` and ``config.json`` artifacts and per-epoch metrics; around them a
real SQLite MLflow store (written with ``MlflowClient``, as ``bnas.platform.tracking`` does) holds
the parent run, five search runs (two sharing a genotype, one pruned, one failed), retraining runs
(two seeds of one genotype, one of another, a full-precision retraining and a reference genotype)
with real size figures, and a real Optuna SQLite study beside it. Module-free of Ray: builds in a
few seconds.
"""

from __future__ import annotations

import json
import time
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
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from bnas.genotype import GENOTYPES

    tmp.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(tmp / 'mlflow.db').resolve()}"
    out = tmp / "bnas_runs" / STUDY
    out.mkdir(parents=True)
    (out / "mlflow_runs.json").write_text(json.dumps({"tracking_uri": uri, "parent": None, "runs": {}}))
    client = MlflowClient(uri)
    exp = client.create_experiment(f"bnas/{STUDY}")
    parent = client.create_run(
        exp, run_name=STUDY, tags={"bnas.kind": "study", "bnas.study": STUDY}
    ).info.run_id
    fake = FakeStudy(uri, out, STUDY, parent)

    def log_params(run_id: str, params: dict[str, Any]) -> None:
        items = [
            Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()
        ]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100])

    def new_run(name: str, kind: str, tags: dict[str, str]) -> str:
        all_tags = {
            "mlflow.parentRunId": parent,
            "bnas.kind": kind,
            "bnas.study": STUDY,
            "bnas.state": "running",
        }
        return client.create_run(exp, run_name=name, tags={**all_tags, **tags}).info.run_id

    def finish(run_id: str, state: str, final: dict[str, float], tags: dict[str, str] | None = None) -> None:
        ts = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in final.items()],
            tags=[RunTag(k, v) for k, v in {"bnas.state": state, **(tags or {})}.items()],
        )
        client.set_terminated(run_id, status="FAILED" if state == "failed" else "FINISHED")

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
        run_id = new_run(f"search-{tid}", "search", {"bnas.trial_id": tid})
        log_params(run_id, {**cfg.flat(), **{f"space.{k}": v for k, v in sampled.items()}})
        ts = int(time.time() * 1000)
        epoch_metrics = [
            Metric(k, float(m[k]), ts, int(m["epoch"]))
            for m in res.metrics
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "ops_per_edge", "stage")
        ]
        client.log_batch(run_id, metrics=epoch_metrics)
        size, _ = _size(cfg, res.genotype)
        final = {
            "derived_val_acc": res.final["derived_val_acc"] + delta,
            "supernet_val_acc": res.final["supernet_val_acc"],
            "search_time_s": res.final["search_time_s"],
            **size,
        }
        finish(run_id, "complete", final, {"bnas.genotype_digest": res.genotype.digest})
        for rel in ("genotype.json", "history.json", "metrics.jsonl", "config.json"):
            client.log_artifact(run_id, str(res.out_dir / rel))
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
    run_id = new_run("search-t4", "search", {"bnas.trial_id": "t4"})
    log_params(run_id, {**cfg1.flat(), "space.binarization.method": "xnor", "space.search.lr": 0.011})
    m0 = results["t1"][1].metrics[0]
    client.log_batch(run_id, metrics=[Metric("val_acc", m0["val_acc"], int(time.time() * 1000), 1)])
    finish(run_id, "pruned", {})
    fake.search["t4"] = {"run_id": run_id, "digest": None, "state": "pruned"}
    run_id = new_run("search-t5", "search", {"bnas.trial_id": "t5"})
    log_params(run_id, {**cfg1.flat(), "space.binarization.method": "xnor_channel"})
    finish(run_id, "failed", {}, {"bnas.error": "RuntimeError: out of memory"})
    fake.search["t5"] = {"run_id": run_id, "digest": None, "state": "failed"}

    # ---- retraining runs
    def retrain(
        tid: str | None, seed: int, acc: float, method: str | None = None, name: str | None = None
    ) -> None:
        if tid is not None:
            info = fake.search[tid]
            genotype, cfg = info["genotype"], info["cfg"]
            tags = {"bnas.search_run_id": info["run_id"]}
        else:
            genotype, cfg = GENOTYPES.get(name), cfg1
            tags = {"bnas.genotype_name": name}
        size, rcfg = _size(cfg, genotype, method)
        digest = genotype.digest
        run_id = new_run(
            f"retrain-{digest}-s{seed}",
            "retrain",
            {
                **tags,
                "bnas.genotype_digest": digest,
                "bnas.seed": str(seed),
                "bnas.trial_id": f"r{len(fake.retrain)}",
            },
        )
        log_params(run_id, rcfg.flat())
        ts = int(time.time() * 1000)
        # The last epoch's test_acc differs from the final one: the loader must take the final (step 0).
        client.log_batch(
            run_id,
            metrics=[
                Metric("test_acc", acc - 0.1, ts, 1),
                Metric("test_acc", acc - 0.05, ts, 2),
                Metric("train_acc", 0.5, ts, 2),
            ],
        )
        finish(run_id, "complete", {"test_acc": acc, "test_loss": 2.0, "wall_time_s": 3.0 + seed, **size})
        fake.retrain.append(
            {"run_id": run_id, "digest": digest, "seed": seed, "acc": acc, "method": method, **size}
        )

    retrain("t1", 0, 0.30)
    retrain("t1", 1, 0.34)
    retrain("t2", 0, 0.40)
    retrain("t2", 0, 0.45, method="fp")  # the same architecture in full precision
    retrain(None, 0, 0.20, name="bnas_xnor")  # a reference genotype

    # ---- Optuna's view of the same trials
    storage = f"sqlite:///{(out / 'optuna.db').resolve()}"
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
    client.set_terminated(parent, status="FINISHED")
    return fake


@pytest.fixture(scope="session")
def fake_study(tmp_path_factory: pytest.TempPathFactory, fake_cifar_root: Path) -> FakeStudy:
    return build_fake_study(tmp_path_factory.mktemp("analysis_store"), fake_cifar_root)
