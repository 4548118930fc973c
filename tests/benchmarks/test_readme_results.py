"""The README's results part is what ``benchmarks/readme_results.py`` writes from docs/results/, and
every results file it reads records its commit, command, machine and wall time."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("readme_results", REPO / "benchmarks" / "readme_results.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["readme_results"] = mod
    spec.loader.exec_module(mod)
    return mod


rr = _load()


def test_readme_results_are_current() -> None:
    assert rr.main(["--check"]) == 0, "run python benchmarks/readme_results.py"


@pytest.mark.parametrize("folder", [f for _, f, _ in rr.RESULTS])
def test_every_results_file_has_identity(folder: str) -> None:
    path = REPO / folder / "results.json"
    if not path.is_file():
        pytest.skip(f"{folder} not measured at this commit (the README says so)")
    meta = json.loads(path.read_text())["meta"]
    assert len(meta["commit"]) == 40 and meta["command"].startswith("python benchmarks/")
    assert meta["machine"] and "{" not in meta["machine"] and meta["wall_s"] > 0


def test_a_missing_folder_is_named_and_stale_text_is_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "docs" / "results" / "evidence_cpu"
    folder.mkdir(parents=True)
    meta = {"commit": "a" * 40, "command": "python benchmarks/evidence.py --profile cpu", "dirty": False,
            "machine": "m", "wall_s": 120.0, "date": "d"}  # fmt: skip
    (folder / "results.json").write_text(json.dumps({"meta": meta}))
    (folder / "results.md").write_text("# Evidence\n\ncommit aaa; x\n\n## Conclusions\n\n- figure 1.0\n")
    readme = f"intro\n{rr.BEGIN}\nold figure 9.9\n{rr.END}\nrest\n"
    new = rr.updated(readme, tmp_path)
    assert "old figure" not in new and new.startswith("intro\n") and new.endswith("rest\n")
    assert "`python benchmarks/evidence.py --profile cpu` at commit `aaaaaaa`; m; 2.0 min" in new
    assert "#### Conclusions" in new and "- figure 1.0" in new and "commit aaa" not in new
    assert "Not measured at this commit: `docs/results/search_signal_cpu/results.json` is missing." in new
    with pytest.raises(SystemExit, match="markers"):
        rr.updated("no markers", tmp_path)
