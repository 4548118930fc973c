"""Is the quality of what the defaults derive lower than PC-DARTS's? Read from an evidence run.

From the ``results.json`` of ``benchmarks/evidence.py`` (its commit, command and machine are in its
``meta``), per search schedule (BNAS's defaults, PC-DARTS's schedule; one derived genotype per seed):
the search's own proxies (``proxy_val_acc``: the derived discrete network fine-tuned
``search.proxy_steps`` SGD steps from the shared weights; ``derived_val_acc``: the derived network on
the shared weights as they are) and the accuracy retrained from scratch (mean over the retraining
seeds). For each, one-sided Mann-Whitney U tests in both directions (``evidence_stats.mann_whitney``,
scipy): "BNAS lower" and "BNAS higher".

    python benchmarks/evidence_quality.py docs/results/evidence_cpu/results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evidence_stats as st  # noqa: E402

SCHEDULES = ("bnas", "pcdarts")


def quality_rows(results: dict) -> list[dict]:
    """One row per measure: both groups' values, their means and the two one-sided p-values."""
    searches = {s: [x for x in results["searches"] if x["schedule"] == s] for s in SCHEDULES}
    retrained = {
        s: [a["acc_mean"] for a in results["architectures"] if a["group"] == f"derived/{s}"]
        for s in SCHEDULES
    }
    measures = {
        k: {s: [x[k] for x in searches[s]] for s in SCHEDULES} for k in ("proxy_val_acc", "derived_val_acc")
    }
    measures["retrained_test_acc"] = retrained
    rows = []
    for name, groups in measures.items():
        b, p = groups["bnas"], groups["pcdarts"]
        if len(b) < 2 or len(p) < 2:
            raise SystemExit(
                f"{name}: needs >= 2 values per schedule, got {len(b)} BNAS and {len(p)} PC-DARTS"
            )
        rows.append(
            {
                "measure": name,
                "bnas": b,
                "pcdarts": p,
                "mean_bnas": statistics.fmean(b),
                "mean_pcdarts": statistics.fmean(p),
                "p_bnas_lower": st.mann_whitney(p, b)["p"],
                "p_bnas_higher": st.mann_whitney(b, p)["p"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="results.json of benchmarks/evidence.py")
    args = ap.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {args.results}: cannot read an evidence results.json ({e})") from None
    meta = results.get("meta", {})
    print(f"{args.results}: commit {str(meta.get('commit', '?'))[:7]}, `{meta.get('command', '?')}`")
    print(f"{'measure':<20}{'n':>7}{'BNAS':>8}{'PC-DARTS':>10}{'p(BNAS lower)':>15}{'p(BNAS higher)':>16}")
    for r in quality_rows(results):
        n = f"{len(r['bnas'])}v{len(r['pcdarts'])}"
        print(
            f"{r['measure']:<20}{n:>7}{r['mean_bnas']:>8.3f}{r['mean_pcdarts']:>10.3f}"
            f"{r['p_bnas_lower']:>15.3f}{r['p_bnas_higher']:>16.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
