"""Pictures of cells and of a search's reduction history (matplotlib only; no Ray, no MLflow).

The one implementation used by the platform's per-trial artifacts (``cells/normal.png``,
``cells/reduce.png``) and by the study report (``python -m analysis.report``).

* :func:`draw_cell` draws one cell of a genotype as a left-to-right DAG: the two cell inputs
  ``c_{k-2}`` and ``c_{k-1}`` (genotype nodes 0 and 1), the intermediate nodes ``0 .. n-1``
  (genotype nodes 2 .. n+1) and the output ``c_{k}`` (the concatenation of ``*_concat``), every
  edge labelled with its operation and coloured by operation family, as in the DARTS papers.
* :func:`plot_reduction_history` shows, for each edge (rows) and reduction stage (columns), which
  operation the strategy removed and the score that condemned it (``history.json`` of a search;
  method.md section 6).

Every function returns the :class:`~matplotlib.figure.Figure` it drew on; pass ``ax`` to draw into
an existing axes. Nothing here selects a backend or uses pyplot's global state: figures are plain
:class:`~matplotlib.figure.Figure` objects on an Agg canvas, so drawing and saving work headless and
in long-running workers. The cell topology and node names come from :mod:`bnas.search_space`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.colors
import matplotlib.transforms
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, Patch, Rectangle

from bnas.genotype import Genotype
from bnas.search_space import CELL_TYPES, edge_endpoints, edge_label, node_name, steps_for_edges

__all__ = [
    "CELL_NAMES",
    "draw_cell",
    "edge_endpoints",
    "edge_label",
    "node_label",
    "node_name",
    "op_color",
    "plot_reduction_history",
    "save_cell_pictures",
    "save_figure",
]

CELL_NAMES = CELL_TYPES
CELL_TITLES = {"normal": "Normal cell", "reduce": "Reduction cell"}

# One hue per operation family (pooling blue, skip grey, separable conv orange, dilated conv
# green); the kernel size shades it. Colour-blind-safe enough in print, and distinct in greyscale
# between families by lightness.
OP_COLORS: dict[str, str] = {
    "none": "#c7c7c7",
    "max_pool_3x3": "#1f5fa8",
    "avg_pool_3x3": "#6fa8dc",
    "skip_connect": "#555555",
    "sep_conv_3x3": "#e08214",
    "sep_conv_5x5": "#a6470b",
    "dil_conv_3x3": "#41ab5d",
    "dil_conv_5x5": "#1b6b36",
}
OP_SHORT: dict[str, str] = {
    "none": "none",
    "max_pool_3x3": "max 3x3",
    "avg_pool_3x3": "avg 3x3",
    "skip_connect": "skip",
    "sep_conv_3x3": "sep 3x3",
    "sep_conv_5x5": "sep 5x5",
    "dil_conv_3x3": "dil 3x3",
    "dil_conv_5x5": "dil 5x5",
}
_UNKNOWN_OP_COLOR = "#9467bd"


def op_color(op: str) -> str:
    """The drawing colour of operation ``op`` (purple for a name outside the op table)."""
    return OP_COLORS.get(op, _UNKNOWN_OP_COLOR)


def _check_cell(cell: str) -> str:
    if cell not in CELL_NAMES:
        raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELL_NAMES)}")
    return cell


def node_label(node: int) -> str:
    """Display name of genotype node ``node``: 0, 1 -> c_{k-2}, c_{k-1}; 2.. -> 0.. (mathtext)."""
    if node == 0:
        return r"$c_{k-2}$"
    if node == 1:
        return r"$c_{k-1}$"
    return str(node - 2)


def _new_figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """A figure with one axes on its own Agg canvas (no pyplot, no global backend)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


# --------------------------------------------------------------------------------------------
# Cell drawing
# --------------------------------------------------------------------------------------------

_DX = 2.2  # horizontal distance between consecutive intermediate nodes (data units)
_Y_IN = 1.6  # |y| of the two cell inputs
_NODE_R = 0.36  # node radius


def _layout(steps: int) -> dict[int | str, tuple[float, float]]:
    """Node centres: inputs on the left (c_{k-2} above, c_{k-1} below), intermediates on a gentle
    zig-zag left to right, the output on the right."""
    pos: dict[int | str, tuple[float, float]] = {0: (0.0, _Y_IN), 1: (0.0, -_Y_IN)}
    for i in range(steps):
        pos[2 + i] = (_DX * (i + 1), 0.45 if i % 2 == 0 else -0.45)
    pos["out"] = (_DX * (steps + 1), 0.0)
    return pos


def _edge_rad(src: int, dst: int, other_src: int | None) -> float:
    """arc3 curvature of edge src -> dst (negative bends a left-to-right edge upwards).

    Edges from c_{k-2} arc over the top and edges from c_{k-1} under the bottom, the more the
    farther their target, so that they fan out from the input and clear the nodes they pass;
    edges between neighbours or within one zig-zag row are straight; longer hops arc over (from
    the upper row) or under (from the lower row) the nodes they skip.
    """
    i = dst - 2
    if src in (0, 1):
        return (-1.0 if src == 0 else 1.0) * (0.05 + 0.08 * i)
    hop = dst - src
    if hop <= 2:
        # Two edges from one source to one target would coincide: bend the second one.
        return 0.25 if other_src == src else 0.0
    return (-1.0 if src % 2 == 0 else 1.0) * min(0.3 + 0.05 * hop, 0.5)


def _arc_point(p0: tuple[float, float], p2: tuple[float, float], rad: float, t: float) -> tuple[float, float]:
    """Point at parameter ``t`` of matplotlib's ``arc3,rad=rad`` quadratic Bezier from p0 to p2
    (exact when the axes have equal aspect, which draw_cell sets)."""
    (x0, y0), (x2, y2) = p0, p2
    dx, dy = x2 - x0, y2 - y0
    cx, cy = (x0 + x2) / 2 + rad * dy, (y0 + y2) / 2 - rad * dx
    a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t**2
    return a * x0 + b * cx + c * x2, a * y0 + b * cy + c * y2


def _overlaps(bb: Any, others: Sequence[Any], pad: float = 2.0) -> bool:
    return any(
        bb.x0 - pad < o.x1 and bb.x1 + pad > o.x0 and bb.y0 - pad < o.y1 and bb.y1 + pad > o.y0
        for o in others
    )


def draw_cell(
    genotype: Genotype, cell: str = "normal", ax: Axes | None = None, title: str | None = None
) -> Figure:
    """Draw the ``cell`` ("normal" or "reduce") of ``genotype`` as a left-to-right DAG.

    Nodes: ``c_{k-2}``, ``c_{k-1}`` (inputs, green), ``0 .. n-1`` (intermediate, blue), ``c_{k}``
    (output, yellow; dashed grey edges from the concatenated nodes). Each of the ``2n`` edges is an
    arrow coloured by operation family and labelled with the operation; labels are slid along their
    curve until none overlaps another label or a node. ``title`` defaults to "Normal cell" /
    "Reduction cell" with the genotype digest.
    """
    _check_cell(cell)
    edges = list(getattr(genotype, cell))
    concat = list(getattr(genotype, f"{cell}_concat"))
    steps = len(edges) // 2
    own_fig = ax is None
    if own_fig:
        fig, ax = _new_figure((1.6 + 1.75 * (steps + 1), 5.0))
    else:
        fig = ax.figure
    pos = _layout(steps)
    curves = []
    for k, (op, src) in enumerate(edges):
        dst = 2 + k // 2
        rad = _edge_rad(src, dst, edges[k - 1][1] if k % 2 == 1 else None)
        curves.append((op, pos[src], pos[dst], rad))
    # Limits from the curves themselves (plus room for a label on the outermost ones).
    ys = [_arc_point(p0, p2, rad, t / 10)[1] for _, p0, p2, rad in curves for t in range(11)]
    ax.set_aspect("equal")
    ax.set_xlim(-0.8, pos["out"][0] + 0.8)
    ax.set_ylim(min(min(ys), -_Y_IN) - 0.6, max(max(ys), _Y_IN) + 0.6)
    ax.axis("off")

    # Nodes first (their boxes are obstacles for the labels).
    styles = {"in": "#b8e0b0", "mid": "#bcd7f0", "out": "#f7e08c"}
    node_texts = []
    for key, (x, y) in pos.items():
        if key == "out":
            label, face = r"$c_{k}$", styles["out"]
        else:
            label, face = node_label(key), styles["in" if key < 2 else "mid"]
        circ = Circle((x, y), _NODE_R, facecolor=face, edgecolor="#333333", lw=1.2, zorder=3)
        ax.add_patch(circ)
        node_texts.append(ax.text(x, y, label, ha="center", va="center", fontsize=11, zorder=4))

    # Concatenation edges to the output.
    for n in concat:
        ax.add_patch(
            FancyArrowPatch(
                pos[n],
                pos["out"],
                arrowstyle="-|>",
                mutation_scale=12,
                color="#b0b0b0",
                lw=0.9,
                ls=(0, (4, 3)),
                connectionstyle=f"arc3,rad={0.12 if pos[n][1] > 0 else -0.12}",
                zorder=1,
            )
        )

    # Operation edges.
    arrows = []
    for op, p0, p2, rad in curves:
        color = op_color(op)
        arrow = FancyArrowPatch(
            p0,
            p2,
            arrowstyle="-|>",
            mutation_scale=14,
            color=color,
            lw=1.8,
            connectionstyle=f"arc3,rad={rad}",
            zorder=2,
        )
        ax.add_patch(arrow)
        arrows.append((op, p0, p2, rad, color))

    if own_fig:
        fig.tight_layout()
    # Shrink arrow ends to the node rims now that the data->display scale is fixed (equal aspect
    # is applied at draw time unless forced now).
    ax.apply_aspect()
    to_px = ax.transData.transform
    r_px = abs(to_px((_NODE_R, 0))[0] - to_px((0, 0))[0])
    pts_per_px = 72.0 / fig.dpi
    for patch in ax.patches:
        if isinstance(patch, FancyArrowPatch):
            patch.shrinkA = r_px * pts_per_px + 1
            patch.shrinkB = r_px * pts_per_px + 2

    # Labels: try positions along each curve; keep the one that overlaps no label or node placed
    # so far and covers the fewest points of other edges (ties: the earliest, most central try).
    # Agg canvases (ours, and pyplot's usual ones) hand out their renderer; with another canvas
    # get_window_extent(None) finds the figure's renderer itself.
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else None
    obstacles = [t.get_window_extent(renderer) for t in node_texts]
    for x, y in pos.values():
        (x0, y0), (x1, y1) = to_px((x - _NODE_R, y - _NODE_R)), to_px((x + _NODE_R, y + _NODE_R))
        obstacles.append(matplotlib.transforms.Bbox([[x0, y0], [x1, y1]]))
    samples = [to_px([_arc_point(p0, p2, rad, t / 40) for t in range(41)]) for _, p0, p2, rad, _ in arrows]
    candidates = [0.5, 0.4, 0.6, 0.3, 0.7, 0.35, 0.65, 0.25, 0.75, 0.45, 0.55, 0.2, 0.8]
    # Place the labels of the most constrained (shortest) edges first.
    order = sorted(range(len(arrows)), key=lambda i: math.dist(arrows[i][1], arrows[i][2]))
    for i in order:
        op, p0, p2, rad, color = arrows[i]
        text = ax.text(
            0,
            0,
            op,
            ha="center",
            va="center",
            fontsize=8.5,
            color="#111111",
            zorder=5,
            bbox={
                "boxstyle": "round,pad=0.22",
                "facecolor": "white",
                "edgecolor": color,
                "lw": 1.0,
                "alpha": 0.95,
            },
        )
        best, best_cost = None, None
        for t in candidates:
            xy = _arc_point(p0, p2, rad, t)
            text.set_position(xy)
            bb = text.get_window_extent(renderer)
            cost = 1000 * _overlaps(bb, obstacles) + sum(
                int(
                    (
                        (pts[:, 0] > bb.x0) & (pts[:, 0] < bb.x1) & (pts[:, 1] > bb.y0) & (pts[:, 1] < bb.y1)
                    ).sum()
                )
                for j, pts in enumerate(samples)
                if j != i
            )
            if best_cost is None or cost < best_cost:
                best, best_cost = (xy, bb), cost
            if cost == 0:
                break
        text.set_position(best[0])
        obstacles.append(best[1])

    ax.set_title(
        title if title is not None else f"{CELL_TITLES[cell]} ({genotype.digest})", fontsize=12, pad=4
    )
    return fig


def save_cell_pictures(genotype: Genotype, out_dir: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``normal.png`` and ``reduce.png`` of ``genotype`` into ``out_dir`` (created); return
    their paths. Figures are closed afterwards (safe to call in long-running workers)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for cell in CELL_NAMES:
        fig = draw_cell(genotype, cell)
        path = out / f"{cell}.png"
        save_figure(fig, path, dpi=dpi)
        paths.append(path)
    return paths


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Save ``fig`` as a PNG (tight bounding box, white background) and close it.

    Figures drawn here belong to no one else; a figure made with pyplot (``plt.subplots``) is also
    closed in pyplot, so that long-running callers do not accumulate them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    finally:
        if getattr(fig.canvas, "manager", None) is not None:
            import matplotlib.pyplot as plt  # only pyplot's own figures have a manager

            plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Reduction history
# --------------------------------------------------------------------------------------------


def plot_reduction_history(
    history: list[dict[str, Any]], cell: str, ax: Axes | None = None, steps: int | None = None
) -> Figure:
    """Which operation left each edge at each reduction stage, and its score.

    ``history`` is a search's ``history.json``: drop records ``{cell_type, edge, op, scores{op: S},
    stage, ...}``. Rows are the edges of ``cell`` ("normal" or "reduce"; labelled ``c_{k-2}->0``
    ...), columns the stages; each cell of the grid is coloured by the removed operation and shows
    its short name and ``scores[op]`` (the likelihood S of the performance strategy, the
    probability for ``alpha``, the UCB score for ``ucb``). A last column, framed, shows what was
    left on each edge after its last removal. ``steps`` (intermediate nodes) defaults
    to 4, or more when the history names higher edge indices.
    """
    _check_cell(cell)
    recs = [r for r in history if r.get("cell_type") == cell]
    max_edge = max((int(r["edge"]) for r in recs), default=-1)
    steps = steps if steps is not None else max(4, steps_for_edges(max_edge + 1))
    ends = edge_endpoints(steps)
    n_edges = len(ends)
    if max_edge >= n_edges:
        raise ValueError(f"history names edge {max_edge}, but a cell with {steps} nodes has {n_edges} edges")
    stages = sorted({int(r["stage"]) for r in recs})
    own_fig = ax is None
    if own_fig:
        fig, ax = _new_figure((max(4.0, 1.15 * (len(stages) + 1) + 2.6), 0.36 * n_edges + 1.6))
    else:
        fig = ax.figure
    ax.set_title(f"{CELL_TITLES[cell]}: operation removed per edge and stage (score)", fontsize=11)
    ax.set_yticks(range(n_edges))
    # Mathtext node names (as in the cell drawings), not the plain-text c_{k-2} of edge_label.
    ax.set_yticklabels([f"{node_label(i)}$\\to${node_label(j)}" for i, j in ends], fontsize=8)
    ax.set_ylim(n_edges - 0.5, -0.5)
    if not stages:
        ax.set_xticks([])
        ax.set_xlim(-0.5, 0.5)
        ax.text(
            0, (n_edges - 1) / 2, "no operation was removed\n(strategy 'none'?)", ha="center", va="center"
        )
        if own_fig:
            fig.tight_layout()
        return fig
    col = {s: i for i, s in enumerate(stages)}
    ax.set_xlim(-0.5, len(stages) - 0.5)
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels([str(s) for s in stages], fontsize=9)
    ax.set_xlabel("reduction stage")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    used = []
    for r in recs:
        e, s, op = int(r["edge"]), col[int(r["stage"])], r["op"]
        score = (r.get("scores") or {}).get(op)
        color = op_color(op)
        ax.add_patch(Rectangle((s - 0.48, e - 0.46), 0.96, 0.92, facecolor=color, edgecolor="white"))
        rgb = matplotlib.colors.to_rgb(color)
        light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.6
        txt = OP_SHORT.get(op, op) + ("" if score is None else f" {score:.3g}")
        ax.text(s, e, txt, ha="center", va="center", fontsize=7, color="black" if light else "white")
        if op not in used:
            used.append(op)
    # Last column: what survived on each edge (``left`` of its latest record).
    last: dict[int, dict[str, Any]] = {}
    for r in recs:
        if "left" in r and (
            int(r["edge"]) not in last or int(r["stage"]) >= int(last[int(r["edge"])]["stage"])
        ):
            last[int(r["edge"])] = r
    if last:
        kc = len(stages)
        for e, r in last.items():
            left = list(r["left"])
            txt = OP_SHORT.get(left[0], left[0]) if len(left) == 1 else f"{len(left)} ops"
            face = op_color(left[0]) if len(left) == 1 else "white"
            ax.add_patch(
                Rectangle((kc - 0.48, e - 0.46), 0.96, 0.92, facecolor=face, edgecolor="#333333", lw=1.2)
            )
            rgb = matplotlib.colors.to_rgb(face)
            light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.6
            ax.text(
                kc,
                e,
                txt,
                ha="center",
                va="center",
                fontsize=7,
                fontweight="bold",
                color="black" if light else "white",
            )
        ax.set_xlim(-0.5, kc + 0.5)
        ax.set_xticks(range(kc + 1))
        ax.set_xticklabels([str(s) for s in stages] + ["left"], fontsize=9)
    order = [o for o in OP_COLORS if o in used] + [o for o in used if o not in OP_COLORS]
    ax.legend(
        handles=[Patch(facecolor=op_color(o), label=o) for o in order],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        title="removed op",
        title_fontsize=8,
    )
    if own_fig:
        fig.tight_layout()
    return fig
