"""benchmarks/evidence_quality.py: the quality comparison read from an evidence results.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import evidence_quality as eq  # noqa: E402


def _results(bnas: list[float], pcdarts: list[float]) -> dict:
    searches = [
        {"schedule": s, "proxy_val_acc": v, "derived_val_acc": 0.2}
        for s, vals in (("bnas", bnas), ("pcdarts", pcdarts))
        for v in vals
    ]
    archs = [
        {"group": f"derived/{s}", "acc_mean": v + 0.1}
        for s, vals in (("bnas", bnas), ("pcdarts", pcdarts))
        for v in vals
    ]
    return {"meta": {"commit": "abc1234", "command": "x"}, "searches": searches, "architectures": archs}


def test_a_clearly_lower_group_is_reported_lower_in_every_measure_but_the_tied_one() -> None:
    rows = {
        r["measure"]: r for r in eq.quality_rows(_results([0.1, 0.11, 0.12, 0.13], [0.3, 0.31, 0.32, 0.33]))
    }
    assert rows["proxy_val_acc"]["p_bnas_lower"] < 0.05 < rows["proxy_val_acc"]["p_bnas_higher"]
    assert rows["retrained_test_acc"]["p_bnas_lower"] < 0.05
    assert rows["derived_val_acc"]["p_bnas_lower"] > 0.3  # all tied: no direction
    assert rows["proxy_val_acc"]["mean_bnas"] == pytest.approx(0.115)


def test_the_cli_prints_the_table_and_refuses_a_file_it_cannot_read(tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results([0.1, 0.2], [0.3, 0.4])))
    assert eq.main([str(path)]) == 0
    assert "proxy_val_acc" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="cannot read an evidence results.json"):
        eq.main([str(tmp_path / "missing.json")])
    path.write_text(json.dumps(_results([0.1], [0.3, 0.4])))
    with pytest.raises(SystemExit, match="needs >= 2 values per schedule"):
        eq.main([str(path)])
