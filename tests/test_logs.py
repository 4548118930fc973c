"""The ``bnas`` logger (bnas.logs): the core's progress lines, routed the usual way."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_search import micro_cfg

from bnas.config import config_from_dict
from bnas.logs import LOGGER, info, show_progress
from bnas.search import run_search


@pytest.fixture
def console():
    """The logger as a library leaves it (an in-process CLI test may have routed it), restored after."""
    level, handlers = LOGGER.level, list(LOGGER.handlers)
    for h in handlers:
        if not isinstance(h, logging.NullHandler):
            LOGGER.removeHandler(h)
    LOGGER.setLevel(logging.NOTSET)
    yield
    for h in list(LOGGER.handlers):
        LOGGER.removeHandler(h)
    for h in handlers:
        LOGGER.addHandler(h)
    LOGGER.setLevel(level)


def test_a_search_sends_its_lines_to_the_bnas_logger(
    cifar_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bnas"):
        res = run_search(config_from_dict(micro_cfg(cifar_root)), tmp_path / "a")
    lines = [r.getMessage() for r in caplog.records if r.name == "bnas"]
    assert any(f"derived genotype {res.genotype.digest}" in line for line in lines)
    assert any("stage 1: removed" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bnas"):
        run_search(config_from_dict(micro_cfg(cifar_root)), tmp_path / "b", log=None)  # silent
    assert not [r for r in caplog.records if r.name == "bnas"]


def test_a_library_prints_nothing_until_routed(console, capsys: pytest.CaptureFixture[str]) -> None:
    info("not routed")
    assert capsys.readouterr() == ("", "")
    show_progress()
    info("to stdout")
    show_progress(stderr=True)  # moves the one console handler
    info("to stderr")
    out, err = capsys.readouterr()
    assert out == "to stdout\n" and err == "to stderr\n"
    assert sum(not isinstance(h, logging.NullHandler) for h in LOGGER.handlers) == 1
