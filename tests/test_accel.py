"""The GPU fast path (bnas.accel) on the CPU: resolution, bf16 tolerance, channels_last, cuDNN flag,
compile wrapper, and a tiny search and retraining with every speed-up forced on.

Tolerances. bf16 keeps 8 significant bits: unit roundoff u = 2**-9 ~ 0.002 per rounding. A forward
pass of the 3-cell super-network rounds ~10 times on the way to the logits (stem, per cell the
pre-processing, the mixed ops, the node sums, the classifier), so the logits may drift by ~10u of
their scale; the test allows 16u = 3 % of max(1, max|logits|) (measured: 0.6-0.7 %). Cross-entropy
is 2-Lipschitz in the max-norm of the logits (|d CE| <= 2 max|d logits|), which bounds the loss
difference by twice the observed logit difference. channels_last only reorders memory: the same
arithmetic up to summation order, so 1e-5 (measured: 5e-7).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas.accel import FastPath
from bnas.binarization import BinaryConv2d, BinarySpec
from bnas.config import ConfigError, RuntimeConfig, load_config
from bnas.eval_network import EvalNetwork
from bnas.genotype import GENOTYPES
from bnas.retrain import retrain
from bnas.search import Search, run_search
from bnas.supernet import SuperNetwork

CPU = torch.device("cpu")
OPS = ["skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3"]
U = 2.0**-9  # bf16 unit roundoff
LOGIT_TOL = 16 * U
ALL_ON = {
    "runtime.amp": "bf16",
    "runtime.channels_last": "on",
    "runtime.cudnn_benchmark": "on",
    "runtime.data_on_device": "on",
    "runtime.compile": True,
}
#: final.json["fast_path"] of a CPU run with the defaults.
PLAIN = {
    "amp": "off",
    "channels_last": False,
    "cudnn_benchmark": False,
    "compile": False,
    "data_on_device": False,
}


def _net(method: str = "xnor", seed: int = 0) -> SuperNetwork:
    torch.manual_seed(seed)
    return SuperNetwork(8, 10, 3, OPS, 2, BinarySpec(method))


def _batch(n: int = 16, side: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------------------- resolution and misuse
def test_auto_is_off_on_the_cpu() -> None:
    fast = FastPath.from_config(RuntimeConfig(), CPU)
    assert not (fast.amp or fast.channels_last or fast.cudnn_benchmark or fast.compile)
    assert fast.describe() == {k: v for k, v in PLAIN.items() if k != "data_on_device"}
    assert fast.placement.on_device(CPU, 1) is False


@pytest.mark.parametrize(
    "value,on", [("on", True), (True, True), ("off", False), (False, False), ("auto", False)]
)
def test_switches_accept_yaml_booleans(value, on: bool) -> None:
    rt = RuntimeConfig(amp=value if value != "on" else "bf16", channels_last=value, cudnn_benchmark=value)
    fast = FastPath.from_config(rt, CPU)
    assert fast.amp is fast.channels_last is fast.cudnn_benchmark is on


def test_yaml_on_off_parse_as_booleans_and_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("runtime:\n  amp: off\n  channels_last: on\n  data_on_device: off\n")
    rt = load_config(path).runtime
    assert rt.amp is False and rt.channels_last is True and rt.data_on_device is False
    assert load_config(None, ["runtime.cudnn_benchmark=on"]).runtime.cudnn_benchmark is True


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"runtime.amp": "fp16"}, r"runtime\.amp: expected 'auto' or 'bf16' or 'off'"),
        ({"runtime.channels_last": "yes please"}, r"runtime\.channels_last: expected"),
        ({"runtime.amps": "bf16"}, r"runtime\.amps: unknown key \(did you mean 'amp'\?\)"),
        ({"runtime.compile": "sometimes"}, r"runtime\.compile: expected bool"),
        ({"runtime.data_device_fraction": 0}, r"runtime\.data_device_fraction: must lie in \(0"),
        (
            {"runtime.data_on_device": "on", "retrain.autoaugment": True},
            r"runtime\.data_on_device: on cannot be combined with retrain\.autoaugment",
        ),
    ],
)
def test_misuse_is_refused_naming_the_key(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_runtime_settings_are_not_part_of_a_checkpoint_identity() -> None:
    a = load_config(None, {})
    b = load_config(None, {**ALL_ON, "runtime.data_device_fraction": 0.5})
    assert a.result_identity() == b.result_identity()
    # auto with AutoAugment is fine: it falls back to the CPU loader
    load_config(None, {"retrain.autoaugment": True, "runtime.data_on_device": "auto"})


# ------------------------------------------------------------------------------- bf16 autocast
@pytest.mark.parametrize("method", ["xnor", "xnor_channel", "pcnn", "fp"])
def test_bf16_logits_and_loss_are_within_tolerance_of_fp32(method: str) -> None:
    net = _net(method)
    x, y = _batch()
    ref = FastPath.off()(net, x)
    out = FastPath(CPU, amp=True)(net, x)
    assert out.dtype == torch.float32 and not torch.equal(out, ref)  # bf16 really ran
    diff = (out - ref).abs().max().item()
    assert diff <= LOGIT_TOL * max(1.0, ref.abs().max().item())
    assert abs(F.cross_entropy(out, y).item() - F.cross_entropy(ref, y).item()) <= 2 * diff + 1e-6


def test_binarized_weights_stay_exact_under_autocast() -> None:
    conv = BinaryConv2d(4, 6, 3, padding=1, spec=BinarySpec("xnor"))
    plain = conv.binarized_weight()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = conv.binarized_weight()
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)  # +-a computed in fp32
    a = conv.weight.abs().mean()
    assert set(inside.unique().tolist()) == {-a.item(), a.item()}
    # the cast the convolution makes keeps exactly two values, +-bf16(a)
    assert set(inside.bfloat16().unique().float().tolist()) == {-a.bfloat16().item(), a.bfloat16().item()}


def test_batchnorm_keeps_fp32_statistics_under_autocast() -> None:
    net = _net()
    x, _ = _batch()
    FastPath(CPU, amp=True)(net, x)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.running_mean.dtype == m.running_var.dtype == torch.float32 for m in bns)


def _search_cfg(root: Path, **runtime) -> dict:
    cfg = {
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "data": {"root": str(root), "image_size": 8, "train_subset": 64},
        "search": {
            "layers": 3,
            "init_channels": 4,
            "sampling_k": 2,
            "batch_size": 16,
            "ops": ["skip_connect", "max_pool_3x3", "sep_conv_3x3"],
            "max_batches_per_epoch": 2,
            "checkpoint_every": 1,
        },
        "reduction": {
            "epochs_per_stage": 1,
            "warmup_epochs": 0,
            "rounds": 1,
            "subnet_epochs": 1,
            "subnet_batch_size": 16,
            "subnet_max_batches": 1,
        },
    }
    if runtime:
        cfg["runtime"] = runtime
    return cfg


def test_bf16_weight_and_architecture_steps_follow_fp32(cifar_root: Path, tmp_path: Path) -> None:
    from bnas.config import config_from_dict

    runs = {}
    for amp in ("off", "bf16"):
        s = Search(config_from_dict(_search_cfg(cifar_root, amp=amp)), tmp_path / amp, log=None)
        x, y = _batch(16, 8, seed=5)
        arch = [s.state.architect.step(x, y).item()]
        weight = [s._weight_step(x, y, None)[0] for _ in range(3)]
        runs[amp] = (arch, weight, s.fast.amp)
    (a32, w32, on32), (a16, w16, on16) = runs["off"], runs["bf16"]
    assert not on32 and on16
    # losses of ~2.3 from logits of scale ~1: |d CE| <= 2 * LOGIT_TOL
    assert a16 == pytest.approx(a32, abs=2 * LOGIT_TOL)
    assert w16 == pytest.approx(w32, abs=2 * LOGIT_TOL)
    assert w16 != w32  # bf16 really ran


# ------------------------------------------------------------------------------- channels_last
def test_channels_last_gives_the_same_outputs() -> None:
    net, x = _net(), _batch()[0]
    ref = net(x)
    fast = FastPath(CPU, channels_last=True)
    fast.prepare(net)
    assert net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.input(x).is_contiguous(memory_format=torch.channels_last)
    assert (fast(net, x) - ref).abs().max().item() <= 1e-5

    torch.manual_seed(0)
    model = EvalNetwork(GENOTYPES.get("bnas_xnor"), C=4, layers=3, auxiliary=True).eval()
    ref_e = model(x)[0]
    out_e = FastPath(CPU, channels_last=True).prepare(model)(FastPath(CPU, channels_last=True).input(x))[0]
    assert (out_e - ref_e).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------- cuDNN flag
def test_session_sets_cudnn_benchmark_and_restores_it() -> None:
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with FastPath(CPU, cudnn_benchmark=True).session():
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        torch.backends.cudnn.benchmark = True
        with pytest.raises(RuntimeError), FastPath(CPU, cudnn_benchmark=False).session():
            assert torch.backends.cudnn.benchmark is False
            raise RuntimeError("boom")
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before


# ------------------------------------------------------------------------------- torch.compile
class _CountingCompiler:
    """A stand-in for torch.compile: records what it compiles and runs the module as it is."""

    def __init__(self) -> None:
        self.compiled: list[nn.Module] = []
        self.calls = 0

    def __call__(self, model: nn.Module, **_kw):
        self.compiled.append(model)

        def run(*args):
            self.calls += 1
            return model(*args)

        return run


def test_compile_wrapper_compiles_plain_passes_once_until_forgotten() -> None:
    comp = _CountingCompiler()
    net, x = _net(), _batch()[0]
    fast = FastPath(CPU, compile=True, compiler=comp)
    fast(net, x)
    fast(net, x, None)
    assert len(comp.compiled) == 1 and comp.calls == 2
    from bnas.supernet import Selection

    fast(net, x, Selection(["skip_connect"] * 14, ["max_pool_3x3"] * 14))  # a sub-network: eager
    assert comp.calls == 2
    fast.forget(net)
    fast(net, x)
    assert len(comp.compiled) == 2


@pytest.mark.slow
def test_real_compile_recompiles_after_a_reduction() -> None:
    """torch.compile with the eager backend (Dynamo tracing, no code generation: seconds on a CPU)."""
    torch.manual_seed(0)
    ops = ["skip_connect", "max_pool_3x3"]
    net = SuperNetwork(2, 10, 3, ops, 1, BinarySpec("xnor"), steps=2, multiplier=2)
    x = torch.randn(2, 3, 8, 8)
    compiles = []

    def compiler(m: nn.Module):
        compiles.append(m)
        return torch.compile(m, backend="eager")

    fast = FastPath(CPU, compile=True, compiler=compiler)
    with fast.session():
        assert torch.equal(fast(net, x), net(x))
        net.remove_op("normal", 0, "max_pool_3x3")
        fast.forget(net)
        assert torch.equal(fast(net, x), net(x))
    assert len(compiles) == 2


# ------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_search_runs_with_every_speed_up_forced_on(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnas.config import config_from_dict

    comp = _CountingCompiler()
    monkeypatch.setattr(torch, "compile", comp)
    before = torch.backends.cudnn.benchmark
    rt = {k.split(".")[1]: v for k, v in ALL_ON.items()}
    res = run_search(config_from_dict(_search_cfg(cifar_root, **rt)), tmp_path / "on", log=None)
    assert res.final["fast_path"] == {
        "amp": "bf16",
        "channels_last": True,
        "cudnn_benchmark": True,
        "compile": True,
        "data_on_device": True,
    }
    # one compiled super-network per stage: the first, then again after the reduction
    assert len(comp.compiled) == 2 and comp.calls > 0
    assert torch.backends.cudnn.benchmark == before
    assert len(res.genotype.normal) == 8 and 0 <= res.final["derived_val_acc"] <= 1

    # the same run with the defaults (auto: everything off on the CPU) resumes nothing from it but
    # reports the plain path
    plain = run_search(config_from_dict(_search_cfg(cifar_root)), tmp_path / "plain", log=None)
    assert plain.final["fast_path"] == PLAIN
    off = {k: False for k in ("channels_last", "cudnn_benchmark", "data_on_device", "compile")}
    explicit_cfg = config_from_dict(_search_cfg(cifar_root, amp="off", **off))
    explicit = run_search(explicit_cfg, tmp_path / "off", log=None)
    assert explicit.genotype.digest == plain.genotype.digest
    assert (
        json.loads((tmp_path / "off" / "final.json").read_text())["derived_val_acc"]
        == plain.final["derived_val_acc"]
    )


@pytest.mark.slow
def test_a_search_checkpoint_resumes_with_other_runtime_settings(cifar_root: Path, tmp_path: Path) -> None:
    from bnas.config import config_from_dict

    class Stop(Exception):
        pass

    def stop(m: dict) -> None:
        raise Stop

    on = config_from_dict(_search_cfg(cifar_root, amp="bf16", channels_last="on", data_on_device="on"))
    with pytest.raises(Stop):
        run_search(on, tmp_path, on_epoch=stop, log=None)
    s = Search(config_from_dict(_search_cfg(cifar_root)), tmp_path, log=None)
    assert s.resumed and s.state.global_epoch == 1
    assert s.run().final["epochs"] == 2


def test_tiny_retraining_runs_with_every_speed_up_forced_on(
    fake_cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    comp = _CountingCompiler()
    monkeypatch.setattr(torch, "compile", comp)
    settings = {
        "device": "cpu",
        "threads": 1,
        "data.root": str(fake_cifar_root),
        "data.image_size": 8,
        "data.train_subset": 32,
        "data.test_subset": 16,
        "retrain.layers": 3,
        "retrain.init_channels": 4,
        "retrain.epochs": 2,
        "retrain.batch_size": 16,
        "retrain.eval_batch_size": 16,
        "retrain.cutout": 16,
        "retrain.drop_path_prob": 0.2,
    }
    genotype = GENOTYPES.get("bnas_xnor")
    final = retrain(load_config(None, {**settings, **ALL_ON}), genotype, tmp_path / "on", log=None)
    assert final["fast_path"]["data_on_device"] and final["fast_path"]["amp"] == "bf16"
    assert len(comp.compiled) == 1 and comp.calls > 0  # the evaluation network, compiled once
    assert 0 <= final["test_acc"] <= 1 and (tmp_path / "on" / "model.bnas").is_file()
    plain = retrain(load_config(None, settings), genotype, tmp_path / "plain", log=None)
    assert plain["fast_path"] == PLAIN


def test_partial_compiler_is_used_as_given() -> None:
    comp = _CountingCompiler()
    fast = FastPath(CPU, compile=True, compiler=functools.partial(comp, mode="max-autotune"))
    fast(nn.Linear(3, 2), torch.randn(1, 3))
    assert len(comp.compiled) == 1
