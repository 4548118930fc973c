"""The memory estimate of a search step (bnas.memory): shapes only, on the meta device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bnas import settings
from bnas.binarization import BINARIZATIONS
from bnas.config import ExperimentConfig
from bnas.memory import WEIGHT_COPIES, search_memory

REPO = Path(__file__).resolve().parents[1]


def _cfg(**search: object) -> ExperimentConfig:
    data = {
        "search": {"layers": 3, "init_channels": 8, "batch_size": 16, **search},
        "data": {"image_size": 16},
    }
    cfg, problems = settings.collect(ExperimentConfig, data)
    assert not problems, problems
    return cfg


@pytest.mark.parametrize("method", BINARIZATIONS.names())
def test_activations_grow_with_the_batch_and_weights_do_not(method: str) -> None:
    cfg = _cfg()
    small = search_memory(
        settings.collect(ExperimentConfig, {**cfg.to_dict(), "binarization": {"method": method}})[0], 10
    )
    big_cfg = {
        **cfg.to_dict(),
        "binarization": {"method": method},
        "search": {**cfg.to_dict()["search"], "batch_size": 64},
    }
    big = search_memory(settings.collect(ExperimentConfig, big_cfg)[0], 10)
    assert small.activations > 0 and small.weights > 0
    assert big.weights == small.weights
    # BatchNorm's per-channel statistics do not grow with the batch: close to 4x, not exactly.
    assert 3.8 < big.activations / small.activations <= 4.0
    assert big.total == big.activations + WEIGHT_COPIES * big.weights + big.batch


def test_more_sampled_channels_cost_more() -> None:
    assert (
        search_memory(_cfg(sampling_k=1), 10).activations > search_memory(_cfg(sampling_k=4), 10).activations
    )


_MEASURE = """
import json, resource, sys, torch, torch.nn.functional as F
from bnas import settings
from bnas.binarization import BinarySpec
from bnas.config import ExperimentConfig
from bnas.memory import search_memory
from bnas.networks import NETWORKS
torch.set_num_threads(1)
cfg = settings.collect(ExperimentConfig, json.loads(sys.argv[1]))[0]
sc = cfg.search
spec = BinarySpec.from_config(cfg.binarization)
net = NETWORKS.get(cfg.network_layout()).search_network(
    sc.init_channels, 10, sc.layers, sc.candidate_ops(), sc.sampling_k, spec,
    steps=sc.nodes, multiplier=sc.nodes, stem_multiplier=sc.stem_multiplier, in_channels=3)
x = torch.randn(sc.batch_size, 3, cfg.data.image_size, cfg.data.image_size)
y = torch.randint(0, 10, (sc.batch_size,))
rss = lambda: int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
before = rss()
F.cross_entropy(net(x), y).backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"estimate": search_memory(cfg, 10).total, "measured": peak - before}))
"""


@pytest.mark.slow  # a fresh process importing torch
def test_the_estimate_is_a_lower_bound_close_to_the_measured_peak() -> None:
    """A real forward and backward in a fresh process: the peak resident memory it adds. Measured on
    this project's 2-core VM at these sizes the estimate was 0.67-0.84 of it (3 configurations); the
    bounds leave room for other allocators."""
    data = {"search": {"layers": 5, "init_channels": 16, "batch_size": 64}, "data": {"image_size": 32}}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(data)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = res["estimate"] / res["measured"]
    assert 0.4 < ratio < 1.05, res
