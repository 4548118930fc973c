"""Genotypes are data: JSON round trip, stable digest, validation, reference registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnas.genotype import GENOTYPES, Genotype, GenotypeError, load_genotype, random_genotype
from bnas.search_space import OPS as ALL_OPS

# Pinned: a change of these digests means the canonical JSON (the identity of results) changed.
REFERENCE_DIGESTS = {"bnas_xnor": "a59f38dbd85b", "pc_darts": "2349ec4e514c", "darts_v2": "75f8a6657311"}


def test_reference_genotypes_are_registered() -> None:
    assert set(REFERENCE_DIGESTS) <= set(GENOTYPES.names())


def test_bnas_xnor_is_the_released_cell() -> None:
    g = GENOTYPES.get("bnas_xnor")
    assert g.normal[:4] == (
        ("skip_connect", 1),
        ("dil_conv_3x3", 0),
        ("skip_connect", 0),
        ("dil_conv_5x5", 2),
    )
    assert g.reduce[-2:] == (("skip_connect", 2), ("dil_conv_3x3", 4))
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)


@pytest.mark.parametrize("name", sorted(REFERENCE_DIGESTS))
def test_json_round_trip_and_stable_digest(name: str, tmp_path: Path) -> None:
    g = GENOTYPES.get(name)
    assert g.digest == REFERENCE_DIGESTS[name]
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_json(g.to_json(indent=None)).digest == g.digest
    # The digest ignores formatting and key order.
    shuffled = json.dumps(dict(reversed(list(g.to_dict().items()))), indent=7)
    assert Genotype.from_json(shuffled).digest == g.digest
    path = g.save(tmp_path / "g.json")
    assert load_genotype(path) == g == load_genotype(str(path)) == load_genotype(g.to_json())
    assert load_genotype(name) is g


def test_digest_changes_with_content() -> None:
    d = GENOTYPES.get("bnas_xnor").to_dict()
    d["normal"][0] = ["sep_conv_3x3", 1]
    assert Genotype.from_dict(d).digest != REFERENCE_DIGESTS["bnas_xnor"]


def _bad(**change) -> dict:
    d = GENOTYPES.get("bnas_xnor").to_dict()
    d.update(change)
    return d


@pytest.mark.parametrize(
    "data,match",
    [
        (
            _bad(normal=[["conv_9x9", 0]] + GENOTYPES.get("bnas_xnor").to_dict()["normal"][1:]),
            "unknown operation",
        ),
        (_bad(normal=[["none", 0]] + GENOTYPES.get("bnas_xnor").to_dict()["normal"][1:]), "'none'"),
        (
            _bad(reduce=GENOTYPES.get("bnas_xnor").to_dict()["reduce"][:-1] + [["skip_connect", 5]]),
            "input 5 of node 5",
        ),
        (
            _bad(reduce=GENOTYPES.get("bnas_xnor").to_dict()["reduce"][:-1] + [["skip_connect", -1]]),
            "input -1",
        ),
        (_bad(normal=GENOTYPES.get("bnas_xnor").to_dict()["normal"][:-1]), "two edges per intermediate node"),
        (_bad(normal=[["sep_conv_3x3"]] * 8), "expected \\[op, input\\]"),
        (_bad(normal_concat=[2, 6]), "node 6 is not an intermediate node"),
        (_bad(reduce_concat=[]), "at least one node"),
        ({"normal": []}, "missing key"),
        (_bad(normal_concat=5), "normal_concat: expected a list"),
        (_bad(reduce="sep_conv_3x3"), "reduce: expected a list"),
        (_bad(extra=1), "unknown key"),
        ([], "JSON object"),
    ],
)
def test_validation_errors(data, match: str) -> None:
    with pytest.raises(GenotypeError, match=match):
        Genotype.from_dict(data)


def test_malformed_json_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(GenotypeError, match="malformed JSON"):
        Genotype.from_json("{not json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"normal": []}')
    with pytest.raises(GenotypeError, match="bad.json"):
        load_genotype(bad)
    with pytest.raises(GenotypeError, match="bnas_xnor, pc_darts, darts_v2"):
        load_genotype("bnas_xnr")


def test_random_genotype_is_seeded_and_valid() -> None:
    a, b, c = random_genotype(1), random_genotype(1), random_genotype(2)
    assert a == b and a.digest != c.digest
    for edges in (a.normal, a.reduce):
        assert all(op in ALL_OPS and op != "none" for op, _ in edges)
        for node in range(4):  # two distinct predecessors per node
            assert edges[2 * node][1] != edges[2 * node + 1][1]
    only = random_genotype(3, ops=["sep_conv_3x3", "none"])
    assert {op for op, _ in only.normal + only.reduce} == {"sep_conv_3x3"}


def test_describe_lists_every_edge() -> None:
    text = GENOTYPES.get("bnas_xnor").describe()
    assert text.count("(") == 16 and text.startswith("normal: (skip_connect,1)")
