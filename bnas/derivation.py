"""From a (reduced) super-network to a genotype (method.md section 7, following PC-DARTS).

Per edge, each remaining operation other than ``none`` is a candidate with strength
``softmax(beta)_edge * softmax(alpha)_op`` (alpha's softmax over the edge's remaining ops, beta's over
the edges entering the node). Each intermediate node keeps its 2 strongest edges, each with its
strongest op. A reducing search leaves one op per edge and never `none` alone (the reduction and
:meth:`bnas.supernet.SuperNetwork.remove_op` refuse that), so the derived cell is exactly what the
search scored: the :class:`~bnas.supernet.Selection` returned beside the genotype runs the same ops on
the same edges.

Collapse guard (``search.max_param_free`` [D], after P-DARTS, which keeps at most 2 skip connections):
while a cell holds more parameter-free ops than the cap, the weakest parameter-free edge is replaced
by the strongest parametric candidate of its node (another op of the same edge, or an unused edge
into the node), where one is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bnas.genotype import Genotype
from bnas.search_space import CELL_TYPES, PARAM_FREE, edge_endpoints
from bnas.supernet import Selection, SuperNetwork


@dataclass
class Derivation:
    """A derived genotype, the selection that runs it on the super-network, and what the guard did."""

    genotype: Genotype
    selection: Selection
    #: Edges the ``max_param_free`` cap changed: cell type, node, the edge and op dropped, and the edge
    #: and op taken instead.
    capped: list[dict[str, Any]] = field(default_factory=list)


def _candidates(net: SuperNetwork, cell_type: str) -> list[list[tuple[float, str]]]:
    """Per edge, (strength, op) for every remaining op but ``none``, strongest first."""
    with torch.no_grad():
        probs = net.op_probabilities(cell_type)
        edge_w = net.edge_weights(cell_type)
    out = []
    for e, names in enumerate(net.edge_ops[cell_type]):
        cands = [(float(edge_w[e]) * float(p), o) for o, p in zip(names, probs[e].tolist(), strict=True)]
        out.append(sorted(((s, o) for s, o in cands if o != "none"), key=lambda c: (-c[0], c[1])))
    return out


def derive_genotype(net: SuperNetwork, max_param_free: int | None = None) -> Derivation:
    """The discrete cells of ``net`` (see the module docstring)."""
    ends = edge_endpoints(net.steps)
    cells: dict[str, list[tuple[str, int]]] = {}
    choice: dict[str, list[str | None]] = {}
    capped: list[dict[str, Any]] = []
    for t in CELL_TYPES:
        cands = _candidates(net, t)
        bad = [e for e, c in enumerate(cands) if not c]
        if bad:
            raise ValueError(f"{t} edges {bad} hold only 'none': no genotype can be derived")
        # node -> {edge: (strength, op)}
        chosen: dict[int, dict[int, tuple[float, str]]] = {}
        for node in range(2, 2 + net.steps):
            idx = [e for e, (_, dst) in enumerate(ends) if dst == node]
            top = sorted(idx, key=lambda e: (-cands[e][0][0], e))[:2]
            chosen[node] = {e: cands[e][0] for e in top}
        if max_param_free is not None:
            capped += _cap_param_free(t, chosen, cands, ends, max_param_free)
        edges: list[tuple[str, int]] = []
        sel: list[str | None] = [None] * len(cands)
        for node in range(2, 2 + net.steps):
            for e in sorted(chosen[node], key=lambda e: ends[e][0]):
                op = chosen[node][e][1]
                edges.append((op, ends[e][0]))
                sel[e] = op
        cells[t], choice[t] = edges, sel
    concat = tuple(range(2, 2 + net.steps))
    genotype = Genotype(tuple(cells["normal"]), concat, tuple(cells["reduce"]), concat)
    return Derivation(genotype, Selection(choice["normal"], choice["reduce"]), capped)


def _cap_param_free(
    cell_type: str,
    chosen: dict[int, dict[int, tuple[float, str]]],
    cands: list[list[tuple[float, str]]],
    ends: list[tuple[int, int]],
    cap: int,
) -> list[dict[str, Any]]:
    """Replace parameter-free edges of ``chosen`` (in place), weakest first, until at most ``cap`` are
    left or none has a parametric alternative in its node; returns the replacements."""
    done: list[dict[str, Any]] = []
    while True:
        free = [(s, node, e) for node, es in chosen.items() for e, (s, op) in es.items() if op in PARAM_FREE]
        if len(free) <= cap:
            return done
        for _, node, e in sorted(free):
            # Alternatives: a parametric op of this edge, or of an edge into the node not chosen yet.
            alts = [
                (s, e2, op)
                for e2, (_, dst) in enumerate(ends)
                if dst == node and (e2 == e or e2 not in chosen[node])
                for s, op in cands[e2]
                if op not in PARAM_FREE
            ]
            if alts:
                s, e2, op = max(alts, key=lambda a: (a[0], -a[1]))
                old = chosen[node].pop(e)
                chosen[node][e2] = (s, op)
                done.append({"cell_type": cell_type, "node": node, "dropped": [e, old[1]], "taken": [e2, op]})
                break
        else:
            return done
