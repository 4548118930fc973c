"""The DARTS search space as data: operation names, cell types and the edge topology of a cell.

Torch-free, so configuration, genotypes, visualisation and the networks share one definition
(method.md section 2 [C]): two cell types, 2 input nodes, ``steps`` intermediate nodes where
intermediate node ``i`` (0-based) takes an edge from each of the ``2 + i`` nodes before it, so a
4-node cell has 14 edges; the 8 candidate operations of DARTS / PC-DARTS.
"""

from __future__ import annotations

#: The candidate operations of every edge, in DARTS's order (``PRIMITIVES`` in DARTS/PC-DARTS) [C].
OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

#: Operations without weights [C]: a cell made of them learns nothing of its own. DARTS-style searches
#: drift towards them (the "collapse" of DARTS+, P-DARTS), and binarization makes it worse (BATS).
PARAM_FREE: frozenset[str] = frozenset({"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"})

#: The two cell types: ``normal`` keeps the resolution, ``reduce`` halves it and doubles channels.
CELL_TYPES: tuple[str, str] = ("normal", "reduce")


def num_edges(steps: int) -> int:
    """Edges of a cell with ``steps`` intermediate nodes: node i (0-based) has 2 + i inputs."""
    return sum(2 + i for i in range(steps))


def edge_endpoints(steps: int) -> list[tuple[int, int]]:
    """(source node, target node) of every edge in order; nodes 0, 1 are the cell inputs."""
    return [(j, 2 + i) for i in range(steps) for j in range(2 + i)]


def steps_for_edges(n_edges: int) -> int:
    """Smallest number of intermediate nodes whose cell has at least ``n_edges`` edges."""
    steps = 1
    while num_edges(steps) < n_edges:
        steps += 1
    return steps


def node_name(node: int) -> str:
    """Plain-text name of cell node ``node``: the inputs c_{k-2}, c_{k-1}, then intermediates 0, 1, ...

    Nodes 0 and 1 are the outputs of the two previous cells (c_{k-2}, c_{k-1} in the DARTS papers);
    node ``2 + i`` is intermediate node ``i``.
    """
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(node, str(node - 2))


def edge_label(edge: int, steps: int = 4) -> str:
    """Name of edge ``edge`` of a cell with ``steps`` intermediate nodes, e.g. ``c_{k-2}->0``."""
    src, dst = edge_endpoints(steps)[edge]
    return f"{node_name(src)}->{node_name(dst)}"
