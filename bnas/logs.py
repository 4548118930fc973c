"""The core's progress lines through :mod:`logging`: the ``bnas`` logger.

Searches and retrainings send each progress line as an INFO record of the ``bnas`` logger (the
default ``log`` of :func:`bnas.search.run_search` and :func:`bnas.retrain.retrain` is :func:`info`;
``log=None`` silences a run, any callable receives the lines instead). As a library the core never
configures logging: inside Python the lines go wherever the application routes ``bnas`` (nowhere until
it does, e.g. ``logging.basicConfig(level=logging.INFO)``). ``python -m bnas`` and the platform's
trials route them to the console as bare lines (:func:`show_progress`), the lines users see there.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

#: The core's logger; its children (``bnas.search``...) are free for finer routing.
LOGGER = logging.getLogger("bnas")
LOGGER.addHandler(logging.NullHandler())  # a library leaves the routing to the application


def info(message: str) -> None:
    """The core's default progress sink: ``message`` as one INFO record of :data:`LOGGER`."""
    LOGGER.info(message)


class _Console(logging.StreamHandler):
    """Bare lines on standard output or error, looked up at each record (so a redirected or captured
    ``sys.stdout`` still receives them)."""

    def __init__(self, stderr: bool) -> None:
        super().__init__()
        self.stderr = stderr
        self.setFormatter(logging.Formatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr if self.stderr else sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns one; the lookup wins
        pass


def show_progress(stderr: bool = False, level: int = logging.INFO) -> logging.Handler:
    """Route :data:`LOGGER`'s records at ``level`` and above to standard output (or error) as bare
    lines, once per process (a second call moves the existing console handler); returns it."""
    handler = next((h for h in LOGGER.handlers if isinstance(h, _Console)), None)
    if handler is None:
        handler = _Console(stderr)
        LOGGER.addHandler(handler)
    handler.stderr = stderr
    LOGGER.setLevel(level)
    return handler
