"""The CIFAR download path, for real, against a file server on loopback (no internet in tests).

torchvision fetches the archive, checks its MD5, unpacks it and checks every file's MD5; the server
here serves a fake archive in the official layout, and torchvision's expected sums are pointed at
it (``monkeypatch`` on the class attributes torchvision itself reads: URL and MD5 sums), so every
step runs as it would against the official server. A corrupted archive is refused, and a machine
without network gets one error saying how to point at a copy.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torchvision.datasets as tvd

from bnas.data import DATASETS, DatasetNotFoundError
from bnas.testing import make_fake_cifar

# Fake data never matches the official MD5 sums; that warning is tested in test_data.py.
pytestmark = pytest.mark.filterwarnings("ignore::bnas.data.DataIntegrityWarning")

ARCHIVE = "cifar-10-python.tar.gz"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """``(base url, folder served, fake CIFAR folder)``: the archive at ``<url>/cifar-10-python.tar.gz``."""
    src = make_fake_cifar(tmp_path_factory.mktemp("cifar_src"), n_train=100, n_test=20)
    www = tmp_path_factory.mktemp("www")
    with tarfile.open(www / ARCHIVE, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (www / "broken.tar.gz").write_bytes((www / ARCHIVE).read_bytes()[:-100])  # truncated
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]  # quiet test output
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda *a: None  # type: ignore[method-assign]  # clients that hang up early
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www, src / "cifar-10-batches-py"
    finally:
        server.shutdown()
        server.server_close()


def _point_torchvision_at(monkeypatch: pytest.MonkeyPatch, url: str, www: Path, files: Path) -> None:
    """The URL and the MD5 sums torchvision checks, for the fake archive (what it reads at call time)."""
    cls = tvd.CIFAR10
    monkeypatch.setattr(cls, "url", url)
    monkeypatch.setattr(cls, "tgz_md5", _md5(www / ARCHIVE))
    monkeypatch.setattr(cls, "train_list", [[n, _md5(files / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(files / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(files / cls.meta["filename"])})


def test_missing_cifar_is_downloaded_and_checked(
    served: tuple[str, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www, files = served
    _point_torchvision_at(monkeypatch, f"{url}/{ARCHIVE}", www, files)
    root = tmp_path / "data"
    assert DATASETS.get("cifar10").ensure(root, True, "test") == root
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        assert _md5(root / "cifar-10-batches-py" / name) == _md5(files / name)


def test_a_corrupted_download_is_refused(
    served: tuple[str, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive's MD5 is checked: a truncated file never becomes a dataset."""
    url, www, files = served
    _point_torchvision_at(monkeypatch, f"{url}/broken.tar.gz", www, files)
    with pytest.raises(DatasetNotFoundError, match=r"download into .* failed") as e:
        DATASETS.get("cifar10").ensure(tmp_path / "data", True, "test")
    assert "--data-root" in str(e.value)
    assert not (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").exists()


def test_no_network_gives_one_error_saying_how_to_point_at_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port nobody listens on: what an offline machine answers
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(tvd.CIFAR10, "url", f"http://127.0.0.1:{port}/{ARCHIVE}")
    with pytest.raises(DatasetNotFoundError) as e:
        DATASETS.get("cifar10").ensure(tmp_path / "data", True, "the default ./data")
    msg = str(e.value)
    assert msg.startswith(f"CIFAR-10: download into {tmp_path / 'data'} failed (")
    assert "refused" in msg.lower() or "urlerror" in msg.lower()
    assert "--data-root" in msg and "BNAS_DATA_ROOT" in msg  # how to point at a copy instead
