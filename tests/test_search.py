"""The search loop end to end: derivation, resume, misuse, every strategy and binarization."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnas.binarization import BINARIZATIONS, BinarySpec
from bnas.config import ALL_OPS, ConfigError, config_from_dict, load_config
from bnas.derivation import derive_genotype
from bnas.reduction import REDUCTIONS
from bnas.search import Search, run_search
from bnas.supernet import Selection, SuperNetwork, edge_endpoints

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
            "checkpoint_every": 1,
            "validate_every": 1,
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
    d = derive_genotype(net)
    genotype, selection = d.genotype, d.selection
    assert not d.capped
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


def test_no_edge_is_ever_left_with_none_alone() -> None:
    net = SuperNetwork(C=4, num_classes=10, layers=3, ops=["none", "skip_connect"], k=2, spec=BinarySpec())
    with pytest.raises(ValueError, match="would leave only 'none' on normal edge 0"):
        net.remove_op("normal", 0, "skip_connect")
    net.remove_op("normal", 0, "none")  # the other way round is fine
    assert net.edge_ops["normal"][0] == ["skip_connect"]


def _pinned(net: SuperNetwork, ops: dict[int, str]) -> None:
    """alpha/beta set so that edge e's strongest op is ops[e] (default sep_conv_3x3) and the edges from
    the cell inputs win every node; parameter-free ops the strongest where set."""
    with torch.no_grad():
        for t in ("normal", "reduce"):
            net.alphas[t].zero_()
            net.betas[t].zero_()
            for e, (src, _) in enumerate(edge_endpoints(net.steps)):
                net.alphas[t][e, ALL_OPS.index(ops.get(e, "sep_conv_3x3"))] = 5.0
                net.betas[t][e] = 3.0 if src < 2 else 0.0


def test_max_param_free_caps_the_derived_cells() -> None:
    torch.manual_seed(0)
    net = SuperNetwork(C=4, num_classes=10, layers=3, ops=ALL_OPS, k=2, spec=BinarySpec("xnor"))
    # Every node's two strongest edges (from the cell inputs) carry skip_connect or max_pool.
    pools = {
        e: ("skip_connect" if e % 2 else "max_pool_3x3")
        for e, (src, _) in enumerate(edge_endpoints(net.steps))
        if src < 2
    }
    _pinned(net, pools)
    free = derive_genotype(net).genotype
    assert all(op in ("skip_connect", "max_pool_3x3") for op, _ in free.normal)  # 8/8 parameter-free
    d = derive_genotype(net, max_param_free=2)
    for cell in (d.genotype.normal, d.genotype.reduce):
        assert sum(op in ("skip_connect", "max_pool_3x3") for op, _ in cell) == 2
    assert len(d.capped) == 2 * 6
    # The scored network is the derived one: each selected edge runs the genotype's op.
    ends = edge_endpoints(net.steps)
    for t, cell in (("normal", d.genotype.normal), ("reduce", d.genotype.reduce)):
        sel = d.selection.for_cell(t)
        picked = sorted((ends[e][1], ends[e][0], op) for e, op in enumerate(sel) if op is not None)
        assert picked == sorted((2 + k // 2, inp, op) for k, (op, inp) in enumerate(cell))
    net(torch.randn(2, 3, 8, 8), d.selection)
    # Where no parametric op is left in a node, the cap cannot act (a reduced super-network).
    small = SuperNetwork(C=4, num_classes=10, layers=3, ops=["skip_connect"], k=2, spec=BinarySpec())
    assert derive_genotype(small, max_param_free=0).capped == []


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
    assert s.resumed and s.state.global_epoch == 3 and s.state.stage == 1
    resumed = s.run()
    assert resumed.genotype == straight.genotype
    assert resumed.history == straight.history
    assert [m["val_acc"] for m in resumed.metrics] == [m["val_acc"] for m in straight.metrics]
    # metrics.jsonl holds each epoch once, also across the kill.
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_checkpoint_from_other_settings(cifar_root: Path, tmp_path: Path) -> None:
    run_search(config_from_dict(micro_cfg(cifar_root)), tmp_path, log=None)
    before = (tmp_path / "metrics.jsonl").read_text()
    other = config_from_dict(micro_cfg(cifar_root, seed=1, search__lr=0.05))
    with pytest.raises(ConfigError, match="checkpoint of a different run") as e:
        Search(other, tmp_path, log=None)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path)) and "--no-resume" in msg and "\n" not in msg
    assert "seed: 0 in the checkpoint, 1 now" in msg and "search.lr: 0.025 in the checkpoint, 0.05 now" in msg
    assert (tmp_path / "metrics.jsonl").read_text() == before  # a refused resume leaves the folder alone
    # resume=False starts over: one line per epoch of the new run, no stale results.
    res = run_search(other, tmp_path, resume=False, log=None)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2] and not res.final["resumed"]


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
    """Every method trains the super-network to finite, plausible figures (NaN would fail here).

    Two epochs of two batches barely train, so the losses stay near chance, ln 10 = 2.303: over seeds
    0-5 x the 4 methods, on the rebuilt CIFAR-10 and on the fake set, every train loss lay in
    [2.163, 2.410] and every validation loss in [2.135, 2.386] (at most 0.11 above ln 10). The bound
    ln 10 + 0.5 leaves a margin of over 4x that; a loss cannot be lower than 0. (Measured with this
    test's settings plus ``seed``, printing ``res.metrics`` and ``res.final`` per run.)
    """
    res = run_search(
        config_from_dict(micro_cfg(cifar_root, binarization={"method": method})), tmp_path, log=None
    )
    assert [m["epoch"] for m in res.metrics] == [1, 2]
    assert [m["ops_per_edge"] for m in res.metrics] == [3.0, 2.0]
    for m in res.metrics:
        for key in ("train_loss", "val_loss"):  # validate_every: 1
            assert 0 < m[key] < math.log(10) + 0.5, (key, m)  # also false for NaN
        for key in ("train_acc", "val_acc"):
            assert 0 <= m[key] <= 1, (key, m)
    for key in ("derived_val_acc", "proxy_val_acc", "supernet_val_acc"):
        assert 0 <= res.final[key] <= 1, (key, res.final)
    assert res.final["supernet_val_acc"] == res.metrics[-1]["val_acc"]
    # The trained weights (and alpha/beta) are finite too.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["net"]
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(torch.isfinite(v).all() for v in floats)


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
        ("search.validate_every", 0, "search.validate_every: must be >= 1"),
        ("search.validate_every", 1.5, "search.validate_every: expected int"),
        ("search.validate_every", None, "search.validate_every: expected int"),
        ("search.val_max_batches", 0, "search.val_max_batches: must be >= 1 or null"),
        ("search.checkpoint_every", 0, "search.checkpoint_every: must be >= 1"),
        ("search.checkpoint_every", True, "search.checkpoint_every: expected int"),
        ("reduction.subnet_eval_batches", 0, "reduction.subnet_eval_batches: must be >= 1 or null"),
        ("reduction.subnet_eval_batches", "all", "reduction.subnet_eval_batches: expected int or null"),
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


@pytest.mark.slow
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
    assert "epoch 6/6 | stage 6/6 |" in proc.stdout and "eta" in proc.stdout  # progress output (no `none`)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["digest"] == json.loads((out / "final.json").read_text())["genotype_digest"]
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 6 * 28


# ------------------------------------------------------------------ cheaper search phases
SPEED_SETTINGS = ("search.validate_every", "search.val_max_batches", "search.checkpoint_every",
                  "reduction.subnet_eval_batches")  # fmt: skip
TIMING_KEYS = ("elapsed_s", "epoch_time_s")


def _untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]


def six_epochs(root: Path, **over) -> dict:
    """4 ops -> 3 stages of 2 epochs (one warm-up epoch): 6 epochs, 3 reductions."""
    return micro_cfg(
        root,
        search__ops=["skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3"],
        reduction__epochs_per_stage=2,
        reduction__warmup_epochs=1,
        **over,
    )


@pytest.mark.slow
def test_speed_settings_are_listed_with_their_defaults() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bnas", "settings"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for key in SPEED_SETTINGS:
        assert key in proc.stdout, key
    cfg = load_config(None)
    sc = cfg.search
    # Once per stage of L = 5 epochs: no genotype depends on either (tests below).
    assert (sc.validate_every, sc.val_max_batches, sc.checkpoint_every) == (5, None, 5)
    assert cfg.reduction.subnet_eval_batches is None
    # Writing checkpoints less often computes the same thing: a run may resume with another value.
    assert "search.checkpoint_every" not in cfg.result_identity()
    assert {"search.validate_every", "search.val_max_batches", "reduction.subnet_eval_batches"} <= set(
        cfg.result_identity()
    )


class _CountBatches:
    """Counts the validation batches of each :meth:`Search.evaluate` and :meth:`Search._score` call (a
    sampled sub-network's), by kind of call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int]] = []
        counter = self

        def counted(original):
            def wrapped(search: Search, selection=None, *args, **kwargs):
                n = [0]
                hook = search.state.net.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
                try:
                    return original(search, selection, *args, **kwargs)
                finally:
                    hook.remove()
                    kind = "validation" if selection is None else search.timer._stack[-1]
                    counter.calls.append((kind, n[0]))

            return wrapped

        monkeypatch.setattr(Search, "evaluate", counted(Search.evaluate))
        monkeypatch.setattr(Search, "_score", counted(Search._score))

    def batches(self, kind: str) -> list[int]:
        return [n for k, n in self.calls if k == kind]


@pytest.mark.slow
def test_validate_every_skips_validation_and_changes_nothing_else(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def search(cfg: dict, out: str):
        return run_search(config_from_dict(cfg), tmp_path / out, log=None)

    every = search(six_epochs(cifar_root), "a")
    count = _CountBatches(monkeypatch)
    half = search(six_epochs(cifar_root, search__validate_every=2), "b")
    assert len(count.batches("validation")) == 3  # epochs 2, 4 and 6 of 6: half as often
    assert [("val_acc" in m, "val_loss" in m) for m in half.metrics] == [(False, False), (True, True)] * 3
    # Absent, never stale; where both validated they agree; nothing else moves.
    assert [m.get("val_acc") for m in half.metrics][1::2] == [m["val_acc"] for m in every.metrics][1::2]

    def no_val(metrics: list[dict]) -> list[dict]:
        return [{k: v for k, v in m.items() if not k.startswith("val_")} for m in _untimed(metrics)]

    assert no_val(every.metrics) == no_val(half.metrics)
    assert half.genotype == every.genotype and half.history == every.history
    assert half.final["derived_val_acc"] == every.final["derived_val_acc"]
    assert half.final["supernet_val_acc"] == every.final["supernet_val_acc"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert ["val_acc" in m for m in lines] == [False, True] * 3
    # Larger than the search: only the last epoch validates (PC-DARTS's released code).
    last = search(micro_cfg(cifar_root, search__validate_every=50), "c")
    assert ["val_acc" in m for m in last.metrics] == [False, True]
    assert last.final["supernet_val_acc"] == last.metrics[-1]["val_acc"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "over,validation,subnet",
    [
        ({}, 2, 2),  # the whole (capped) split: 32 validation images in batches of 16
        ({"search__val_max_batches": 1}, 1, 2),
        ({"reduction__subnet_eval_batches": 1}, 2, 1),
        ({"search__max_batches_per_epoch": None, "reduction__subnet_eval_batches": 5}, 2, 2),  # split ends
    ],
)
def test_validation_and_subnet_evaluation_batch_caps(
    over: dict, validation: int, subnet: int, cifar_root: Path, tmp_path: Path, monkeypatch
) -> None:
    count = _CountBatches(monkeypatch)
    res = run_search(config_from_dict(micro_cfg(cifar_root, **over)), tmp_path, log=None)
    assert count.batches("validation") == [validation] * 2
    assert count.batches("subnet_eval") == [subnet] * 4  # 2 + 2 sub-networks (3 ops, then both of 2)
    # derived_val_acc and the proxy are always measured on the whole (capped) split
    assert count.batches("derive") == [2, 2]
    assert len(res.metrics) == 2


class _KillAt:
    """Raise at the n-th call of a Search method (after the original ran for ``after=True``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, method: str, n: int, after: bool = False) -> None:
        original, calls = getattr(Search, method), [0]

        def wrapped(search: Search, *a, **kw):
            calls[0] += 1
            if calls[0] == n and not after:
                raise _Killed
            out = original(search, *a, **kw)
            if calls[0] == n:
                raise _Killed
            return out

        monkeypatch.setattr(Search, method, wrapped)


@pytest.fixture(scope="module")
def straight_six(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted 6-epoch search with today's settings (a checkpoint after every epoch)."""
    cfg = config_from_dict(six_epochs(cifar_root, search__validate_every=2))
    return run_search(cfg, tmp_path_factory.mktemp("straight"), log=None)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill",
    [
        ("_train_epoch", 2, True),  # after epoch 2, before any checkpoint: starts over
        ("_train_epoch", 4, True),  # mid-stage 2: resumes from the epoch-3 checkpoint, reruns epoch 4
        ("_train_epoch", 6, False),  # inside the last epoch: resumes after reduction 2, reruns epoch 5
        ("_evaluate_subnets", 2, False),  # inside reduction 2: reruns epoch 4, then the whole reduction
        ("_reduce", 3, True),  # after the last reduction, before its checkpoint: resumes from epoch 6
    ],
    ids=["epoch2", "epoch4", "in-epoch6", "in-reduction2", "after-reduction3"],
)
def test_checkpoint_every_resumes_to_the_identical_search_wherever_it_is_killed(
    kill: tuple, straight_six, cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config_from_dict(six_epochs(cifar_root, search__validate_every=2, search__checkpoint_every=3))
    saved: list[int] = []
    original_save = Search._save

    def save(search: Search, metrics: bool, checkpoint: bool = True) -> None:
        original_save(search, metrics, checkpoint)
        if checkpoint:
            saved.append(search.state.global_epoch)

    monkeypatch.setattr(Search, "_save", save)
    with monkeypatch.context() as m:
        _KillAt(m, *kill)
        with pytest.raises(_Killed):
            run_search(cfg, tmp_path, log=None)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    before = len(lines)  # metrics.jsonl runs ahead of the checkpoint between checkpoints
    resumed = Search(cfg, tmp_path, log=None)
    assert resumed.resumed == bool(saved)
    if saved:
        assert resumed.state.global_epoch == saved[-1] <= before
    res = resumed.run()
    assert res.genotype == straight_six.genotype and res.history == straight_six.history
    assert _untimed(res.metrics) == _untimed(straight_six.metrics)
    assert res.final["derived_val_acc"] == straight_six.final["derived_val_acc"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert _untimed(lines) == _untimed(straight_six.metrics)  # each epoch once


@pytest.mark.slow
def test_checkpoint_every_writes_fewer_checkpoints_and_always_one_after_a_reduction(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnas.training import RunFolder

    written: list[tuple[int, int]] = []
    original = RunFolder.save_checkpoint

    def save_checkpoint(folder: RunFolder, state: dict) -> None:
        written.append((state["position"]["global_epoch"], state["position"]["stage"]))
        original(folder, state)

    monkeypatch.setattr(RunFolder, "save_checkpoint", save_checkpoint)
    cfg = config_from_dict(six_epochs(cifar_root, search__checkpoint_every=4))
    run_search(cfg, tmp_path, log=None)
    # epoch 4, and after each of the 3 reductions (epochs 2, 4, 6 -> stages 1, 2, 3)
    assert written == [(2, 1), (4, 1), (4, 2), (6, 3)]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        1, 2, 3, 4, 5, 6
    ]  # fmt: skip


# ------------------------------------------------------------------ decisions on signal
def _searcher(root: Path, tmp: Path, **over) -> Search:
    return Search(config_from_dict(micro_cfg(root, **over)), tmp, log=None)


@pytest.mark.parametrize("weights", ["snapshot", "shared"])
def test_snapshot_scores_do_not_depend_on_the_evaluation_order(
    weights: str, cifar_root: Path, tmp_path: Path
) -> None:
    s = _searcher(cifar_root, tmp_path, reduction__subnet_weights=weights, reduction__subnet_score="loss")
    n = len(s.state.net.edge_ops["normal"])
    a = Selection(["sep_conv_3x3"] * n, ["max_pool_3x3"] * n)
    b = Selection(["skip_connect"] * n, ["sep_conv_3x3"] * n)
    before = [p.detach().clone() for p in s.state.net.weight_parameters()]
    first, _, again = s._evaluate_subnets([a, b, a])
    after = list(s.state.net.weight_parameters())
    if weights == "snapshot":
        assert first == again  # bit for bit: same weights, optimizer state and batches for every one
        assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))  # nothing kept
    else:
        assert first != again  # the second evaluation of `a` started from weights trained twice more
        assert not all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    assert [r["position"] for r in s._subnets] == [0, 1, 2]
    assert all(r["score"] == -r["loss"] and r["se"] > 0 and r["n"] == 32 for r in s._subnets)


def test_the_proxy_is_the_same_for_every_strategy_on_the_same_network(
    cifar_root: Path, tmp_path: Path
) -> None:
    values = {}
    for strategy in ("performance", "alpha", "none", "ucb"):
        s = _searcher(cifar_root, tmp_path / strategy, reduction__strategy=strategy)
        sel = derive_genotype(s.state.net).selection  # the same fresh network (same seed) for all
        before = [p.detach().clone() for p in s.state.net.weight_parameters()]
        values[strategy] = s._proxy(sel)
        assert all(torch.equal(x, y) for x, y in zip(before, s.state.net.weight_parameters(), strict=True))
    assert len(set(values.values())) == 1, values
    # Fine-tuning changes the figure (else the proxy would be the shared-weight accuracy again).
    s = _searcher(cifar_root, tmp_path / "p0", search__proxy_steps=0)
    assert s._proxy(derive_genotype(s.state.net).selection) != values["performance"]


def test_a_search_records_its_decision_diagnostics(cifar_root: Path, tmp_path: Path) -> None:
    res = run_search(config_from_dict(micro_cfg(cifar_root, reduction__rounds=2)), tmp_path, log=None)
    final = json.loads((tmp_path / "final.json").read_text())
    # 2 rounds x ceil(3/2) sub-networks in stage 1; in stage 2, 2 rounds x both of the last two ops
    # (reduction.min_pool 2)
    assert [st["diagnostics"]["subnets"] for st in final["stage_times"]] == [4, 4]
    for st in final["stage_times"]:
        d = st["diagnostics"]
        assert d["subnets"] == len(st["subnets"])
        assert set(d) >= {
            "order_rho",
            "snr",
            "removed_lowest_alpha",
            "alpha_entropy_normal",
            "beta_entropy",
            "param_free_normal",
            "param_free_reduce",
            "none_spared",
        }
        assert 0.0 <= d["alpha_entropy_normal"] <= 1.0 and 0.0 <= d["removed_lowest_alpha"] <= 1.0
    assert 0.0 <= final["proxy_val_acc"] <= 1.0
    # search.max_param_free 2 (the default): each replacement took a weighted op for a parameter-free one
    assert all(
        c["taken"][1] == "sep_conv_3x3" and c["dropped"][1] != "sep_conv_3x3"
        for c in final["param_free_capped"]
    )
    assert (
        res.final["param_free_normal"]
        == sum(op in ("skip_connect", "max_pool_3x3") for op, _ in res.genotype.normal) / 8
    )


def test_none_can_be_excluded_from_the_search(cifar_root: Path, tmp_path: Path) -> None:
    ops = ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"]
    s = _searcher(cifar_root, tmp_path, search__ops=ops, search__none_op="exclude")
    assert s.n_stages == 2 and all("none" not in e for e in s.state.net.edge_ops["normal"])
    with pytest.raises(ConfigError, match="3 stages would remove more than the 2 ops"):
        config_from_dict(
            micro_cfg(cifar_root, search__ops=ops, search__none_op="exclude", reduction__stages=3)
        )


def test_collapse_stop_ends_a_stage_and_degenerate_cells_are_reported(
    cifar_root: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    cfg = config_from_dict(
        micro_cfg(
            cifar_root,
            search__ops=["skip_connect", "max_pool_3x3", "avg_pool_3x3"],
            search__collapse_stop=0.5,
            reduction__epochs_per_stage=3,
        )
    )
    res = Search(cfg, tmp_path, log=lines.append).run()
    # Every cell is parameter-free from the start: each stage stops after its first epoch.
    assert [st["collapse_stop"] for st in res.stages] == [1, 1]
    assert [m["epoch"] for m in res.metrics] == [1, 2]
    assert res.final["degenerate_cells"] == {"normal": 1.0, "reduce": 1.0}
    assert any(ln.startswith("warning: degenerate cell(s): normal 100%, reduce 100%") for ln in lines)


@pytest.mark.parametrize("method", ["xnor", "pcnn", "fp"])
def test_stacked_subnet_scores_equal_one_at_a_time(method: str, cifar_root: Path, tmp_path: Path) -> None:
    """Sub-networks scored in one stacked pass (runtime.subnet_batch) get the figures they get one at a
    time: bit for bit on the CPU (each group's BN statistics are its own; the same kernels run)."""
    import random

    scores = {}
    for batch in (1, 3):
        s = _searcher(
            cifar_root,
            tmp_path / str(batch),
            binarization={"method": method},
            reduction__subnet_epochs=0,
            runtime={"subnet_batch": batch},
        )
        ops, n = s.state.net.edge_ops, len(s.state.net.edge_ops["normal"])
        rng = random.Random(0)
        perms = {t: [rng.sample(ops[t][e], 3) for e in range(n)] for t in ("normal", "reduce")}
        sels = [Selection([p[j] for p in perms["normal"]], [p[j] for p in perms["reduce"]]) for j in range(3)]
        s._evaluate_subnets(sels)
        scores[batch] = [(r["acc"], r["loss"], r["se"]) for r in s._subnets]
    assert scores[1] == scores[3]
    assert len(set(scores[1])) == 3  # three different sub-networks, three different figures
