"""Small inputs that once cost unbounded memory, each run in a fresh process under an address-space
limit (RLIMIT_AS 6 GiB, of which importing torch maps about 3): refused or handled within it, in bounded time.

Cases: a "billion laughs" YAML file; a packed model.bnas whose header promises a huge network; a class
folder of ten 8000x8000 PNGs read at 16 px; a 20000x20000 PNG (past PIL's decompression-bomb limit)
with ``on_bad_image: skip``; and ``summary --channels 1000000``.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnas.testing import billion_laughs_yaml, rewrite_packed_header

pytestmark = pytest.mark.slow  # fresh processes, each importing torch: not the fast tier

REPO = Path(__file__).resolve().parents[1]
LIMIT = 6 << 30


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        preexec_fn=_limited,
    )
    res.wall_s = time.monotonic() - started  # type: ignore[attr-defined]
    assert "MemoryError" not in res.stderr and "Cannot allocate memory" not in res.stderr, res.stderr[-3000:]
    return res


def test_a_billion_laughs_file_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs_yaml())
    code = "import sys; from bnas.yaml_files import read_yaml; read_yaml(sys.argv[1])"
    res = _run(code, str(bomb))
    assert res.returncode != 0 and "100,000 values" in res.stderr, res.stderr[-2000:]
    assert res.wall_s < 60


def test_a_packed_header_promising_a_huge_network_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    from bnas.eval_network import EvalNetwork
    from bnas.export import export_packed
    from bnas.genotype import GENOTYPES

    path = tmp_path / "m.bnas"
    net = EvalNetwork(GENOTYPES.get("bnas_xnor"), C=4, num_classes=10, layers=3, auxiliary=False)
    export_packed(net, path)
    rewrite_packed_header(path, lambda h: h["build"].update(C=1000, layers=100))
    code = (
        "import sys\nfrom bnas.export import PackedFormatError, load_packed\n"
        "try:\n    load_packed(sys.argv[1])\nexcept PackedFormatError as e:\n    print('refused:', e)\n"
    )
    res = _run(code, str(path))
    assert res.returncode == 0 and "refused:" in res.stdout, res.stdout + res.stderr[-2000:]
    assert res.wall_s < 60


def test_large_folder_images_are_read_in_bounded_memory(tmp_path: Path) -> None:
    from PIL import Image

    for split, n in (("train", 10), ("test", 1)):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n // 2 or 1):
                Image.new("RGB", (8000, 8000), (40 * i, 100, 200)).save(folder / f"{i}.png")
    code = (
        "import sys\nfrom bnas.data.sources import DATASETS\n"
        "a = DATASETS.get('folder').read_uncached(__import__('pathlib').Path(sys.argv[1]), 16)\n"
        "print(tuple(a.train_images.shape))\n"
    )
    res = _run(code, str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("(10, 3, 16, 16)"), res.stdout


def test_a_decompression_bomb_is_a_skipped_bad_image_in_bounded_memory(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / "ok.png")
            Image.new("RGB", (32, 32), (30, 20, 10)).save(folder / "ok2.png")
    Image.MAX_IMAGE_PIXELS = None  # write it; the reader keeps PIL's limit
    Image.new("1", (20000, 20000)).save(tmp_path / "train" / "a" / "bomb.png")
    code = (
        "import sys, warnings\nfrom pathlib import Path\nfrom bnas.data.sources import DATASETS\n"
        "warnings.simplefilter('ignore')\n"
        "a = DATASETS.get('folder').read_uncached(Path(sys.argv[1]), 16, on_bad='skip')\n"
        "print(tuple(a.train_images.shape))\n"
    )
    res = _run(code, str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("(4, 3, 16, 16)"), res.stdout  # the bomb skipped


def test_summary_with_a_million_channels_is_refused_in_bounded_memory() -> None:
    res = _run("", "-m", "bnas", "summary", "--genotype", "bnas_xnor", "--channels", "1000000")
    assert res.returncode == 2 and res.stderr.startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and res.wall_s < 60


def test_the_limit_is_tight_enough_to_catch_a_bomb() -> None:
    """The limit is real: allocating 8 GiB under it fails (else the tests above prove nothing)."""
    res = subprocess.run(
        [sys.executable, "-c", "import numpy; numpy.ones(8 << 30, dtype='u1')"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limited,
    )
    assert res.returncode != 0 and "MemoryError" in res.stderr
