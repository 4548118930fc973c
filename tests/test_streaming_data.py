"""Class folders streamed or held in memory: layout, bad folders, splits, ImageNet transforms, memory."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from bnas.config import ConfigError, DataConfig, config_from_dict
from bnas.data import (
    BadDatasetError,
    DatasetNotFoundError,
    ImageNetEvalTransform,
    ImageNetTrainTransform,
    StreamingImageDataset,
    clear_cache,
    dataset_labels,
    describe_classes,
    folder_index,
    get_info,
    retrain_loaders,
    search_split,
    train_indices,
    uses_streaming,
)
from bnas.data.sources import DataIntegrityWarning
from bnas.data.transforms import TRANSFORM_KINDS, _random_resized_box, make_transforms
from bnas.runtime import rss_mib
from bnas.testing import make_fake_imagenet, make_image_folder

STORAGES = ("memory", "stream")


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    clear_cache()  # folders are rewritten per test under new paths; never reuse a scan
    yield
    clear_cache()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEG and PNG files, odd sizes, every fourth one grayscale; 3 classes x (8 train, 3 test)."""
    return make_image_folder(tmp_path_factory.mktemp("imgs"), per_class=8, n_test=3)


def _cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(dataset=kw.pop("dataset", "folder"), root=str(root), image_size=16, **kw)


# ------------------------------------------------------------------------------------------ layout
def test_index_lists_every_file_once_with_per_class_counts(folder: Path) -> None:
    index = folder_index(_cfg(folder))
    assert index.classes == ("ant", "bee", "cow")
    assert index.counts("train") == {"ant": 8, "bee": 8, "cow": 8}
    assert index.counts("test") == {"ant": 3, "bee": 3, "cow": 3}
    assert len(set(index.train_files.tolist())) == len(index.train_files) == 24
    line = describe_classes(_cfg(folder))
    assert (
        "3 classes, 24 train / 9 test images on disk" in line and "ant 8/3" in line and "in use" not in line
    )
    # The header says which subset is in force (a search on 12 of the 24 images says so).
    assert describe_classes(_cfg(folder, train_subset=12)).endswith("; in use: train_subset 12 (data.*)")


@pytest.mark.parametrize("storage", STORAGES)
def test_both_paths_number_the_images_alike(folder: Path, storage: str) -> None:
    cfg = _cfg(folder, storage=storage)
    assert uses_streaming(cfg) is (storage == "stream")
    memory = _cfg(folder, storage="memory")
    assert torch.equal(dataset_labels(cfg, "train"), dataset_labels(memory, "train"))
    assert torch.equal(dataset_labels(cfg, "test"), dataset_labels(memory, "test"))
    for a, b in zip(search_split(cfg, 3), search_split(memory, 3), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("storage", STORAGES)
def test_grayscale_and_odd_sizes_become_rgb_squares(folder: Path, storage: str) -> None:
    for kind in TRANSFORM_KINDS:
        train, test, info = retrain_loaders(_cfg(folder, storage=storage), 5, 7, seed=0, transforms=kind)
        assert info.num_classes == 3 and info.in_channels == 3
        for loader in (train, test):
            x, y = next(iter(loader))
            assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
            assert torch.isfinite(x).all() and y.max() < 3


def test_auto_streams_when_the_decoded_images_exceed_the_budget(folder: Path) -> None:
    small = _cfg(folder)  # 33 images x 3 x 16 x 16 bytes: far below the default budget
    assert not uses_streaming(small)
    big = DataConfig(dataset="folder", root=str(folder), image_size=256, memory_budget_mib=1)
    assert folder_index(big).decoded_bytes(256) > 2**20
    assert uses_streaming(big)


def test_val_is_accepted_as_the_test_split_and_imagenet_has_published_constants(tmp_path: Path) -> None:
    root = make_fake_imagenet(tmp_path)
    cfg = _cfg(root, dataset="imagenet", storage="stream")
    assert folder_index(cfg).test_split == "val"
    info = get_info(cfg)
    assert info.num_classes == 3 and info.mean == (0.485, 0.456, 0.406)
    assert config_from_dict({"data": {"dataset": "imagenet"}}).network_layout() == "imagenet"


def test_streamed_statistics_estimate_the_in_memory_ones(folder: Path) -> None:
    # Every image fits in the sample here, so the streamed estimate equals the exact statistics up to
    # the resize (per item here, per batch in memory).
    streamed, memory = get_info(_cfg(folder, storage="stream")), get_info(_cfg(folder, storage="memory"))
    for a, b in zip(streamed.mean + streamed.std, memory.mean + memory.std, strict=True):
        assert a == pytest.approx(b, abs=0.02)


# ------------------------------------------------------------------------------------------ subsets
def test_train_fraction_is_stratified_and_fixed(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, classes=("a", "b"), per_class=20, n_test=1, sizes=((9, 9),))
    # Make the classes unequal: 20 vs 10 images.
    for p in sorted((root / "train" / "b").iterdir())[10:]:
        p.unlink()
    cfg = _cfg(root, train_fraction=0.5, storage="stream")
    idx = train_indices(cfg)
    counts = torch.bincount(dataset_labels(cfg, "train")[idx], minlength=2).tolist()
    assert counts == [10, 5]  # half of every class
    assert torch.equal(idx, train_indices(cfg))
    with pytest.raises(ConfigError, match="train_fraction or train_subset"):
        _cfg(root, train_fraction=0.5, train_subset=4)


# ------------------------------------------------------------------------------------------ bad folders
def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_empty_training_class_is_named(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path / "d")
    (root / "train" / "dog").mkdir()
    with pytest.raises(DatasetNotFoundError, match="dog .*hold no"):
        folder_index(_cfg(root))


def test_empty_test_class_is_named(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path / "d")
    for p in (root / "test" / "bee").iterdir():
        p.unlink()
    with pytest.raises(BadDatasetError, match="bee .*hold no"):
        folder_index(_cfg(root))


def test_test_classes_missing_from_training_are_named(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path / "d")
    (root / "test" / "yak").mkdir()
    (root / "test" / "ant" / "0000.jpg").rename(root / "test" / "yak" / "0000.jpg")
    with pytest.raises(BadDatasetError, match="yak"):
        folder_index(_cfg(root))


def test_missing_test_split_names_both_accepted_names(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path / "d")
    (root / "test").rename(root / "holdout")
    with pytest.raises(DatasetNotFoundError, match=r"test/ \(or val/\)"):
        folder_index(_cfg(root))


@pytest.mark.parametrize("storage", STORAGES)
def test_unreadable_image_stops_with_its_name(folder: Path, tmp_path: Path, storage: str) -> None:
    root = _copy(folder, tmp_path / "d")
    bad = root / "train" / "cow" / "0001.png"
    bad.write_bytes(b"not an image")
    cfg = _cfg(root, storage=storage)
    with pytest.raises(BadDatasetError, match=r"0001\.png.*on_bad_image: skip"):
        train, _, _ = retrain_loaders(cfg, 64, 64, seed=0)
        next(iter(train))


@pytest.mark.parametrize("storage", STORAGES)
def test_unreadable_image_is_skipped_with_a_warning(folder: Path, tmp_path: Path, storage: str) -> None:
    root = _copy(folder, tmp_path / "d")
    (root / "train" / "cow" / "0001.png").write_bytes(b"\x89PNG truncated")
    cfg = _cfg(root, storage=storage, on_bad_image="skip")
    with pytest.warns(DataIntegrityWarning, match=r"0001\.png"):
        train, _, _ = retrain_loaders(cfg, 64, 64, seed=0)
        x, _ = next(iter(train))
    # In memory the file is left out; streamed, the next image takes its place (batches keep their size).
    assert len(x) == (24 if storage == "stream" else 23)


def test_storage_stream_is_refused_for_cifar() -> None:
    with pytest.raises(ConfigError, match="storage: stream applies to class-folder datasets"):
        DataConfig(dataset="cifar10", storage="stream")


# ------------------------------------------------------------------------------------------ seeding
def test_streamed_batches_repeat_with_workers_and_keep_their_order(folder: Path) -> None:
    runs = []
    for workers in (1, 1, 0):
        train, _, _ = retrain_loaders(
            _cfg(folder, storage="stream", num_workers=workers), 6, 6, seed=1, transforms="imagenet"
        )
        runs.append(list(train))
    for (xa, ya), (xb, yb) in zip(runs[0], runs[1], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # the same seed, the same batches
    # The order comes from the loader's generator in the main process: the same for any worker count.
    for (_, ya), (_, yc) in zip(runs[0], runs[2], strict=True):
        assert torch.equal(ya, yc)


# ------------------------------------------------------------------------------------------ transforms
@pytest.mark.parametrize(("h", "w"), [(7, 300), (300, 7), (64, 64), (1, 1)])
def test_random_resized_box_stays_inside_the_image(h: int, w: int) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, ch, cw = _random_resized_box(h, w, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and 0 <= left and 1 <= ch and 1 <= cw and top + ch <= h and left + cw <= w


def test_imagenet_train_transform_follows_its_generator() -> None:
    img = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    t = ImageNetTrainTransform(24, (0.5,) * 3, (0.25,) * 3)
    a = t(img, torch.Generator().manual_seed(5))
    b = t(img, torch.Generator().manual_seed(5))
    c = t(img, torch.Generator().manual_seed(6))
    assert a.shape == (3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)


def test_imagenet_eval_transform_is_resize_then_centre_crop() -> None:
    img = torch.zeros((3, 40, 80), dtype=torch.uint8)
    img[:, :, 40:] = 255  # right half white: the centre crop of a 2:1 image straddles the edge
    out = ImageNetEvalTransform(16, (0.0,) * 3, (1.0,) * 3, crop=0.5)(img)  # resize to 32 x 64, crop 16
    assert out.shape == (3, 16, 16)
    assert out[:, :, 0].max() < 0.1 and out[:, :, -1].min() > 0.9


def test_unknown_transform_family_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="cifar, imagenet"):
        make_transforms("mnist", get_info(_cfg(folder)), 16, False)


# ------------------------------------------------------------------------------------------ memory
def _rss_growth_mib(ds: StreamingImageDataset) -> float:
    before = rss_mib("VmRSS")
    for i in range(len(ds)):
        ds[i]
    return rss_mib("VmRSS") - before


def test_streamed_memory_does_not_hold_the_images(tmp_path: Path) -> None:
    """Decoding 1200 images of 96x96 once would hold 33 MiB in memory; streamed, resident memory
    grows by far less (the figures per dataset size: benchmarks/bench_stream_loader.py)."""
    root = make_image_folder(
        tmp_path,
        classes=("a", "b", "c"),
        per_class=400,
        n_test=1,
        sizes=((96, 96),),
        formats=(".png",),
        grayscale_every=0,
    )
    cfg = DataConfig(dataset="folder", root=str(root), image_size=96, storage="stream")
    index = folder_index(cfg)
    ds = StreamingImageDataset(index.root, index.train_files, index.train_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no file may be skipped
        growth = _rss_growth_mib(ds)
    decoded_mib = index.decoded_bytes(96) / 2**20
    assert growth < 0.5 * decoded_mib, (growth, decoded_mib)
