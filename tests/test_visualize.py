"""bnas.visualize: cell drawings and reduction-history plots render to valid PNGs; misuse raises."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from bnas import search_space, supernet
from bnas.genotype import GENOTYPES, random_genotype
from bnas.visualize import (
    CELL_NAMES,
    OP_COLORS,
    OP_SHORT,
    draw_cell,
    edge_endpoints,
    edge_label,
    plot_reduction_history,
    save_cell_pictures,
    save_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 2000) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"


def _history(steps: int = 4, stages: int = 3) -> list[dict]:
    """Drop records shaped like a search's history.json (both cells, every edge, every stage)."""
    ops = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5"]
    recs = []
    n_edges = len(edge_endpoints(steps))
    for s in range(1, stages + 1):
        for cell in CELL_NAMES:
            for e in range(n_edges):
                op = ops[(e + s) % len(ops)]
                left = [o for o in ops if o != op][: len(ops) - s]
                recs.append(
                    {
                        "cell_type": cell,
                        "edge": e,
                        "op": op,
                        "scores": {op: 0.1 * s + 0.01 * e, "skip_connect": 0.9},
                        "stage": s,
                        "alpha_prob": {op: 0.12},
                        "left": left,
                    }
                )
    return recs


def test_the_topology_is_the_search_space() -> None:
    # One definition of the cell: the pictures and the super-network read the same edge order.
    assert edge_endpoints is search_space.edge_endpoints is supernet.edge_endpoints
    assert CELL_NAMES == search_space.CELL_TYPES == supernet.CELL_TYPES
    for steps in (1, 2, 4, 5):
        assert len(edge_endpoints(steps)) == search_space.num_edges(steps)
        assert search_space.steps_for_edges(search_space.num_edges(steps)) == steps
    assert list(OP_COLORS) == list(OP_SHORT) == list(search_space.OPS)  # every op has its colour
    assert edge_label(0) == "c_{k-2}->0"
    assert edge_label(1) == "c_{k-1}->0"
    assert edge_label(13) == "2->3"


@pytest.mark.parametrize("name", GENOTYPES.names())
def test_cell_pictures_for_every_reference_genotype(name: str, tmp_path: Path) -> None:
    paths = save_cell_pictures(GENOTYPES.get(name), tmp_path / name)
    assert [p.name for p in paths] == ["normal.png", "reduce.png"]
    for p in paths:
        assert_png(p, min_bytes=20_000)
    assert not plt.get_fignums(), "save_cell_pictures must close its figures"


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_draw_cell_labels_every_edge_once_and_into_given_axes(cell: str) -> None:
    g = random_genotype(7)
    fig, axes = plt.subplots(1, 2)
    out = draw_cell(g, cell, ax=axes[1], title="mine")
    try:
        assert out is fig
        labels = [t.get_text() for t in axes[1].texts]
        ops = [op for op, _ in getattr(g, cell)]
        for op in set(ops):
            assert labels.count(op) == ops.count(op)
        for node in ("$c_{k-2}$", "$c_{k-1}$", "0", "1", "2", "3", "$c_{k}$"):
            assert node in labels
        assert axes[1].get_title() == "mine"
        assert not axes[0].texts
    finally:
        plt.close(fig)


def test_draw_cell_labels_do_not_overlap() -> None:
    """Every reference genotype: no edge label box intersects another label or a node label."""
    for name in GENOTYPES.names():
        for cell in CELL_NAMES:
            fig = draw_cell(GENOTYPES.get(name), cell)
            try:
                r = fig.canvas.get_renderer()
                boxes = [t.get_window_extent(r) for t in fig.axes[0].texts]
                for i in range(len(boxes)):
                    for j in range(i + 1, len(boxes)):
                        assert not boxes[i].overlaps(boxes[j]), (name, cell, i, j)
            finally:
                plt.close(fig)


def test_save_figure_closes_pyplot_figures_too(tmp_path: Path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert_png(save_figure(fig, tmp_path / "line.png"), min_bytes=1000)
    assert not plt.get_fignums()


def test_draw_cell_other_cell_sizes(tmp_path: Path) -> None:
    for steps in (2, 5):
        g = random_genotype(1, steps=steps)
        assert_png(save_figure(draw_cell(g, "reduce"), tmp_path / f"r{steps}.png"))


def test_unknown_cell_name_is_refused() -> None:
    g = GENOTYPES.get("bnas_xnor")
    with pytest.raises(ValueError, match="unknown cell 'reduction'; valid: normal, reduce"):
        draw_cell(g, "reduction")
    with pytest.raises(ValueError, match="valid: normal, reduce"):
        plot_reduction_history(_history(), "Normal")
    assert not plt.get_fignums()


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_reduction_history_picture(cell: str, tmp_path: Path) -> None:
    hist = _history()
    fig = plot_reduction_history(hist, cell)
    ax = fig.axes[0]
    # Mathtext, as in the cell drawings: rendered as c with subscript k-2, an arrow, 0.
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["$c_{k-2}$$\\to$0", "$c_{k-1}$$\\to$0"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "left"]
    texts = [t.get_text() for t in ax.texts]
    # One text per (edge, stage) record of this cell with the dropped op's score, plus the "left" column.
    assert sum(1 for r in hist if r["cell_type"] == cell) + 14 == len(texts)
    assert any(t.endswith(" 0.1") for t in texts)  # stage 1, edge 0: score 0.1
    assert_png(save_figure(fig, tmp_path / f"{cell}.png"))


def test_reduction_history_empty_and_wrong_edges(tmp_path: Path) -> None:
    # Strategy "none" removes nothing: a picture that says so, not an error.
    fig = plot_reduction_history([], "normal")
    assert any("no operation was removed" in t.get_text() for t in fig.axes[0].texts)
    assert_png(save_figure(fig, tmp_path / "empty.png"), min_bytes=1000)
    bad = [{"cell_type": "normal", "edge": 20, "op": "none", "scores": {}, "stage": 1}]
    with pytest.raises(ValueError, match="edge 20"):
        plot_reduction_history(bad, "normal", steps=4)
    plt.close("all")
