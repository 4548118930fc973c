"""The search loop end to end: derivation, resume, misuse, every strategy and binarization."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnas.binarization import BINARIZATIONS, BinarySpec
from bnas.config import ALL_OPS, ConfigError, config_from_dict, load_config
from bnas.reduction import REDUCTIONS
from bnas.search import Search, derive_genotype, run_search
from bnas.supernet import SuperNetwork, edge_endpoints

REPO = Path(__file__).resolve().parents[1]


def micro_cfg(root: Path, **over) -> dict:
    """3 ops -> 2 stages of 1 epoch, 3 cells of 4 channels, 8x8 images, 64 images."""
    cfg = {
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "data": {"root": str(root), "image_size": 8, "train_subset": 64},
        "binarization": {"method": "xnor"},
        "search": {
            "layers": 3,
            "init_channels": 4,
            "sampling_k": 2,
            "batch_size": 16,
            "ops": ["skip_connect", "max_pool_3x3", "sep_conv_3x3"],
            "max_batches_per_epoch": 2,
        },
        "reduction": {
            "strategy": "performance",
            "epochs_per_stage": 1,
            "warmup_epochs": 0,
            "rounds": 1,
            "subnet_epochs": 1,
            "subnet_batch_size": 16,
            "subnet_max_batches": 1,
        },
    }
    for dotted, v in over.items():
        sec, _, key = dotted.partition("__")
        if key:
            cfg[sec][key] = v
        else:
            cfg[sec] = v
    return cfg


def test_derivation_never_picks_none_and_keeps_the_two_strongest_edges() -> None:
    torch.manual_seed(0)
    net = SuperNetwork(C=4, num_classes=10, layers=3, ops=ALL_OPS, k=2, spec=BinarySpec("xnor"))
    with torch.no_grad():
        for t in ("normal", "reduce"):
            net.alphas[t].normal_()
            net.alphas[t][:, ALL_OPS.index("none")] = 10.0  # none is by far the most likely everywhere
            net.betas[t].normal_()
    genotype, selection, fallbacks = derive_genotype(net)
    assert not fallbacks
    for t in ("normal", "reduce"):
        edges = genotype.normal if t == "normal" else genotype.reduce
        assert all(op != "none" for op, _ in edges)
        with torch.no_grad():
            probs = net.op_probabilities(t)
            w = net.edge_weights(t)
        ends = edge_endpoints(net.steps)
        strength = []
        for e, names in enumerate(net.edge_ops[t]):
            p = {o: float(v) for o, v in zip(names, probs[e], strict=True) if o != "none"}
            best = max(p, key=p.get)
            strength.append((best, float(w[e]) * p[best]))
        for node in range(2, 6):
            idx = [e for e, (_, d) in enumerate(ends) if d == node]
            top = sorted(idx, key=lambda e: -strength[e][1])[:2]
            expect = sorted((ends[e][0], strength[e][0]) for e in top)
            got = sorted((inp, op) for op, inp in edges[2 * (node - 2) : 2 * (node - 2) + 2])
            assert got == expect
        sel = selection.normal if t == "normal" else selection.reduce
        assert sum(s is not None for s in sel) == 8


def test_derivation_falls_back_when_only_none_is_left() -> None:
    torch.manual_seed(0)
    net = SuperNetwork(C=4, num_classes=10, layers=3, ops=["none", "skip_connect"], k=2, spec=BinarySpec())
    net.remove_op("normal", 0, "skip_connect")
    history = [{"cell_type": "normal", "edge": 0, "op": "skip_connect"}]
    genotype, selection, fallbacks = derive_genotype(net, history)
    assert fallbacks == [{"cell_type": "normal", "edge": 0, "op": "skip_connect"}]
    assert genotype.normal[0] == ("skip_connect", 0)  # node 2 has only edges 0 and 1
    assert selection.normal[0] == "none"  # what the super-network can still run there
    net(torch.randn(2, 3, 8, 8), selection)


def test_search_reduces_to_one_op_per_edge_and_writes_its_outputs(cifar_root: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(micro_cfg(cifar_root))
    seen: list[dict] = []
    res = run_search(cfg, tmp_path, on_epoch=seen.append, log=None)
    assert [m["epoch"] for m in seen] == [1, 2] and seen[-1]["total_epochs"] == 2
    assert [m["ops_per_edge"] for m in seen] == [3.0, 2.0]
    assert len(res.history) == 2 * 2 * 14  # 2 stages x 28 edges
    assert all(h["op"] not in h["left"] for h in res.history)
    for f in ("genotype.json", "history.json", "metrics.jsonl", "final.json", "config.json", "checkpoint.pt"):
        assert (tmp_path / f).is_file(), f
    saved = json.loads((tmp_path / "genotype.json").read_text())
    assert saved == res.genotype.to_dict()
    assert 0.0 <= res.final["derived_val_acc"] <= 1.0
    assert res.final["genotype_digest"] == res.genotype.digest
    assert [s["ops_per_edge_after"] for s in res.stages] == [2.0, 1.0]


class _Killed(Exception):
    pass


def test_killed_and_resumed_search_gives_the_same_genotype(cifar_root: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(
        micro_cfg(
            cifar_root,
            search__ops=["skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3"],
            reduction__epochs_per_stage=2,
            reduction__warmup_epochs=1,
        )
    )
    straight = run_search(cfg, tmp_path / "a", log=None)

    def kill_after_3(m: dict) -> None:
        if m["epoch"] == 3:  # mid-stage 2
            raise _Killed

    with pytest.raises(_Killed):
        run_search(cfg, tmp_path / "b", on_epoch=kill_after_3, log=None)
    s = Search(cfg, tmp_path / "b", log=None)
    assert s.resumed and s.global_epoch == 3 and s.stage == 1
    resumed = s.run()
    assert resumed.genotype == straight.genotype
    assert resumed.history == straight.history
    assert [m["val_acc"] for m in resumed.metrics] == [m["val_acc"] for m in straight.metrics]
    # metrics.jsonl holds each epoch once, also across the kill.
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_checkpoint_from_other_settings(cifar_root: Path, tmp_path: Path) -> None:
    run_search(config_from_dict(micro_cfg(cifar_root)), tmp_path, log=None)
    other = config_from_dict(micro_cfg(cifar_root, seed=1))
    with pytest.raises(ValueError, match="other settings"):
        Search(other, tmp_path, log=None)


@pytest.mark.parametrize("strategy", REDUCTIONS.names())
def test_every_strategy_runs(strategy: str, cifar_root: Path, tmp_path: Path) -> None:
    res = run_search(
        config_from_dict(micro_cfg(cifar_root, reduction__strategy=strategy)), tmp_path, log=None
    )
    left = 3.0 if strategy == "none" else 1.0
    assert res.metrics[-1]["ops_per_edge"] == (3.0 if strategy == "none" else 2.0)
    assert res.stages[-1]["ops_per_edge_after"] == left
    assert res.genotype.digest == res.final["genotype_digest"]


@pytest.mark.parametrize("method", [m for m in BINARIZATIONS.names() if m != "xnor"])
def test_every_binarization_searches(method: str, cifar_root: Path, tmp_path: Path) -> None:
    res = run_search(
        config_from_dict(micro_cfg(cifar_root, binarization={"method": method})), tmp_path, log=None
    )
    assert len(res.metrics) == 2


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("search.init_channels", 5, "not divisible by sampling_k"),
        ("search.sampling_k", 3, "not divisible by sampling_k"),
        ("reduction.rounds", 0, "reduction.rounds: must be >= 1"),
        ("reduction.epochs_per_stage", 0, "reduction.epochs_per_stage: must be >= 1"),
        ("reduction.strategy", "greedy", "unknown name 'greedy'; valid: performance, alpha, none, ucb"),
        ("reduction.warmup_epochs", 9, "exceeds epochs_per_stage"),
        ("search.ops", ["sep_conv_3x3", "conv_7x7"], "unknown operation"),
    ],
)
def test_misuse_fails_before_any_work(key: str, value, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(REPO / "configs" / "search_tiny.yaml", {key: value})


def test_too_many_stages_is_refused(cifar_root: Path) -> None:
    with pytest.raises(ConfigError, match="reduction.stages: 3 stages would remove more than the 2 ops"):
        config_from_dict(micro_cfg(cifar_root, reduction__stages=3))
    # `none` removes nothing, so any number of stages is fine.
    config_from_dict(micro_cfg(cifar_root, reduction__stages=3, reduction__strategy="none"))


def test_tiny_search_config_runs_end_to_end_from_the_command_line(cifar_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnas",
            "search",
            "--config",
            str(REPO / "configs" / "search_tiny.yaml"),
            "--data-root",
            str(cifar_root),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[stage 7/7 epoch 1/1 | 7/7]" in proc.stdout  # progress output
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["digest"] == json.loads((out / "final.json").read_text())["genotype_digest"]
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 7 * 28
