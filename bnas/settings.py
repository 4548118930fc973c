"""The declarative settings layer: typed sections whose settings declare their mark, bounds and choices.

A section is a dataclass deriving from :class:`Section`; each field is a :func:`setting` that carries
its default, its source mark (``[P]`` paper, ``[C]`` released code, ``[R]`` recalled/uncertain,
``[D]`` design decision), a one-line doc and what values are valid::

    epochs_per_stage: int = setting(5, "[R]", "L: super-network epochs per stage", ge=1)
    method: str = setting("xnor", "[P]", "binarization method", choices=BINARIZATIONS)

Rules that relate several settings are small methods marked with :func:`rule`; each returns the
problem text (or None) and runs only when the settings it reads are valid on their own.

Validation happens in construction (``__post_init__``): ``ReductionConfig(rounds=0)`` and
``dataclasses.replace(cfg, rounds=0)`` raise :class:`~bnas.errors.ConfigError`. Loading a mapping
(:func:`build`) checks the whole tree first and reports *every* problem of the file in one error,
one line per problem, each naming the file, the dotted key, the value and what is valid.

Why a small layer over stdlib dataclasses rather than pydantic (or attrs): the core must run on a
GPU machine that has only torch, numpy and PyYAML installed, and the layer needs little -- type
checks with ints accepted as floats and NaN refused, bounds, choices that may be a registry, source
marks for the provenance table, and all problems of a file at once with its name in every line.
Studies of the platform (:mod:`bnas.platform.study`) are declared with the same layer.

It imports nothing from the project but :mod:`bnas.errors` and :mod:`bnas.setting_types` (the type
converters); reading YAML files and ``--set``
overrides is :mod:`bnas.config`'s part.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from bnas.errors import ConfigError, Problem, did_you_mean
from bnas.setting_types import Invalid, alternatives, compile_type, type_name

#: The provenance marks a setting may carry (see the module docstring).
MARKS = ("[P]", "[C]", "[R]", "[D]")

S = TypeVar("S", bound="Section")
F = TypeVar("F", bound=Callable[..., Any])


class Choices(Protocol):
    """What ``choices=`` accepts besides a plain list: anything that checks a value, such as a
    :class:`~bnas.registry.Registry` (its ``check`` lists the registered names)."""

    def check(self, value: Any) -> str | None: ...


class OneOf:
    """A fixed list of valid values; ``problem`` words the complaint (``{value!r}`` is filled in)."""

    def __init__(self, values: Iterable[Any], problem: str = "unknown value {value!r}") -> None:
        self.values, self.problem = tuple(values), problem

    def check(self, value: Any) -> str | None:
        if value in self.values:
            return None
        return f"{self.problem.format(value=value)}; valid: {', '.join(str(v) for v in self.values)}"


@dataclass(frozen=True)
class Declaration:
    """What a :func:`setting` declares besides its default (kept in the field's metadata)."""

    source: str
    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: Choices | None = None
    min_len: int | None = None
    unique: bool = False
    noun: str = "item"
    affects_results: bool = True

    def problems(self, value: Any, alternatives: str) -> list[str]:
        """Problems of a value that already has the right type (``alternatives``: " or null" ...)."""
        if isinstance(value, list):
            return self._list_problems(value)
        out = []
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bound = self._bound_problem(value)
            if bound:
                out.append(f"{bound}{alternatives}, got {value}")
        if self.choices is not None and value is not None:
            out += [p for p in [self.choices.check(value)] if p]
        return out

    def _bound_problem(self, v: float) -> str | None:
        low_ok = (self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
        high_ok = (self.le is None or v <= self.le) and (self.lt is None or v < self.lt)
        if low_ok and high_ok:
            return None
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            if self.gt is not None and self.lt is not None:
                return f"must lie strictly between {low} and {high}"
            left, right = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
            return f"must lie in {left}{low}, {high}{right}"
        if low is not None:
            return f"must be {'>=' if self.ge is not None else '>'} {low}"
        return f"must be {'<=' if self.le is not None else '<'} {high}"

    def _list_problems(self, value: list[Any]) -> list[str]:
        article = "an" if self.noun[:1] in "aeiou" else "a"
        out = []
        if self.min_len is not None and len(value) < self.min_len:
            many = "one" if self.min_len == 1 else str(self.min_len)
            out.append(f"needs at least {many} {self.noun}{'' if self.min_len == 1 else 's'}, got {value}")
        if self.unique and len({repr(v) for v in value}) != len(value):
            out.append(f"lists {article} {self.noun} twice: {value}")
        if self.choices is not None:
            out += [p for p in (self.choices.check(v) for v in value) if p]
        return out


def setting(
    default: Any,
    source: str,
    doc: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Choices | Sequence[Any] | None = None,
    min_len: int | None = None,
    unique: bool = False,
    noun: str = "item",
    affects_results: bool = True,
) -> Any:
    """A dataclass field declaring one setting.

    ``source`` is the provenance mark, ``doc`` one line for the settings table. ``ge``/``gt``/
    ``le``/``lt`` bound numbers (None and non-numeric alternatives such as ``"auto"`` pass);
    ``choices`` is a list of valid values or an object with ``check(value) -> problem | None``
    (a registry); for list settings it applies to every item, and ``min_len``/``unique`` (worded
    with ``noun``) to the list. ``affects_results=False`` marks settings that change where or how
    fast a run computes but not what it computes (device, threads, data location): they are left
    out of :func:`result_identity`.
    """
    if source not in MARKS:  # a programming error in a declaration, caught at import
        raise ValueError(f"source mark {source!r} is not one of {', '.join(MARKS)}")
    if choices is not None and not hasattr(choices, "check"):
        choices = OneOf(choices)
    decl = Declaration(source, doc, ge, gt, le, lt, choices, min_len, unique, noun, affects_results)
    meta = {"source": source, "doc": doc, "setting": decl}
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return field(default=default, metadata=meta)


def rule(key: str, *reads: str) -> Callable[[F], F]:
    """Mark a method of a section as a cross-setting check reported at ``key``.

    The method returns the problem text or None. It runs only when ``key`` and every setting in
    ``reads`` (dotted, relative to the section) are valid on their own.
    """

    def deco(fn: F) -> F:
        fn.__rule__ = (key, (key, *reads))  # type: ignore[attr-defined]
        return fn

    return deco


class Section:
    """Base of every declared section: validates (and normalises ints to floats) on construction."""

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise ConfigError.collect(problems, type(self).__name__)


# --------------------------------------------------------------------------------------------
# The schema of a section class, computed once
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    tp: Any
    kind: str  # "value", "section" or "sections" (a list of sections)
    section: Any  # the Section subclass for "section"/"sections"
    decl: Declaration | None
    convert: Callable[[Any], Any] | None
    alternatives: str
    field: dataclasses.Field


@dataclass(frozen=True)
class _Schema:
    fields: tuple[_Field, ...]
    names: tuple[str, ...]
    rules: tuple[tuple[str, tuple[str, ...], Callable[[Any], str | None]], ...]


def _section_class(tp: Any) -> Any:
    return tp if isinstance(tp, type) and issubclass(tp, Section) else None


@functools.cache
def schema(cls: type) -> _Schema:
    """Fields (with compiled type checks) and rules of a section class."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if _section_class(tp):
            out.append(_Field(f.name, tp, "section", tp, None, None, "", f))
        elif _section_class(item):
            out.append(_Field(f.name, tp, "sections", item, f.metadata.get("setting"), None, "", f))
        else:
            decl = f.metadata.get("setting")
            out.append(_Field(f.name, tp, "value", None, decl, compile_type(tp), alternatives(tp), f))
    rules = []
    for klass in reversed(cls.__mro__):
        for attr in vars(klass).values():
            if hasattr(attr, "__rule__"):
                key, reads = attr.__rule__
                rules.append((key, reads, attr))
    return _Schema(tuple(out), tuple(f.name for f in out), tuple(rules))


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _affected(key: str, failed: set[str]) -> bool:
    """True when ``key`` or a section above it, or a setting or item inside it, has a problem."""
    return any(
        key == k or key.startswith(k + ".") or k.startswith(key + ".") or k.startswith(key + "[")
        for k in failed
    )


def validate(obj: Any, prefix: str = "", skip: frozenset[str] = frozenset()) -> list[Problem]:
    """Every problem of a section object (nested sections included), with dotted keys.

    Converts values in place where the type allows it (an int given for a float). Keys in ``skip``
    already have a problem (reported by the loader): they are not checked again, and rules that
    read them do not run.
    """
    sch = schema(type(obj))
    problems: list[Problem] = []
    for f in sch.fields:
        key = prefix + f.name
        if key in skip:
            continue
        value = getattr(obj, f.name)
        if f.kind == "section":
            if isinstance(value, f.section):
                problems += validate(value, key + ".", skip)
            else:
                problems.append((key, f"expected a {f.section.__name__}, got {value!r}"))
            continue
        if f.kind == "sections":
            if not isinstance(value, list) or not all(isinstance(v, f.section) for v in value):
                problems.append((key, f"expected a list of {f.section.__name__}, got {value!r}"))
                continue
            for i, v in enumerate(value):
                problems += validate(v, f"{key}[{i}].", skip)
        else:
            try:
                converted = f.convert(value)
            except Invalid as e:
                problems.append((key + e.where, e.message))
                continue
            if converted is not value:
                object.__setattr__(obj, f.name, converted)
                value = converted
        if f.decl is not None:
            problems += [(key, p) for p in f.decl.problems(value, f.alternatives)]
    failed = set(skip) | {k for k, _ in problems if k}
    for key, reads, method in sch.rules:
        if any(_affected(prefix + r, failed) for r in reads):
            continue
        problem = method(obj)
        if problem:
            problems.append((prefix + key, problem))
    return problems


# --------------------------------------------------------------------------------------------
# Loading a mapping into a section: every problem of the file at once
# --------------------------------------------------------------------------------------------


def unknown_key(key: str, valid: Sequence[str]) -> str:
    """The problem text of an unknown key, suggesting the closest valid one."""
    return f"unknown key{did_you_mean(key, valid)}; valid keys here: {', '.join(valid)}"


def _draft(cls: type[S], data: Any, prefix: str, problems: list[Problem], bad: set[str]) -> S:
    """An instance of ``cls`` filled from ``data`` without validation (that comes after, on the
    whole tree). Structural problems go to ``problems``; their keys to ``bad``."""
    sch = schema(cls)
    obj = cls.__new__(cls)
    if not isinstance(data, dict):
        problems.append((prefix.rstrip(".") or None, f"expected a mapping, got {data!r}"))
        bad.add(prefix.rstrip("."))
        data = {}
    for k in data:
        if k not in sch.names:
            problems.append((f"{prefix}{k}", unknown_key(k, sch.names)))
    for f in sch.fields:
        key = prefix + f.name
        if f.name not in data:
            value = _default(f.field)
        elif f.kind == "section":
            value = _draft(f.section, data[f.name], key + ".", problems, bad)
        elif f.kind == "sections":
            raw = data[f.name]
            if isinstance(raw, list):
                value = [_draft(f.section, v, f"{key}[{i}].", problems, bad) for i, v in enumerate(raw)]
            else:
                problems.append((key, f"expected {type_name(f.tp)}, got {raw!r}"))
                bad.add(key)
                value = _default(f.field)
        else:
            value = data[f.name]
        object.__setattr__(obj, f.name, value)
    return obj


def collect(cls: type[S], data: Any) -> tuple[S, list[Problem]]:
    """Load ``data`` into ``cls``; returns the object and every problem (the object is only
    meaningful when there are none)."""
    problems: list[Problem] = []
    bad: set[str] = set()
    obj = _draft(cls, data, "", problems, bad)
    problems += validate(obj, "", frozenset(bad))
    return obj, problems


def build(cls: type[S], data: Any, source: str | None = None) -> S:
    """Load and validate ``data`` into ``cls``; all problems raise together as one
    :class:`ConfigError` naming ``source`` and the dotted keys."""
    obj, problems = collect(cls, data)
    if problems:
        raise ConfigError.collect(problems, source)
    return obj


# --------------------------------------------------------------------------------------------
# Describing sections: the provenance table and the identity of results
# --------------------------------------------------------------------------------------------


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """Rows of (dotted key, default, source mark, doc) for every setting of ``cls`` and its sections."""
    rows = []
    for f in schema(cls).fields:
        if f.kind == "section":
            rows += describe(f.section, f"{prefix}{f.name}.")
        else:
            decl = f.decl or Declaration("", "")
            rows.append((f"{prefix}{f.name}", _default(f.field), decl.source, decl.doc))
    return rows


def nonresult_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of the settings declared ``affects_results=False`` in ``cls`` and its sections."""
    out = []
    for f in schema(cls).fields:
        if f.kind == "section":
            out += nonresult_keys(f.section, f"{prefix}{f.name}.")
        elif f.decl is not None and not f.decl.affects_results:
            out.append(f"{prefix}{f.name}")
    return out


def result_identity(obj: Any) -> dict[str, Any]:
    """Flat ``{dotted key: value}`` of the settings that change what a run computes."""
    skip = set(nonresult_keys(type(obj)))
    return {k: v for k, v in flatten(dataclasses.asdict(obj)).items() if k not in skip}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys, e.g. ``{"search": {"k": 2}}`` -> ``{"search.k": 2}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
