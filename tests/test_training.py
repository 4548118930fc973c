"""The run skeleton shared by search and retraining: identity, weights_only, metrics, RNG, phases, pruning."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bnas.binarization import BinarySpec
from bnas.config import ConfigError, ExperimentConfig, config_from_dict
from bnas.genotype import GENOTYPES
from bnas.retrain import retrain
from bnas.search import PHASES, Search, run_search
from bnas.supernet import SuperNetwork
from bnas.training import (
    PhaseTimer,
    RunFolder,
    derive_seed,
    identity_diff,
    isolated_rng,
    prune_optimizer,
    timed_batches,
)

KINDS = ["search", "retrain"]


def _cfg(root: Path, **over: object) -> ExperimentConfig:
    """A micro search (3 ops -> 2 stages of 1 epoch) and a micro retraining (1 epoch) in one config."""
    d: dict = {
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "data": {"root": str(root), "image_size": 8, "train_subset": 64, "test_subset": 32},
        "search": {"layers": 3, "init_channels": 4, "batch_size": 16, "max_batches_per_epoch": 2,
                   "ops": ["skip_connect", "max_pool_3x3", "sep_conv_3x3"], "checkpoint_every": 1},
        "reduction": {"strategy": "performance", "epochs_per_stage": 1, "warmup_epochs": 0, "rounds": 1,
                      "subnet_batch_size": 16, "subnet_max_batches": 1},
        "retrain": {"layers": 3, "init_channels": 4, "epochs": 2, "batch_size": 16, "eval_batch_size": 32,
                    "max_batches_per_epoch": 2, "drop_path_prob": 0.2, "checkpoint_every": 1},
    }  # fmt: skip
    for dotted, v in over.items():
        sec, _, key = dotted.partition("__")
        if key:
            d[sec][key] = v
        else:
            d[sec] = v
    return config_from_dict(d)


def _run(kind: str, cfg: ExperimentConfig, out: Path, **kw) -> dict:
    """Run one search or retraining; return its final figures."""
    if kind == "search":
        return run_search(cfg, out, log=None, **kw).final
    return retrain(cfg, GENOTYPES.get("bnas_xnor"), out, log=None, **kw)


def _epochs(out: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]


class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def on_epoch(m: dict) -> None:
        if m["epoch"] == epoch:
            raise _Stop

    return on_epoch


# --------------------------------------------------------------------------------------------
# seeds and random state
# --------------------------------------------------------------------------------------------


def test_derive_seed_is_the_searchs_formula() -> None:
    s = 0
    for p in (1, 5):
        s = (s * 1_000_003 + p + 7_919) % 2**62
    assert derive_seed(0, 1, 5) == s
    assert derive_seed(3) == 3 and derive_seed(3, 0) != derive_seed(3, 1) != derive_seed(4, 1)
    assert 0 <= derive_seed(2**70, 2**70, 1) < 2**62


def test_isolated_rng_restores_every_generator_even_after_an_error() -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expect = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with pytest.raises(RuntimeError), isolated_rng(torch.device("cpu")):
        random.seed(9), np.random.seed(9), torch.manual_seed(9)
        torch.rand(5)
        raise RuntimeError
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expect


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_leaves_the_callers_random_state_alone(
    kind: str, fake_cifar_root: Path, tmp_path: Path
) -> None:
    def draw() -> tuple:
        return torch.rand(1).item(), random.random(), float(np.random.rand())

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expect = draw()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    _run(kind, _cfg(fake_cifar_root), tmp_path)
    assert draw() == expect


# --------------------------------------------------------------------------------------------
# the run folder: identity, weights_only, metrics
# --------------------------------------------------------------------------------------------


def test_identity_mismatch_names_the_folder_every_key_and_the_remedy(tmp_path: Path) -> None:
    RunFolder(tmp_path, {"seed": 0, "search.lr": 0.025, "search.ops": ["a"], "gone": 1}).save_checkpoint({})
    (tmp_path / "metrics.jsonl").write_text("kept\n")
    now = {"seed": 1, "search.lr": 0.025, "search.ops": ["a", "b"], "new": True}
    with pytest.raises(ConfigError) as e:
        RunFolder(tmp_path, now).open(resume=True, config={})
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}: checkpoint.pt is the checkpoint of a different run")
    for part in (
        "seed: 0 in the checkpoint, 1 now",
        'search.ops: ["a"] in the checkpoint, ["a", "b"] now',
        "gone: 1 in the checkpoint, <unset> now",
        "new: <unset> in the checkpoint, true now",
        "another output folder",
        "resume=False (--no-resume)",
    ):
        assert part in msg, part
    assert "search.lr" not in msg and "\n" not in msg
    assert (tmp_path / "metrics.jsonl").read_text() == "kept\n"  # refused before anything changed
    assert identity_diff({"a": 1}, {"a": 1}) == []


def test_result_identity_ignores_where_and_how_a_run_computes(fake_cifar_root: Path) -> None:
    a = _cfg(fake_cifar_root)
    b = _cfg("/elsewhere", device="auto", threads=2, data__num_workers=2, data__download=True)
    assert a.result_identity() == b.result_identity()
    assert a.result_identity() != _cfg(fake_cifar_root, search__lr=0.05).result_identity()


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_resumes_after_a_device_or_data_root_change(
    kind: str, fake_cifar_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(_Stop):
        _run(kind, _cfg(fake_cifar_root), tmp_path / "run", on_epoch=_stop_after(1))
    moved = tmp_path / "moved_data"
    moved.symlink_to(fake_cifar_root, target_is_directory=True)
    cfg = _cfg(moved, device="auto")  # (threads stay 1: the setting is process-wide)
    seen: list[dict] = []
    _run(kind, cfg, tmp_path / "run", on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == [2]  # resumed after epoch 1, not started over
    assert _epochs(tmp_path / "run") == [1, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["root"] == str(moved)


class _RunsCode:
    """Pickles as a call of ``os.makedirs(path)``: loading it would run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_holding_code_is_refused_and_nothing_runs(
    kind: str, fake_cifar_root: Path, tmp_path: Path
) -> None:
    cfg = _cfg(fake_cifar_root)
    out, marker = tmp_path / "run", tmp_path / "code_ran"
    out.mkdir()
    identity = RunFolder(out, cfg.result_identity()).identity
    torch.save({"identity": identity, "payload": _RunsCode(marker)}, out / "checkpoint.pt")
    with pytest.raises(
        ConfigError, match=r"holds os.makedirs, which is not plain data .* could run code"
    ) as e:
        _run(kind, cfg, out)
    assert str(e.value).startswith(str(out)) and "--no-resume" in str(e.value)
    assert not marker.exists()  # the pickled call never ran
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # and neither did the run


@pytest.mark.parametrize(
    "content,match",
    [(b"not a checkpoint", "cannot be read"), (b"", "cannot be read"), (None, "no run identity")],
)
def test_unreadable_or_identity_less_checkpoints_are_refused(
    content: bytes | None, match: str, tmp_path: Path
) -> None:
    path = tmp_path / "checkpoint.pt"
    if content is None:
        torch.save({"version": 1, "config": {}}, path)  # a checkpoint of the earlier format
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        RunFolder(tmp_path, {"seed": 0}).read_checkpoint()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_metrics_never_hold_an_epoch_twice(kind: str, fake_cifar_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(fake_cifar_root)
    with pytest.raises(_Stop):
        _run(kind, cfg, tmp_path, on_epoch=_stop_after(1))
    _run(kind, cfg, tmp_path)  # resumed
    assert _epochs(tmp_path) == [1, 2]
    _run(kind, cfg, tmp_path)  # finished: resumes with nothing to do
    assert _epochs(tmp_path) == [1, 2]
    with pytest.raises(_Stop):
        _run(kind, cfg, tmp_path, resume=False, on_epoch=_stop_after(1))  # starts over
    assert _epochs(tmp_path) == [1] and not (tmp_path / "final.json").exists()
    _run(kind, cfg, tmp_path, resume=False)
    assert _epochs(tmp_path) == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------------------------
# phase timing
# --------------------------------------------------------------------------------------------


def test_phase_timer_charges_each_second_to_the_innermost_phase() -> None:
    now = [0.0]
    timer = PhaseTimer(names=("a", "b"), clock=lambda: now[0])
    with timer("a"):
        now[0] += 1.0
        with timer("b"):
            now[0] += 2.0
        now[0] += 3.0
    before = timer.snapshot()
    with timer("b"):
        now[0] += 0.5
    now[0] += 100.0  # outside every phase: not counted
    assert timer.totals == {"a": 4.0, "b": 2.5}
    assert timer.since(before) == {"a": 0.0, "b": 0.5}
    timer.add({"a": 1.0})
    assert timer.totals["a"] == 5.0
    with pytest.raises(ValueError, match="unknown phase 'c'"), timer("c"):
        pass


@pytest.mark.slow
def test_search_reports_phase_times_that_add_up_to_its_wall_time(
    fake_cifar_root: Path, tmp_path: Path
) -> None:
    res = run_search(
        _cfg(fake_cifar_root, reduction__subnet_epochs=1), tmp_path, log=None
    )  # every phase runs
    final = json.loads((tmp_path / "final.json").read_text())
    phases = final["phase_times_s"]
    assert set(phases) == set(PHASES) and all(v >= 0 for v in phases.values())
    assert all(phases[p] > 0 for p in ("data", "weight_step", "arch_step", "validation", "subnet_train",
                                       "subnet_eval", "checkpoint", "derive"))  # fmt: skip
    wall = final["search_time_s"]
    assert 0.8 * wall - 0.05 <= sum(phases.values()) <= wall + 1e-6
    per_stage = [s["phases"] for s in final["stage_times"]]
    assert len(per_stage) == 2 and all(set(p) == set(PHASES) for p in per_stage)
    for p in PHASES:
        assert sum(s[p] for s in per_stage) <= phases[p] + 1e-9
    assert per_stage[0]["derive"] == 0.0 and res.final["phase_times_s"] == phases


class _Batches:
    """Five numbered batches; counts how many were fetched."""

    def __init__(self) -> None:
        self.fetched = 0

    def __iter__(self):
        for i in range(5):
            self.fetched += 1
            yield torch.full((1,), float(i)), torch.tensor([i])


@pytest.mark.parametrize(
    "cap,fetch_past_cap,fetched", [(2, True, 3), (2, False, 2), (None, False, 5), (5, True, 5), (9, False, 5)]
)
def test_timed_batches_fetches_the_batch_past_the_cap_only_when_asked(
    cap: int | None, fetch_past_cap: bool, fetched: int
) -> None:
    loader, timer = _Batches(), PhaseTimer(names=("data",))
    batches = timed_batches(loader, timer, torch.device("cpu"), cap, fetch_past_cap=fetch_past_cap)
    got = [int(y) for _, y in batches]
    assert got == list(range(min(cap or 5, 5)))
    assert loader.fetched == fetched  # the dropped fetch is what keeps an unreseeded loader's stream
    assert timer.totals["data"] >= 0


def test_an_epoch_between_checkpoints_writes_only_the_metrics(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path, {"seed": 0})
    folder.open(resume=False, config={})
    folder.end_epoch({"position": 1}, [{"epoch": 1}])
    folder.end_epoch(None, [{"epoch": 1}, {"epoch": 2}])
    assert folder.read_checkpoint()["position"] == 1  # the epoch-1 checkpoint, untouched
    assert _epochs(tmp_path) == [1, 2]


@pytest.mark.slow
def test_skipping_the_batch_past_the_cap_changes_nothing(
    fake_cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search skips the dropped fetch only for loaders it reseeds before every pass (train and
    validation); a search that makes every fetch (the behaviour before) computes the same numbers."""
    cfg = _cfg(fake_cifar_root, search__ops=["skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3"],
               reduction__epochs_per_stage=2, reduction__warmup_epochs=1)  # fmt: skip
    skipping = run_search(cfg, tmp_path / "a", log=None)

    def every_fetch(*args, fetch_past_cap: bool = True, **kw):
        return timed_batches(*args, fetch_past_cap=True, **kw)

    monkeypatch.setattr("bnas.search.timed_batches", every_fetch)
    fetching = run_search(cfg, tmp_path / "b", log=None)
    assert skipping.genotype == fetching.genotype and skipping.history == fetching.history
    timing = ("elapsed_s", "epoch_time_s")
    assert [{k: v for k, v in m.items() if k not in timing} for m in skipping.metrics] == [
        {k: v for k, v in m.items() if k not in timing} for m in fetching.metrics
    ]
    assert skipping.final["derived_val_acc"] == fetching.final["derived_val_acc"]


# --------------------------------------------------------------------------------------------
# the weight optimizer across reductions
# --------------------------------------------------------------------------------------------


def test_pruning_drops_removed_parameters_and_keeps_the_others_momentum() -> None:
    torch.manual_seed(0)
    net = SuperNetwork(C=4, num_classes=10, layers=3, ops=["skip_connect", "sep_conv_3x3", "dil_conv_3x3"],
                       k=2, spec=BinarySpec("xnor"))  # fmt: skip
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9)
    torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
    opt.step()
    before = {n: (p, opt.state[p]["momentum_buffer"]) for n, p in net.named_weight_parameters()}
    net.remove_op("normal", 0, "sep_conv_3x3")
    net.remove_op("reduce", 3, "dil_conv_3x3")
    alive = net.weight_parameters()
    removed = prune_optimizer(opt, alive)
    gone = [n for n in before if n not in dict(net.named_weight_parameters())]
    assert removed == len(gone) > 0
    assert all(".edges.0.ops.sep_conv_3x3." in n or ".edges.3.ops.dil_conv_3x3." in n for n in gone)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in alive]
    assert set(opt.state) == set(alive)  # removed parameters' state is gone too
    for n, p in net.named_weight_parameters():
        assert opt.state[p]["momentum_buffer"] is before[n][1]  # kept, untouched
    opt.step()  # and the optimizer goes on


def _cosine(lr: float, lr_min: float, e: int, epochs: int) -> float:
    """PC-DARTS' learning rate of (0-based) epoch ``e`` of ``epochs``."""
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * e / epochs))


def test_the_search_lr_is_one_cosine_over_all_stages_through_pruning_and_resume(
    fake_cifar_root: Path, tmp_path: Path
) -> None:
    """The search's learning rate of epoch e is lr_min + (lr - lr_min) (1 + cos(pi e / E)) / 2 over all
    E = stages x epochs_per_stage epochs (PC-DARTS): not restarted per stage, not disturbed by the
    reductions that prune the optimizer, and continued exactly by a resumed search. (The closed form
    is the oracle: torch's CosineAnnealingLR computes it recursively.)"""
    lr, lr_min = 0.05, 0.002
    cfg = _cfg(fake_cifar_root, search__lr=lr, search__lr_min=lr_min, reduction__epochs_per_stage=2)
    E = 4  # 3 ops -> 2 stages x 2 epochs, a reduction after epochs 2 and 4
    # Killed after epoch 3 (mid-stage 2, after a pruning), then resumed for epoch 4.
    with pytest.raises(_Stop):
        run_search(cfg, tmp_path, log=None, on_epoch=_stop_after(3))
    seen: list[dict] = []
    res = run_search(cfg, tmp_path, log=None, on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == [4] and res.final["resumed"]
    assert [m["epoch"] for m in res.metrics] == [1, 2, 3, 4]
    assert [m["ops_per_edge"] for m in res.metrics] == [3.0, 3.0, 2.0, 2.0]  # pruned after epoch 2
    expected = [_cosine(lr, lr_min, e, E) for e in range(E)]
    assert [m["lr"] for m in res.metrics] == pytest.approx(expected, rel=1e-12, abs=0)
    # After the last epoch the schedule has reached its floor.
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["weight_optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr_min, rel=1e-12, abs=0)


def test_search_state_checkpoint_is_plain_data(fake_cifar_root: Path, tmp_path: Path) -> None:
    with pytest.raises(_Stop):
        run_search(_cfg(fake_cifar_root), tmp_path, log=None, on_epoch=_stop_after(1))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["position"] == {"stage": 0, "epoch_in_stage": 1, "global_epoch": 1}
    s = Search(_cfg(fake_cifar_root), tmp_path, log=None)
    assert s.resumed and s.state.lr_schedule.last_epoch == 1
    assert s.state.weight_optimizer.param_groups[0]["lr"] == ckpt["weight_optimizer"]["param_groups"][0]["lr"]


def test_an_output_folder_that_cannot_hold_the_run_is_one_error(tmp_path: Path) -> None:
    """A file given as the folder, or a folder that cannot be created, is refused before any work."""
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        RunFolder(afile, {"seed": 0}).open(resume=True, config={})
    with pytest.raises(ConfigError, match="cannot write the run's files here"):
        RunFolder(afile / "run", {"seed": 0}).open(resume=True, config={})
    assert afile.read_text() == "x"


def test_a_full_disk_is_one_error_line_in_the_cli() -> None:
    import errno

    from bnas.__main__ import _error_text, _is_user_error

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/checkpoint.pt")
    assert _is_user_error(full)
    assert _error_text(full).startswith("/runs/a/checkpoint.pt: No space left on device; free space")
    assert not _is_user_error(OSError(errno.EIO, "Input/output error"))  # not the user's to fix


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_with_the_identity_but_other_shapes_is_one_error(
    kind: str, fake_cifar_root: Path, tmp_path: Path
) -> None:
    """An edited or damaged checkpoint that still carries this run's identity is refused with one
    error naming the folder, not a torch traceback, and the folder is left as it was."""
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        _run(kind, _cfg(fake_cifar_root), out, on_epoch=_stop_after(1))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    weights = ckpt["net" if kind == "search" else "model"]
    name = next(k for k, v in weights.items() if v.dim() == 4)
    weights[name] = torch.zeros(1, 1, 1, 1)  # the wrong shape
    torch.save(ckpt, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="has this run's settings but does not load into it") as e:
        _run(kind, _cfg(fake_cifar_root), out)
    assert str(e.value).startswith(str(out)) and "--no-resume" in str(e.value)
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "value", [-5, 10_000, "1", True, 1.0], ids=["negative", "beyond", "text", "bool", "float"]
)
def test_a_checkpoint_with_an_edited_epoch_is_one_error(
    kind: str, value: object, fake_cifar_root: Path, tmp_path: Path
) -> None:
    """``epoch: -5`` would resume at -4 and log epoch 1 twice; a counter that is not a whole number in
    range is refused like any checkpoint that does not load, naming the counter and its value."""
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        _run(kind, _cfg(fake_cifar_root), out, on_epoch=_stop_after(1))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    if kind == "search":
        ckpt["position"]["global_epoch"] = value
        counter = "global_epoch"
    else:
        ckpt["epoch"] = value
        counter = "epoch"
    torch.save(ckpt, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="does not load into it") as e:
        _run(kind, _cfg(fake_cifar_root), out)
    assert f"its {counter} is {value!r}, not an integer in [0, " in str(e.value), str(e.value)
    assert (out / "checkpoint.pt").read_bytes() == before
