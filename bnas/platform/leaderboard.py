"""The leaderboard: one row per derived architecture, the aggregation that both the console summary
(:mod:`bnas.platform.summary`) and ``analysis.report`` show, built from
:func:`bnas.platform.tracking_schema.run_record` dicts. No MLflow, Ray or Optuna import.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from bnas.platform.tracking_schema import (
    BINARIZATION_SETTING,
    PARAM_COLUMN,
    RETRAIN,
    SEARCH,
    SIZE_METRICS,
    Metric,
    State,
    is_number,
    text,
)


def is_finished_search(r: Mapping[str, Any]) -> bool:
    """A search record that completed and derived a genotype."""
    return (
        r.get("kind") == SEARCH.name
        and r.get("state") == State.COMPLETE
        and bool(text(r.get("genotype_digest")))
    )


def is_finished_retrain(r: Mapping[str, Any]) -> bool:
    """A retraining record that completed with a final test accuracy."""
    return (
        r.get("kind") == RETRAIN.name
        and r.get("state") == State.COMPLETE
        and is_number(r.get(Metric.TEST_ACC))
    )


def _value(r: Mapping[str, Any] | None, key: str) -> float:
    v = r.get(key) if r is not None else None
    return float(v) if is_number(v) else math.nan


def _rank_key(row: dict[str, Any]) -> tuple[float, float, float]:
    """Retrained rows first by mean test accuracy, the rest by derived_val_acc; ties: smaller model."""
    test, val, size = row["test_acc_mean"], row[Metric.DERIVED_VAL_ACC], row[Metric.PACKED_BYTES]
    inf = math.inf
    return (
        -test if is_number(test) else inf,
        -val if is_number(val) else inf,
        size if is_number(size) else inf,
    )


#: [D] An accuracy counts as "at chance" when it lies within this many standard errors of 1/classes
#: (the larger of the binomial error of a chance-level classifier on the test images and the spread
#: over seeds).
CHANCE_SIGMAS = 2.0


def chance_margin(num_classes: int, n_images: int | None, seed_std: float = math.nan) -> tuple[float, float]:
    """``(chance, margin)``: the accuracy of guessing, and how far above it an accuracy must lie to be
    told apart from guessing on ``n_images`` test images (:data:`CHANCE_SIGMAS` standard errors)."""
    chance = 1.0 / num_classes
    binomial = math.sqrt(chance * (1 - chance) / n_images) if n_images else 0.0
    spread = seed_std if is_number(seed_std) else 0.0
    return chance, CHANCE_SIGMAS * max(binomial, spread)


def near_chance(acc: Any, num_classes: int | None, n_images: int | None, seed_std: float = math.nan) -> bool:
    """True when ``acc`` cannot be told apart from guessing (see :func:`chance_margin`)."""
    if not is_number(acc) or not num_classes:
        return False
    chance, margin = chance_margin(num_classes, n_images, seed_std)
    return float(acc) - chance <= margin


def _test_images(retrains: list[Mapping[str, Any]]) -> int | None:
    for r in retrains:
        n = r.get(PARAM_COLUMN + "data.test_subset")
        if is_number(n):
            return int(n)
    return None


def _val_images(producer: Mapping[str, Any] | None) -> int | None:
    """The search's validation half (bnas.data.splits: val_fraction of the training subset)."""
    if producer is None:
        return None
    n = producer.get(PARAM_COLUMN + "data.train_subset")
    frac = producer.get(PARAM_COLUMN + "data.val_fraction")
    if not (is_number(n) and is_number(frac)):
        return None
    return max(1, round(float(n) * float(frac)))


def leaderboard(records: Iterable[Mapping[str, Any]], num_classes: int | None = None) -> list[dict[str, Any]]:
    """One row per derived architecture (genotype digest x retraining binarization), best first.

    Accuracy is the final ``test_acc`` of the complete retraining runs of the row: mean, sample standard
    deviation (n - 1; NaN below two runs) and count over seeds. Rows without retraining (a complete
    search whose digest was never retrained) keep NaN there and rank after retrained ones, by the
    search's ``derived_val_acc``; remaining ties go to the smaller packed size (:func:`_rank_key`).

    The row's producer is the search run its retraining runs name (``bnas.search_run_id``; the one
    with the highest ``derived_val_acc`` if several), else the complete search run with that digest and
    the highest ``derived_val_acc``, else none (``source = reference``: a retrained reference
    genotype). Size figures are the mean over the retraining runs, else the producer's (computed at
    the retraining settings). ``producer`` holds the producer's record for callers that show more of
    its settings. ``records`` are :func:`run_record` dicts (or rows of a frame built from them).

    With ``num_classes`` (the dataset's), each row says whether its accuracies are told apart from
    guessing (:func:`near_chance`: ``test_near_chance``, ``val_near_chance``), and rows at chance rank
    after those above it: ordering them among themselves would rank noise.
    """
    records = list(records)
    by_id = {r["run_id"]: r for r in records if r.get("kind") == SEARCH.name}
    searches = [r for r in records if is_finished_search(r)]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        if is_finished_retrain(r):
            key = (text(r.get("genotype_digest")), text(r.get(PARAM_COLUMN + BINARIZATION_SETTING)))
            groups.setdefault(key, []).append(r)
    retrained = {digest for digest, _ in groups}
    for r in searches:
        if r["genotype_digest"] not in retrained:
            groups.setdefault((r["genotype_digest"], text(r.get(PARAM_COLUMN + BINARIZATION_SETTING))), [])

    rows = []
    for (digest, method), retrains in groups.items():
        same = [s for s in searches if s["genotype_digest"] == digest]
        linked = [by_id[i] for i in (text(r.get("search_run_id")) for r in retrains) if i in by_id]
        producer = _best_search(linked) or _best_search(same)
        accs = [float(r[Metric.TEST_ACC]) for r in retrains]
        seeds = sorted({int(r["seed"]) for r in retrains if is_number(r.get("seed"))})
        name = next((text(r.get("genotype_name")) for r in retrains if text(r.get("genotype_name"))), "")
        row: dict[str, Any] = {
            "genotype_digest": digest,
            "genotype_name": name or (text(producer.get("genotype_name")) if producer else ""),
            "source": "search" if producer is not None else "reference",
            "binarization": method,
            "test_acc_mean": statistics.fmean(accs) if accs else math.nan,
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else math.nan,
            "n_seeds": len(accs),
            "seeds": ",".join(map(str, seeds)),
            Metric.DERIVED_VAL_ACC: _value(producer, Metric.DERIVED_VAL_ACC),
            Metric.SUPERNET_VAL_ACC: _value(producer, Metric.SUPERNET_VAL_ACC),
            Metric.SEARCH_TIME_S: _value(producer, Metric.SEARCH_TIME_S),
            "n_trials": len(same),
            "trial_id": producer.get("trial_id") if producer is not None else None,
            "search_run_id": producer.get("run_id") if producer is not None else None,
            "retrain_run_ids": ",".join(r["run_id"] for r in retrains),
        }
        for m in SIZE_METRICS:
            vals = [float(r[m]) for r in retrains if is_number(r.get(m))]
            row[m] = statistics.fmean(vals) if vals else _value(producer, m)
        row["producer"] = producer
        row["test_images"] = _test_images(retrains)
        row["test_near_chance"] = near_chance(
            row["test_acc_mean"], num_classes, row["test_images"], row["test_acc_std"]
        )
        row["val_near_chance"] = near_chance(row[Metric.DERIVED_VAL_ACC], num_classes, _val_images(producer))
        rows.append(row)
    rows.sort(key=lambda r: (_at_chance(r), _rank_key(r)))
    return rows


def _at_chance(row: Mapping[str, Any]) -> bool:
    """The figure a row is ranked by (test accuracy if retrained, else derived_val_acc) is at chance."""
    return bool(row["test_near_chance"] if is_number(row["test_acc_mean"]) else row["val_near_chance"])


def _best_search(runs: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first run with the highest ``derived_val_acc`` (runs without one count as lowest)."""
    if not runs:
        return None
    return max(runs, key=lambda r: v if is_number(v := _value(r, Metric.DERIVED_VAL_ACC)) else -math.inf)
