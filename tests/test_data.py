"""bnas.data: loading, integrity warning, subsets, the search split, augmentation and loaders (CPU, fast)."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bnas.config import ConfigError, DataConfig
from bnas.data import (
    DATASETS,
    ENV_ROOT,
    DataIntegrityWarning,
    DatasetNotFoundError,
    EvalTransform,
    TrainTransform,
    balanced_order,
    clear_cache,
    get_info,
    load_dataset,
    resolve_data_root,
    resolve_root,
    retrain_loaders,
    search_loaders,
    search_split,
    test_indices,
    train_indices,
)
from bnas.data.roots import PRECEDENCE
from bnas.registry import UnknownNameError
from bnas.testing import (
    FAKE_DATASETS,
    FOLDER_CLASSES,
    make_fake_cifar,
    make_fake_folder,
    write_png,
)

# Fake data never matches the official MD5 sums; the warning is tested explicitly where it matters.
pytestmark = pytest.mark.filterwarnings("ignore::bnas.data.DataIntegrityWarning")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=list(DATASETS))
def any_dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    return name, FAKE_DATASETS[name](tmp_path_factory.mktemp(f"fake_{name}"))


def test_registry_holds_the_documented_datasets() -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "folder", "imagenet"]
    assert set(FAKE_DATASETS) == set(DATASETS), "add a fake writer to bnas.testing.FAKE_DATASETS"


def test_unknown_dataset_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="cifar10, cifar100, folder, imagenet"):
        DATASETS.get("svhn")
    # The configuration rejects the name first; a settings object that skipped it still fails here.
    unchecked = SimpleNamespace(dataset="svhn", root=str(tmp_path), download=False, image_size=32)
    for fn in (get_info, load_dataset):
        with pytest.raises(UnknownNameError, match="cifar10, cifar100, folder, imagenet"):
            fn(unchecked)


# ---------------------------------------------------------------------------------- roots and errors


def test_resolve_root_uses_data_root_only_and_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_root(DataConfig()) == tmp_path.resolve() / "data"
    got = resolve_root(DataConfig(root="rel/dir"))
    assert got.is_absolute() and got == tmp_path.resolve() / "rel" / "dir"


def test_library_never_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$BNAS_DATA_ROOT is the entry points' business: the library sees only data.root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "bogus"))
    assert resolve_root(DataConfig()) == tmp_path.resolve() / "data"
    assert resolve_root(DataConfig(root="mine")) == tmp_path.resolve() / "mine"
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset(DataConfig())
    assert str(tmp_path / "data") in str(exc.value) and str(tmp_path / "bogus") not in str(exc.value)


@pytest.mark.slow
def test_data_package_has_no_environment_or_config_dependency() -> None:
    """No os.environ / getenv in the source, and importing it does not import bnas.config (a cycle)."""
    for path in sorted((REPO / "bnas" / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import | ast.ImportFrom) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            assert "os" not in names and module != "os", f"{path.name} imports os"
            assert not (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")), path.name
    code = "import sys, bnas.data; assert 'bnas.config' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)


# flag, environment, configured file value -> the winner (relative to the working directory)
PRECEDENCE_CASES = [
    ("flag", "env", "file", "flag"),
    (None, "env", "file", "env"),
    (None, None, "file", "file"),
    (None, None, None, "data"),
    ("", "", "", "data"),  # empty means unset, as in a shell's BNAS_DATA_ROOT=
    ("flag", None, "file", "flag"),
    ("flag", "env", None, "flag"),
    (None, "", "file", "file"),
]


@pytest.mark.parametrize(("flag", "env", "configured", "winner"), PRECEDENCE_CASES)
def test_resolve_data_root_precedence(
    flag: str | None,
    env: str | None,
    configured: str | None,
    winner: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {} if env is None else {ENV_ROOT: env}
    got = resolve_data_root(flag, configured, environ)
    assert got.is_absolute() and got == tmp_path.resolve() / winner


def test_resolve_data_root_reads_only_the_mapping_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "process_env"))
    assert resolve_data_root(None, None, {}) == tmp_path.resolve() / "data"
    assert resolve_data_root(None, None, {"OTHER": "x"}) == tmp_path.resolve() / "data"
    assert resolve_data_root(str(tmp_path / "abs"), None, {}) == tmp_path.resolve() / "abs"
    home = resolve_data_root("~/cifar", None, {})
    assert home == Path("~/cifar").expanduser().resolve()


@pytest.mark.parametrize("name", list(DATASETS))
def test_missing_dataset_error_names_path_and_remedy(name: str, tmp_path: Path) -> None:
    where = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset(DataConfig(dataset=name, root=str(where)))
    msg = str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)
    assert str(where) in msg and "BNAS_DATA_ROOT" in msg and "data.root" in msg
    if name.startswith("cifar"):
        assert DATASETS.get(name).folder in msg and "download: true" in msg


def test_missing_dataset_error_states_the_one_precedence(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset(DataConfig(root=str(tmp_path / "nowhere")))
    msg = str(exc.value)
    assert PRECEDENCE in msg
    order = [PRECEDENCE.index(k) for k in ("--data-root", "$BNAS_DATA_ROOT", "data.root", "./data")]
    assert order == sorted(order)
    assert "taken from data.root" in msg


def test_download_fetches_missing_files_through_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_torchvision_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        make_fake_cifar(Path(root), n_train=20, n_test=10)  # what the real download would unpack

    monkeypatch.setattr(DATASETS.get("cifar10"), "tv_class", fake_torchvision_cifar10)
    data = load_dataset(DataConfig(root=str(tmp_path), download=True))
    assert calls == [(str(tmp_path.resolve()), True, True)] and len(data.train_labels) == 20


def test_failed_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: str, train: bool, download: bool) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(DATASETS.get("cifar10"), "tv_class", offline)
    with pytest.raises(DatasetNotFoundError, match="download into .* failed .*network unreachable"):
        load_dataset(DataConfig(root=str(tmp_path), download=True))


def test_folder_without_train_subfolder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no train/ sub-folder"):
        load_dataset(DataConfig(dataset="folder", root=str(tmp_path)))


def test_root_may_point_at_the_inner_cifar_folder(fake_cifar_root: Path) -> None:
    inner = fake_cifar_root / "cifar-10-batches-py"
    data = load_dataset(DataConfig(root=str(inner)))
    assert data.root == fake_cifar_root.resolve()


# ---------------------------------------------------------------------------------- loading


def test_fake_cifar_has_the_torchvision_pickle_layout(fake_cifar_root: Path) -> None:
    base = fake_cifar_root / "cifar-10-batches-py"
    names = sorted(p.name for p in base.iterdir())
    assert names == ["batches.meta", *[f"data_batch_{i}" for i in range(1, 6)], "test_batch"]
    with open(base / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")  # how the official Python 2 pickles read in Python 3
    assert {b"data", b"labels", b"batch_label", b"filenames"} <= set(raw)
    assert raw[b"data"].dtype.name == "uint8" and raw[b"data"].shape[1] == 3072
    with open(base / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")  # what torchvision uses: str keys
    assert meta["label_names"][0] == "airplane"


def test_get_info_and_load(any_dataset: tuple[str, Path]) -> None:
    name, root = any_dataset
    cfg = DataConfig(dataset=name, root=str(root))
    data = load_dataset(cfg)
    info = get_info(cfg)
    assert info == data.info and info.name == name and info.in_channels == 3 and info.image_size == 32
    assert len(data.classes) == info.num_classes
    assert len(info.mean) == len(info.std) == 3 and all(s > 0 for s in info.std)
    for x, y in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and len(x) == len(y)
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < info.num_classes


def test_cifar_constants() -> None:
    c10, c100 = get_info(DataConfig(dataset="cifar10")), get_info(DataConfig(dataset="cifar100"))
    assert (c10.num_classes, c10.mean, c10.std) == (10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert (c100.num_classes, c100.mean, c100.std) == (
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    )


def test_folder_mean_std_come_from_the_training_images(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="folder", root=str(make_fake_folder(tmp_path)), image_size=12)
    data = load_dataset(cfg)
    assert data.classes == FOLDER_CLASSES and len(data.train_images) == 24 and len(data.test_images) == 9
    x = data.train_images.double() / 255
    assert torch.allclose(torch.tensor(data.info.mean, dtype=torch.float64), x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(torch.tensor(data.info.std, dtype=torch.float64), x.std((0, 2, 3)), atol=1e-2)


def test_folder_with_mixed_sizes_is_resized_per_image(tmp_path: Path) -> None:
    make_fake_folder(tmp_path)
    write_png(torch.full((3, 20, 30), 200, dtype=torch.uint8), tmp_path / "train" / "ant" / "wide.png")
    data = load_dataset(DataConfig(dataset="folder", root=str(tmp_path), image_size=16))
    assert data.train_images.shape == (25, 3, 16, 16) and data.test_images.shape[-2:] == (16, 16)


def test_integrity_warning_is_emitted_once_and_loading_goes_on(fake_cifar_root: Path) -> None:
    clear_cache()
    cfg = DataConfig(root=str(fake_cifar_root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_dataset(cfg)
        load_dataset(cfg)  # cached: no second warning
        search_loaders(cfg, batch_size=8, seed=0)
    hits = [w for w in caught if issubclass(w.category, DataIntegrityWarning)]
    assert len(hits) == 1 and "loaded anyway" in str(hits[0].message)


def test_real_shared_cifar10_loads_despite_checksums(real_cifar: Path) -> None:
    clear_cache()
    with pytest.warns(DataIntegrityWarning, match="MD5"):
        data = load_dataset(DataConfig(root=str(real_cifar)))
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert data.train_labels.bincount().tolist() == [5000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    assert data.classes[0] == "airplane" and data.classes[-1] == "truck"
    mean = data.train_images[:5000].double().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(data.info.mean, dtype=torch.float64), atol=0.02)
    clear_cache()  # 180 MB: do not keep it for the rest of the session


def test_resize_to_16_keeps_the_colours(fake_cifar_root: Path) -> None:
    native = load_dataset(DataConfig(root=str(fake_cifar_root)))
    small = load_dataset(DataConfig(root=str(fake_cifar_root), image_size=16))
    assert small.train_images.shape == (200, 3, 16, 16) and small.test_images.shape == (100, 3, 16, 16)
    assert small.info.image_size == 16 and torch.equal(small.train_labels, native.train_labels)
    diff = small.train_images.double().mean((2, 3)) - native.train_images.double().mean((2, 3))
    assert diff.abs().max() < 2.0  # per-image mean colour, in 0..255 units


def test_fake_writers_live_in_bnas_testing_only() -> None:
    import bnas.data

    for name in ("make_fake_cifar", "make_fake_cifar100", "make_fake_folder", "FAKE_DATASETS"):
        assert not hasattr(bnas.data, name) and name not in bnas.data.__all__


@pytest.mark.parametrize("num_classes", [0, 11])
def test_fake_cifar_rejects_impossible_class_counts(num_classes: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"num_classes must lie in \[1, 10\]"):
        make_fake_cifar(tmp_path, num_classes=num_classes)


def test_fake_cifar_classes_are_separable(fake_cifar_root: Path) -> None:
    """Nearest class-mean on raw pixels must beat chance by far, so tiny training runs can learn."""
    data = load_dataset(DataConfig(root=str(fake_cifar_root)))
    x_tr, x_te = data.train_images.flatten(1).float(), data.test_images.flatten(1).float()
    means = torch.stack([x_tr[data.train_labels == c].mean(0) for c in range(10)])
    acc = (torch.cdist(x_te, means).argmin(1) == data.test_labels).float().mean()
    assert acc > 0.5


# ---------------------------------------------------------------------------------- subsets and split


def test_balanced_order_prefixes_are_balanced() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    order = balanced_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(85))
    assert labels[order[:15]].bincount().tolist() == [5, 5, 5]  # equal while every class has images
    assert labels[order[:25]].bincount().tolist() == [10, 10, 5]  # the small class ran out
    prop = balanced_order(labels, seed=3, proportional=True)
    assert labels[prop[:17]].bincount(minlength=3).tolist() == [10, 6, 1]  # ~1/5 of each class


def test_subset_sizes_are_class_balanced_and_fixed(fake_cifar_root: Path) -> None:
    cfg = DataConfig(root=str(fake_cifar_root), train_subset=50, test_subset=20)
    data = load_dataset(cfg)
    tr, te = train_indices(cfg), test_indices(cfg)
    assert len(tr) == 50 and len(te) == 20 and len(set(tr.tolist())) == 50
    assert data.train_labels[tr].bincount().tolist() == [5] * 10
    assert data.test_labels[te].bincount().tolist() == [2] * 10
    assert torch.equal(tr, train_indices(cfg))  # the subset does not depend on any run seed
    full = DataConfig(root=str(fake_cifar_root))
    assert len(train_indices(full)) == 200 and len(test_indices(full)) == 100


@pytest.mark.parametrize("key", ["train_subset", "test_subset"])
def test_subset_larger_than_the_dataset_is_an_error(fake_cifar_root: Path, key: str) -> None:
    cfg = DataConfig(root=str(fake_cifar_root), **{key: 5000})
    available = "200" if key == "train_subset" else "100"
    with pytest.raises(ConfigError, match=rf"data\.{key}: 5000 exceeds the {available}"):
        retrain_loaders(cfg, batch_size=8, eval_batch_size=8, seed=0)


@pytest.mark.parametrize("subset", [None, 60])
def test_search_split_deterministic_disjoint_stratified(fake_cifar_root: Path, subset: int | None) -> None:
    cfg = DataConfig(root=str(fake_cifar_root), train_subset=subset, val_fraction=0.5)
    labels = load_dataset(cfg).train_labels
    tr, va = search_split(cfg, seed=1)
    tr2, va2 = search_split(cfg, seed=1)
    tr3, va3 = search_split(cfg, seed=2)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, va3)
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == train_indices(cfg).tolist()
    n = subset or 200
    assert len(va) == n // 2
    assert labels[va].bincount().tolist() == [n // 20] * 10 == labels[tr].bincount().tolist()


def test_search_split_val_fraction(fake_cifar_root: Path) -> None:
    tr, va = search_split(DataConfig(root=str(fake_cifar_root), val_fraction=0.2), seed=0)
    assert (len(tr), len(va)) == (160, 40)


# ---------------------------------------------------------------------------------- augmentation


INFO = get_info(DataConfig())


def test_train_transform_shapes_and_seeding() -> None:
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    t = TrainTransform.for_size(INFO, 16, cutout=16, autoaugment=True)
    assert (t.padding, t.cutout) == (2, 8)  # 4 and 16 px at 32x32, scaled to 16x16
    state = torch.get_rng_state()
    a = t(img, torch.Generator().manual_seed(5))
    b = t(img, torch.Generator().manual_seed(5))
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())  # AutoAugment does not disturb the global RNG
    assert TrainTransform.for_size(INFO, 8).padding == 1  # never below one pixel


def test_eval_transform_normalises() -> None:
    img = torch.full((3, 4, 4), 255, dtype=torch.uint8)
    out = EvalTransform(INFO.mean, INFO.std)(img)
    expected = (1 - torch.tensor(INFO.mean)) / torch.tensor(INFO.std)
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)


def test_cutout_zeroes_one_square() -> None:
    img = torch.full((3, 16, 16), 220, dtype=torch.uint8)  # normalises to positive values everywhere
    t = TrainTransform(INFO.mean, INFO.std, padding=0, flip=False, cutout=6)
    full_squares = 0
    for seed in range(40):
        zero = (t(img, torch.Generator().manual_seed(seed)) == 0).all(0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert 0 < h <= 6 and 0 < w <= 6 and int(zero.sum()) == h * w  # one rectangle, clipped at borders
        assert rows.tolist() == list(range(int(rows[0]), int(rows[0]) + h))
        full_squares += (h, w) == (6, 6)
    assert full_squares > 0


def test_crop_and_flip_keep_the_content() -> None:
    img = torch.arange(3 * 8 * 8, dtype=torch.float32).remainder(251).to(torch.uint8).view(3, 8, 8)
    t = TrainTransform(INFO.mean, INFO.std, padding=2)
    ev = EvalTransform(INFO.mean, INFO.std)(img)
    seen_flip = False
    for seed in range(20):
        out = t(img, torch.Generator().manual_seed(seed))
        assert out.shape == img.shape
        # The 4x4 centre always survives a 2-pixel crop shift, possibly mirrored.
        window = ev[:, 2:6, 2:6]
        found = any(
            torch.allclose(cand[:, i : i + 4, j : j + 4], window)
            for cand in (out, out.flip(-1))
            for i in range(5)
            for j in range(5)
        )
        assert found
        seen_flip |= not any(
            torch.allclose(out[:, i : i + 4, j : j + 4], window) for i in range(5) for j in range(5)
        )
    assert seen_flip


# ---------------------------------------------------------------------------------- loaders


def test_loaders_yield_float_batches(any_dataset: tuple[str, Path]) -> None:
    name, root = any_dataset
    cfg = DataConfig(dataset=name, root=str(root), image_size=16)
    train, val, info = search_loaders(cfg, batch_size=16, seed=0)
    n_train = len(load_dataset(cfg).train_labels)
    assert len(train.dataset) + len(val.dataset) == n_train
    rtrain, test, info2 = retrain_loaders(cfg, batch_size=16, eval_batch_size=32, seed=0, cutout=16)
    assert info == info2 and len(rtrain.dataset) == n_train
    for loader in (train, val, rtrain, test):
        x, y = next(iter(loader))
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 16, 16) and x.shape[0] == len(y) <= 32
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < info.num_classes
        assert not loader.drop_last


def test_loaders_are_seeded(fake_cifar_root: Path) -> None:
    cfg = DataConfig(root=str(fake_cifar_root), image_size=16)

    def first(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return next(iter(search_loaders(cfg, batch_size=16, seed=seed)[0]))

    (a, ya), (b, yb), (_, yc) = first(0), first(0), first(1)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(ya, yc)


def test_loaders_with_workers_are_reproducible(fake_cifar_root: Path) -> None:
    cfg = DataConfig(root=str(fake_cifar_root), image_size=16, train_subset=40, num_workers=2)

    def epoch() -> torch.Tensor:
        loader = retrain_loaders(cfg, batch_size=10, eval_batch_size=10, seed=3, cutout=8)[0]
        return torch.cat([x for x, _ in loader])

    a, b = epoch(), epoch()
    assert a.shape == (40, 3, 16, 16) and torch.equal(a, b)


# First batches of seeded loaders on the session's fake CIFAR-10 (make_fake_cifar defaults), recorded
# before bnas.data became a package: (label sum, pixel sum, sum of squares). Same seed, same batches.
PINNED_FIRST_BATCHES = {
    "search_train": (73, -2376.8362, 18006.9801),
    "search_val": (69, -2371.5123, 18364.6756),
    "retrain_train": (81, -13443.9515, 70906.7592),
    "retrain_test": (143, 10302.7756, 120416.1639),
}


def test_seeded_first_batches_are_pinned(fake_cifar_root: Path) -> None:
    search_cfg = DataConfig(root=str(fake_cifar_root), image_size=16)
    retrain_cfg = DataConfig(root=str(fake_cifar_root), train_subset=100, test_subset=50)
    s_train, s_val, _ = search_loaders(search_cfg, batch_size=16, seed=3)
    r_train, r_test, _ = retrain_loaders(
        retrain_cfg, batch_size=16, eval_batch_size=32, seed=5, cutout=16, autoaugment=True
    )
    loaders = {"search_train": s_train, "search_val": s_val, "retrain_train": r_train, "retrain_test": r_test}
    for name, loader in loaders.items():
        x, y = next(iter(loader))
        labels, pixels, squares = PINNED_FIRST_BATCHES[name]
        x = x.double()
        assert int(y.sum()) == labels, name
        assert float(x.sum()) == pytest.approx(pixels, rel=1e-6), name
        assert float((x * x).sum()) == pytest.approx(squares, rel=1e-6), name
    train, val = search_split(retrain_cfg, seed=7)
    assert (int(train.sum()), int(val.sum()), int(train_indices(retrain_cfg).sum())) == (4558, 4912, 9470)


def test_test_loader_is_ordered_and_unaugmented(fake_cifar_root: Path) -> None:
    cfg = DataConfig(root=str(fake_cifar_root), test_subset=30)
    _, test, info = retrain_loaders(cfg, batch_size=8, eval_batch_size=64, seed=0, autoaugment=True)
    x, y = next(iter(test))
    data = load_dataset(cfg)
    idx = test_indices(cfg)
    assert torch.equal(y, data.test_labels[idx])
    assert torch.allclose(x, EvalTransform(info.mean, info.std)(data.test_images[idx]))  # broadcasts over N


def test_write_cifar10_subset_round_trips(fake_cifar_root: Path, tmp_path: Path) -> None:
    from bnas.data import write_cifar10_subset

    cfg = DataConfig(root=str(fake_cifar_root), train_subset=50, test_subset=20)
    dst = write_cifar10_subset(cfg, tmp_path / "subset")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = load_dataset(DataConfig(root=str(dst)))
        full = load_dataset(DataConfig(root=str(fake_cifar_root)))
    assert len(small.train_labels) == 50 and len(small.test_labels) == 20
    # The same images as the balanced subset of the source, in the same order.
    idx = train_indices(cfg)
    assert torch.equal(small.train_images, full.train_images[idx])
    assert torch.equal(small.train_labels, full.train_labels[idx])


class _MakesDirs:
    """Pickles as a call of ``os.makedirs(path)``: unpickling it would run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.makedirs, (self.path,))


@pytest.mark.parametrize("victim", ["data_batch_1", "batches.meta"])
def test_a_crafted_cifar_pickle_is_refused_and_runs_nothing(
    fake_cifar_root: Path, tmp_path: Path, victim: str
) -> None:
    """A dataset folder may come from anywhere: only plain data and NumPy arrays are unpickled."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(fake_cifar_root, root)
    marker = tmp_path / "code_ran"
    target = root / "cifar-10-batches-py" / victim
    target.write_bytes(pickle.dumps({b"data": _MakesDirs(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(ConfigError, match=r"holds os.makedirs, which a CIFAR file never holds"):
        DATASETS.get("cifar10").read_uncached(root)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, match",
    [
        ("list", "holds a list, not a CIFAR batch"),
        ("truncated", "not a readable CIFAR batch file"),
        ("shape", r"data has shape \(4, 100\)"),
        ("labels", r"training labels lie in \[0, 12\], expected \[0, 9\]"),
    ],
)
def test_a_damaged_cifar_batch_is_named(
    damage: str, match: str, fake_cifar_root: Path, tmp_path: Path
) -> None:
    """A batch file that is a pickle of the wrong thing, cut short, or of the wrong shape or labels is a
    BadDatasetError naming it (the CLIs print one error line), not a NumPy traceback."""
    import pickle
    import shutil

    import numpy as np

    from bnas.data import DATASETS, BadDatasetError
    from bnas.data.cifar_writer import dump_py2_pickle

    root = tmp_path / "cifar"
    shutil.copytree(fake_cifar_root, root)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    if damage == "list":
        batch.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    elif damage == "truncated":
        batch.write_bytes(batch.read_bytes()[:100])
    elif damage == "shape":
        dump_py2_pickle({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, batch)
    else:
        dump_py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}, batch)
    with pytest.raises(BadDatasetError, match=match):
        DATASETS.get("cifar10").read_uncached(root)


def test_an_image_past_the_decompression_limit_is_a_bad_image(tmp_path: Path, monkeypatch) -> None:
    """PIL refuses an image of more than twice Image.MAX_IMAGE_PIXELS (a decompression bomb): that is a
    BadDatasetError naming the file (so on_bad_image: skip applies), not a traceback."""
    from PIL import Image

    from bnas.data import BadDatasetError
    from bnas.data.sources import decode_rgb

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x 1000
    with pytest.raises(
        BadDatasetError, match="big.png: cannot be decoded as an image .DecompressionBombError"
    ):
        decode_rgb(tmp_path / "big.png")


def test_a_fifo_named_like_an_image_is_not_listed(tmp_path: Path) -> None:
    import os

    from bnas.data.sources import _FolderSource

    cls = tmp_path / "train" / "cat"
    cls.mkdir(parents=True)
    (cls / "a.png").write_bytes(b"x")
    os.mkfifo(cls / "pipe.jpg")
    assert [p.name for p in _FolderSource._files(tmp_path / "train")["cat"]] == ["a.png"]


def test_large_folder_images_are_resized_as_decoded_like_the_whole_batch(tmp_path: Path) -> None:
    """A folder is held at ``image_size`` from the first image on (never all at full resolution), and a
    square image comes out as the whole-batch resize made it (bit for bit)."""
    from bnas.data.loading import _resize
    from bnas.data.sources import DATASETS, decode_rgb

    make_fake_folder(tmp_path, per_class=2, n_test=1, size=48)
    clear_cache()
    arrays = DATASETS.get("folder").read_uncached(tmp_path, 12)
    assert arrays.train_images.shape[-2:] == (12, 12) and arrays.test_images.shape[-2:] == (12, 12)
    files = sorted((tmp_path / "train").glob("*/*.png"))
    whole = _resize(torch.stack([decode_rgb(p) for p in files]), 12)
    assert torch.equal(arrays.train_images, whole)


def test_a_large_jpeg_is_decoded_in_draft_mode(tmp_path: Path) -> None:
    from PIL import Image

    from bnas.data.sources import decode_rgb

    path = tmp_path / "big.jpg"
    Image.new("RGB", (640, 480), (10, 200, 30)).save(path, quality=90)
    assert decode_rgb(path).shape == (3, 480, 640)
    small = decode_rgb(path, draft=64)  # the smallest DCT scale with both sides >= 64: 1/4 here
    assert small.shape == (3, 120, 160)
    assert (small.double().mean((1, 2)) - torch.tensor([10.0, 200.0, 30.0])).abs().max() < 4
