"""benchmarks/walkthrough.py's parts (the whole walkthrough runs a study: minutes, run by hand)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from bnas.testing import make_fake_cifar

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def walk(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("walkthrough", REPO / "benchmarks" / "walkthrough.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "walkthrough", mod)
    spec.loader.exec_module(mod)
    return mod


def test_the_held_out_folder_and_the_readme_commands(walk, tmp_path: Path, monkeypatch) -> None:
    cifar = make_fake_cifar(tmp_path / "cifar")  # 100 test images: fewer than PER_CLASS asks for
    monkeypatch.setattr(walk, "PER_CLASS", (4, 2))
    folder = walk.make_folder(cifar, tmp_path / "photos")
    train, test = sorted((folder / "train").glob("*/*.png")), sorted((folder / "test").glob("*/*.png"))
    assert len({p.parent.name for p in train}) == 10 and len(train) <= 40 and len(test) <= 20
    assert not {p.name for p in train} & {p.name for p in test}  # held-out: no image in both
    names = [n for n, _ in walk.steps(cifar, folder, install=True)]
    assert names[0] == "install" and names[1:3] == ["smoke study", "report"]
    readme = (REPO / "README.md").read_text()
    for _, cmd in walk.steps(cifar, folder, install=False):
        if "bnas search" in cmd or "bnas retrain" in cmd:  # the README's own-images recipe, flag for flag
            flags = cmd.split(" ", 1)[1].replace(str(folder), "my_photos").split()
            assert all(f in readme for f in flags), [f for f in flags if f not in readme]


def test_summary_extraction_and_misuse(walk, tmp_path: Path) -> None:
    text = "Ray dashboard: first\nsummary (3 complete)\nrow 1\nRay dashboard: y\nz"
    assert walk._between(text, "summary (", "Ray dashboard:") == "summary (3 complete)\nrow 1"
    with pytest.raises(SystemExit, match="cifar-10-batches-py"):
        walk.main(["--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
