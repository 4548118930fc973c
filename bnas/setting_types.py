"""Setting types: each annotation of a settings section compiled once into a converter.

A converter returns the value (ints widened to float where a float is declared) or raises
:class:`Invalid` with a message that names the expected type. YAML's ``true`` is not a count, NaN is
not a number, a list reports the index of its first bad item. Used by :mod:`bnas.settings`; imports
nothing from the project.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal


class Invalid(Exception):
    """A value that does not fit its setting's type; ``where`` is the path inside it (``[2]``)."""

    def __init__(self, message: str, where: str = "") -> None:
        self.message, self.where = message, where


def is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _is_inf(v: Any) -> bool:
    return isinstance(v, float) and math.isinf(v)


def type_name(tp: Any) -> str:
    """How an annotation reads in an error message: ``int or null``, ``'real' or 'binary'``..."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict or tp is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def alternatives(tp: Any) -> str:
    """The non-numeric values a numeric union admits, as ``" or null"``/``" or auto"`` (for bounds)."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return ""
    alts = []
    for a in typing.get_args(tp):
        if a is type(None):
            alts.append("null")
        elif typing.get_origin(a) is Literal:
            alts += [str(v) for v in typing.get_args(a)]
    return "".join(f" or {a}" for a in alts)


def compile_type(tp: Any) -> Callable[[Any], Any]:
    """The converter for annotation ``tp`` (unions try each member in order)."""
    origin, args, name = typing.get_origin(tp), typing.get_args(tp), type_name(tp)

    def fail(v: Any) -> Invalid:
        shown = "NaN (not a number)" if is_nan(v) else "an infinity" if _is_inf(v) else repr(v)
        return Invalid(f"expected {name}, got {shown}")

    if origin in (typing.Union, types.UnionType):
        subs = [compile_type(a) for a in args]

        def conv(v: Any) -> Any:
            if not is_nan(v):
                for sub in subs:
                    try:
                        return sub(v)
                    except Invalid:
                        pass
            raise fail(v)

    elif origin is Literal:

        def conv(v: Any) -> Any:
            if isinstance(v, str | int) and not isinstance(v, bool) and v in args:
                return v
            raise fail(v)

    elif origin is list:
        item = compile_type(args[0])

        def conv(v: Any) -> Any:
            if not isinstance(v, list | tuple):
                raise fail(v)
            out = []
            for i, x in enumerate(v):
                try:
                    out.append(item(x))
                except Invalid as e:
                    raise Invalid(e.message, f"[{i}]{e.where}") from None
            return out

    elif origin is dict or tp is dict:

        def conv(v: Any) -> Any:
            if isinstance(v, dict):
                return v
            raise fail(v)

    elif tp is Any:

        def conv(v: Any) -> Any:
            return v

    elif tp in (type(None), bool, int, float, str):
        # bools are ints in Python, but a YAML ``true`` where a count belongs is a mistake.
        ok = {
            type(None): lambda v: v is None,
            bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            # NaN and infinities are refused: no setting means "unbounded" by .inf (null does that).
            float: lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
            str: lambda v: isinstance(v, str),
        }[tp]

        def conv(v: Any) -> Any:
            if ok(v):
                return float(v) if tp is float else v
            raise fail(v)

    else:  # pragma: no cover - a programming error in a section declaration
        raise TypeError(f"unsupported setting type {tp!r}")
    return conv
