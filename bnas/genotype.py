"""Genotypes: the discrete cell architectures that a search derives and a retraining trains.

A genotype is data: JSON with the normal and reduction cells' edge lists and the nodes their outputs
concatenate, identified by a content digest (SHA-256 of the canonical JSON). Each cell has two input
nodes (0 and 1: the outputs of the two previous cells) and ``n`` intermediate nodes (2 .. n+1); edge
``k`` of the list feeds intermediate node ``2 + k // 2`` from node ``input`` with operation ``op``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnas.registry import Registry
from bnas.search_space import OPS as ALL_OPS  # the search space owns the list of operations


class GenotypeError(ValueError):
    """An invalid genotype (unknown op, bad node index, malformed JSON)."""


Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for cell in ("normal", "reduce"):
            edges = getattr(self, cell)
            concat = getattr(self, f"{cell}_concat")
            if not edges or len(edges) % 2:
                raise GenotypeError(f"{cell}: needs two edges per intermediate node, got {len(edges)} edges")
            steps = len(edges) // 2
            for k, edge in enumerate(edges):
                if not (isinstance(edge, (tuple, list)) and len(edge) == 2):
                    raise GenotypeError(f"{cell}[{k}]: expected [op, input], got {edge!r}")
                op, inp = edge
                if op not in ALL_OPS:
                    raise GenotypeError(f"{cell}[{k}]: unknown operation {op!r}; valid: {', '.join(ALL_OPS)}")
                if op == "none":
                    raise GenotypeError(f"{cell}[{k}]: 'none' is not a valid operation in a derived cell")
                node = 2 + k // 2
                if not isinstance(inp, int) or isinstance(inp, bool) or not 0 <= inp < node:
                    raise GenotypeError(
                        f"{cell}[{k}]: input {inp!r} of node {node} must be an int in 0..{node - 1}"
                    )
            if not concat:
                raise GenotypeError(f"{cell}_concat: must name at least one node")
            for c in concat:
                if not isinstance(c, int) or not 2 <= c < 2 + steps:
                    raise GenotypeError(
                        f"{cell}_concat: node {c!r} is not an intermediate node 2..{steps + 1}"
                    )

    @property
    def steps(self) -> int:
        """Number of intermediate nodes per cell."""
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @property
    def digest(self) -> str:
        """Content identity: the first 12 hex digits of SHA-256 of the canonical JSON."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Genotype:
        if not isinstance(d, dict):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
        if missing:
            raise GenotypeError(f"missing key(s) {missing}")
        extra = [k for k in d if k not in ("normal", "normal_concat", "reduce", "reduce_concat")]
        if extra:
            raise GenotypeError(
                f"unknown key(s) {extra}; valid: normal, normal_concat, reduce, reduce_concat"
            )
        not_lists = [k for k, v in d.items() if not isinstance(v, (list, tuple))]
        if not_lists:
            raise GenotypeError(f"{', '.join(not_lists)}: expected a list")

        def edges(name: str) -> tuple[Edge, ...]:
            out = []
            for k, e in enumerate(d[name]):
                if not (isinstance(e, (list, tuple)) and len(e) == 2):
                    raise GenotypeError(f"{name}[{k}]: expected [op, input], got {e!r}")
                out.append((e[0], e[1]))
            return tuple(out)

        return cls(edges("normal"), tuple(d["normal_concat"]), edges("reduce"), tuple(d["reduce_concat"]))

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"malformed JSON: {e}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    def describe(self) -> str:
        def cell(edges: tuple[Edge, ...]) -> str:
            pairs = [
                f"({edges[i][0]},{edges[i][1]}) ({edges[i + 1][0]},{edges[i + 1][1]})"
                for i in range(0, len(edges), 2)
            ]
            return " | ".join(pairs)

        return f"normal: {cell(self.normal)}\nreduce: {cell(self.reduce)}"


def _g(normal: list[Edge], reduce: list[Edge], nc=(2, 3, 4, 5), rc=(2, 3, 4, 5)) -> Genotype:
    return Genotype(tuple(normal), tuple(nc), tuple(reduce), tuple(rc))


GENOTYPES: Registry[Genotype] = Registry("reference genotype")

# BNAS_XNOR_1, released with the paper's evaluation code [C] (method.md section 7).
GENOTYPES.add(
    "bnas_xnor",
    _g(
        [
            ("skip_connect", 1),
            ("dil_conv_3x3", 0),
            ("skip_connect", 0),
            ("dil_conv_5x5", 2),
            ("max_pool_3x3", 1),
            ("max_pool_3x3", 0),
            ("dil_conv_5x5", 4),
            ("sep_conv_3x3", 2),
        ],
        [
            ("sep_conv_3x3", 1),
            ("dil_conv_5x5", 0),
            ("skip_connect", 1),
            ("max_pool_3x3", 2),
            ("dil_conv_5x5", 0),
            ("avg_pool_3x3", 3),
            ("skip_connect", 2),
            ("dil_conv_3x3", 4),
        ],
    ),
)
# PC-DARTS CIFAR-10 cell (Xu et al., ICLR 2020; genotypes.py of the released code).
GENOTYPES.add(
    "pc_darts",
    _g(
        [
            ("sep_conv_3x3", 1),
            ("skip_connect", 0),
            ("sep_conv_3x3", 0),
            ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0),
            ("sep_conv_3x3", 1),
            ("avg_pool_3x3", 0),
            ("dil_conv_3x3", 1),
        ],
        [
            ("sep_conv_5x5", 1),
            ("max_pool_3x3", 0),
            ("sep_conv_5x5", 1),
            ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 3),
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 2),
        ],
    ),
)
# DARTS (second order) CIFAR-10 cell, DARTS_V2 (Liu et al., ICLR 2019; genotypes.py).
GENOTYPES.add(
    "darts_v2",
    _g(
        [
            ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1),
            ("skip_connect", 0),
            ("skip_connect", 0),
            ("dil_conv_3x3", 2),
        ],
        [
            ("max_pool_3x3", 0),
            ("max_pool_3x3", 1),
            ("skip_connect", 2),
            ("max_pool_3x3", 1),
            ("max_pool_3x3", 0),
            ("skip_connect", 2),
            ("skip_connect", 2),
            ("max_pool_3x3", 1),
        ],
    ),
)


def load_genotype(spec: str | Path) -> Genotype:
    """A reference name (``bnas_xnor``), a JSON file path, or a JSON string -> :class:`Genotype`."""
    s = str(spec)
    if s in GENOTYPES:
        return GENOTYPES.get(s)
    if s.lstrip().startswith("{"):
        return Genotype.from_json(s)
    path = Path(s)
    if path.is_file():
        try:
            return Genotype.from_json(path.read_text())
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None
    raise GenotypeError(
        f"{s!r} is neither a reference genotype ({', '.join(GENOTYPES.names())}) nor a JSON file"
    )


def random_genotype(seed: int, ops: list[str] | None = None, steps: int = 4) -> Genotype:
    """A uniformly random genotype from the same space (the random-search baseline of NAS papers).

    Each intermediate node picks 2 distinct predecessors and an op (never ``none``) for each.
    """
    import random

    rng = random.Random(seed)
    ops = [o for o in (ops or ALL_OPS) if o != "none"]

    def cell() -> list[Edge]:
        edges: list[Edge] = []
        for i in range(steps):
            for inp in sorted(rng.sample(range(2 + i), 2)):
                edges.append((rng.choice(ops), inp))
        return edges

    concat = tuple(range(2, 2 + steps))
    return Genotype(tuple(cell()), concat, tuple(cell()), concat)
