"""The dataset on the device with batched augmentation (bnas.data.device_loader), exercised on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnas.config import ConfigError, DataConfig
from bnas.data import (
    DataPlacement,
    DeviceAugment,
    DeviceLoader,
    EvalTransform,
    TrainTransform,
    reseed_loader,
    retrain_loaders,
    search_loaders,
)
from bnas.data.device_loader import DeviceDataset, device_loader
from bnas.training import PhaseTimer, timed_batches

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CPU = torch.device("cpu")


def _images(n: int = 40, side: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8), torch.arange(n) % 10


def _loader(seed: int = 0, n: int = 40, batch: int = 16, cutout: int = 4) -> DeviceLoader:
    x, y = _images(n)
    aug = TrainTransform(MEAN, STD, padding=2, cutout=cutout)
    return device_loader(x, y, torch.arange(n), aug, CPU, batch, True, seed, seed + 1)


def _pass(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


# ------------------------------------------------------------------------------- the batched transform
def test_evaluation_only_normalises_exactly_like_the_cpu_transform() -> None:
    x, _ = _images(6)
    out = DeviceAugment.like(EvalTransform(MEAN, STD))(x, None)
    cpu = torch.stack([EvalTransform(MEAN, STD)(img) for img in x])
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.equal(out, cpu)


@pytest.mark.parametrize("padding,flip,cutout", [(2, True, 4), (0, True, 0), (2, False, 0), (0, False, 3)])
def test_batched_augmentation_equals_the_per_image_transform_for_the_same_uniforms(
    padding: int, flip: bool, cutout: int
) -> None:
    """Same uniforms in, same images out: crop offsets, mirror and hole follow the CPU formulas."""
    x, _ = _images(24)
    cpu = TrainTransform(MEAN, STD, padding=padding, flip=flip, cutout=cutout)
    g = torch.Generator().manual_seed(3)
    expected = torch.stack([cpu(img, g) for img in x])
    r = torch.rand(len(x), 5, generator=torch.Generator().manual_seed(3))  # the same 5 draws per image
    assert torch.equal(DeviceAugment.like(cpu)(x, r), expected)


def test_flip_happens_about_half_the_time_and_cutout_zeroes_a_square() -> None:
    n, side = 2000, 8
    # a left-to-right ramp: a mirrored image falls from left to right
    x = torch.arange(side, dtype=torch.uint8).mul(30).expand(n, 3, side, side).contiguous()
    r = torch.rand(n, 5, generator=torch.Generator().manual_seed(0))
    flipped = DeviceAugment(torch.zeros(3), torch.ones(3), flip=True)(x, r)
    rising = flipped[:, 0, 0, 1] > flipped[:, 0, 0, 0]
    assert 0.45 < (~rising).float().mean().item() < 0.55
    assert torch.equal(~rising, r[:, 2] < 0.5)

    holed = DeviceAugment(torch.zeros(3), torch.ones(3), cutout=4)(x + 1, r)  # every pixel nonzero
    zero = holed[:, 0] == 0
    assert torch.equal(zero, (holed == 0).all(dim=1))  # the same hole in every channel
    for b in range(50):
        rows, cols = zero[b].any(1).nonzero().flatten(), zero[b].any(0).nonzero().flatten()
        # a rectangle of side <= 4, whole inside (clipped at the border only)
        assert zero[b].sum() == len(rows) * len(cols) and len(rows) <= 4 and len(cols) <= 4
        at_border = min(rows.min(), cols.min()) == 0 or max(rows.max(), cols.max()) == side - 1
        assert len(rows) == len(cols) == 4 or at_border
    assert 0.15 < zero.float().mean().item() < 0.25  # ~ 16/64 minus the clipped borders


def test_crop_offsets_are_uniform_over_the_padding() -> None:
    n = 3000
    x = torch.full((n, 1, 6, 6), 200, dtype=torch.uint8)
    out = DeviceAugment(torch.zeros(1), torch.ones(1), padding=2)(x, torch.rand(n, 5))
    # zero padding shows up as zero rows/columns: the shift of the crop is visible in them
    top_zeros = (out[:, 0, :, 3] == 0).sum(1)  # rows of padding at the top or bottom
    counts = torch.bincount(top_zeros, minlength=3).float() / n
    assert counts.tolist()[0] == pytest.approx(1 / 5, abs=0.04)  # no shift
    assert counts.tolist()[1] == pytest.approx(2 / 5, abs=0.05)  # shift by 1 up or down
    assert counts.tolist()[2] == pytest.approx(2 / 5, abs=0.05)


def test_autoaugment_has_no_batched_form() -> None:
    with pytest.raises(ConfigError, match="runtime.data_on_device"):
        DeviceAugment.like(TrainTransform(MEAN, STD, autoaugment=True))


# ------------------------------------------------------------------------------- the loader
def test_batches_have_the_loader_shapes_and_dtypes() -> None:
    loader = _loader(n=40, batch=16)
    batches = _pass(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [16, 16, 8]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (16, 3, 8, 8) and y.dtype == torch.int64
    assert len(loader.dataset) == 40 and x.device == y.device == CPU
    # every image of the pass once
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted((torch.arange(40) % 10).tolist())


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    assert _same(_pass(_loader(0)), _pass(_loader(0)))
    assert not _same(_pass(_loader(0)), _pass(_loader(1)))


def test_reseed_repeats_a_pass_and_unreseeded_passes_continue_the_streams() -> None:
    loader = _loader(0)
    reseed_loader(loader, 11, 12)
    first = _pass(loader)
    second = _pass(loader)  # not reseeded: a new order and new augmentation
    assert not _same(first, second)
    reseed_loader(loader, 11, 12)
    assert _same(_pass(loader), first)
    # order and augmentation are separate streams
    reseed_loader(loader, 11, 99)
    other_aug = _pass(loader)
    assert [y.tolist() for _, y in other_aug] == [y.tolist() for _, y in first]
    assert not _same(other_aug, first)


def test_an_unshuffled_loader_keeps_the_index_order() -> None:
    x, y = _images(10)
    loader = device_loader(x, y, torch.tensor([7, 2, 5]), EvalTransform(MEAN, STD), CPU, 2, False, 0, 0)
    assert [b.tolist() for _, b in loader] == [[7, 2], [5]]


def test_caps_are_respected_through_timed_batches() -> None:
    loader = _loader(n=40, batch=8)
    got = list(timed_batches(loader, PhaseTimer(), CPU, cap=2))
    assert len(got) == 2 and all(len(y) == 8 for _, y in got)
    assert len(list(timed_batches(loader, PhaseTimer(), CPU))) == 5


def test_the_dataset_copies_only_the_split() -> None:
    x, y = _images(30)
    ds = DeviceDataset(x, y, torch.tensor([4, 9]), DeviceAugment.like(EvalTransform(MEAN, STD)), CPU)
    assert ds.images.shape[0] == 2 and torch.equal(ds.images[1], x[9]) and ds.labels.tolist() == [4, 9]


# ------------------------------------------------------------------------------- placement and factories
@pytest.mark.parametrize(
    "mode,expected", [("on", True), (True, True), ("off", False), (False, False), ("auto", False)]
)
def test_placement_on_the_cpu(mode, expected: bool) -> None:
    assert DataPlacement(mode).on_device(CPU, 10**6) is expected


def test_placement_on_with_autoaugment_is_refused_and_auto_falls_back() -> None:
    with pytest.raises(ConfigError, match="runtime.data_on_device: .*AutoAugment"):
        DataPlacement("on").on_device(CPU, 1, autoaugment=True)
    assert DataPlacement("auto").on_device(CPU, 1, autoaugment=True) is False


def _data_cfg(root: Path) -> DataConfig:
    return DataConfig(root=str(root), image_size=8, train_subset=64, test_subset=20)


def test_search_loaders_on_the_device_cover_the_same_split(fake_cifar_root: Path) -> None:
    cfg = _data_cfg(fake_cifar_root)
    cpu_train, cpu_val, info = search_loaders(cfg, 16, seed=0)
    train, val, info2 = search_loaders(cfg, 16, 0, CPU, DataPlacement("on"))
    assert isinstance(train, DeviceLoader) and isinstance(val, DeviceLoader) and info2 == info
    assert len(train) == len(cpu_train) and len(val) == len(cpu_val)
    assert len(train.dataset) == len(cpu_train.dataset) and len(val.dataset) == len(cpu_val.dataset)
    labels = sorted(torch.cat([y for _, y in train]).tolist())
    assert labels == sorted(torch.cat([y for _, y in cpu_train]).tolist())
    x, _ = next(iter(train))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
    # off (and auto on a CPU) keep the CPU loaders
    assert not isinstance(search_loaders(cfg, 16, 0, CPU, DataPlacement("auto"))[0], DeviceLoader)


def test_retrain_loaders_on_the_device(fake_cifar_root: Path) -> None:
    cfg = _data_cfg(fake_cifar_root)
    train, test, _ = retrain_loaders(cfg, 16, 8, 0, cutout=16, device=CPU, placement=DataPlacement("on"))
    assert isinstance(train, DeviceLoader) and isinstance(test, DeviceLoader)
    assert len(train.dataset) == 64 and len(test.dataset) == 20 and len(test) == 3
    # evaluation: normalisation only, in the CPU loader's order, the same numbers
    _, cpu_test, _ = retrain_loaders(cfg, 16, 8, 0)
    for (x, y), (u, v) in zip(test, cpu_test, strict=True):
        assert torch.equal(y, v) and torch.allclose(x, u, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="runtime.data_on_device"):
        retrain_loaders(cfg, 16, 8, 0, autoaugment=True, device=CPU, placement=DataPlacement("on"))
    auto = retrain_loaders(cfg, 16, 8, 0, autoaugment=True, device=CPU, placement=DataPlacement("auto"))[0]
    assert not isinstance(auto, DeviceLoader)
