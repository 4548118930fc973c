"""Errors that every layer of the project raises; no project imports, so any module may use them."""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable, Sequence

#: One configuration problem: the dotted key it concerns (None for the file as a whole) and what is
#: wrong with it, naming the value and what would be valid.
Problem = tuple[str | None, str]


class ConfigError(ValueError):
    """Configuration problems, one line each: ``<file>: <key>: <what is wrong and what is valid>``.

    ``problems`` lists every ``(key, message)`` found together (a file is checked as a whole);
    ``key`` and ``problem`` are those of the first one, ``source`` names the file (or object).
    """

    def __init__(
        self,
        message: str,
        source: str | None = None,
        key: str | None = None,
        *,
        problems: Sequence[Problem] | None = None,
    ) -> None:
        self.source = source
        self.problems: list[Problem] = list(problems) if problems else [(key, message)]
        self.key, self.problem = self.problems[0]
        lines = [": ".join(p for p in (source, k, m) if p) for k, m in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:  # keep the problems when the error crosses processes (Ray workers)
        return (type(self).collect, (self.problems, self.source))

    @classmethod
    def collect(cls, problems: Sequence[Problem], source: str | None = None) -> ConfigError:
        """One error reporting all of ``problems`` (which must not be empty)."""
        if not problems:
            raise ValueError("ConfigError.collect needs at least one problem")
        key, message = problems[0]
        return cls(message, source, key, problems=problems)


def did_you_mean(value: object, valid: Iterable[str], n: int = 1) -> str:
    """``" (did you mean 'x'?)"`` naming the closest of ``valid`` to ``value`` (up to ``n``, by
    :func:`difflib.get_close_matches`), or ``""`` when none is close: the hint of every "unknown name"
    error of the project."""
    close = difflib.get_close_matches(str(value), list(valid), n=n)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


#: Operating-system errors a user causes and fixes: a full disk, a read-only or forbidden folder.
USER_OS_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def user_os_error(e: BaseException) -> str | None:
    """The one-line message of an :data:`USER_OS_ERRORS` error (the file, what is wrong, what to do),
    or None for any other exception."""
    if not isinstance(e, OSError) or e.errno not in USER_OS_ERRORS:
        return None
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror}; free space or choose a writable folder, then rerun (it resumes)"
