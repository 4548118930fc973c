"""The one YAML reader of settings and study files, and ``--set`` overrides.

Plain data only (safe loading, never objects), UTF-8 only, each mapping key once, and bounded: a file
of at most :data:`MAX_CHARS` characters, nested at most :data:`MAX_DEPTH` deep, holding at most
:data:`MAX_VALUES` values once its aliases are expanded (a few hundred bytes of nested aliases can
otherwise stand for billions of values). Every problem is a :class:`~bnas.errors.ConfigError` naming
the file (and the line and column where YAML knows them).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from bnas.errors import ConfigError

#: libyaml's safe loader where PyYAML has it (the same results, many times faster).
_SAFE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

#: [D] The largest settings or study file read, in characters (the shipped ones are under 3,000).
MAX_CHARS = 100_000
#: [D] The deepest nesting of mappings and lists (a study file needs 4).
MAX_DEPTH = 32
#: [D] The most values (scalars, mappings, lists) a file may stand for once its aliases are expanded.
MAX_VALUES = 100_000


def _check_bounds(text: str, source: str) -> None:
    """Refuse text beyond :data:`MAX_CHARS` or nested beyond :data:`MAX_DEPTH`, before composing it:
    PyYAML's composer recurses once per level, the event parser does not."""
    if len(text) > MAX_CHARS:
        raise ConfigError(
            f"is {len(text):,} characters; settings and study files are at most {MAX_CHARS:,}", source
        )
    depth = 0
    for event in yaml.parse(text, Loader=_SAFE):
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"nested more than {MAX_DEPTH} levels deep (line {event.start_mark.line + 1}); "
                    "settings and study files are shallow mappings",
                    source,
                )
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def _expanded_values(node: yaml.Node, sizes: dict[int, int], source: str) -> int:
    """How many values ``node`` stands for with every alias expanded; each node is counted once
    (``sizes``), so the count takes linear time however large the expansion."""
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            raise ConfigError(f"a recursive alias at line {node.start_mark.line + 1}", source)
        return sizes[key]
    sizes[key] = -1  # in progress: meeting it again is a cycle
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_values(child, sizes, source)
        if total > MAX_VALUES:
            raise ConfigError(
                f"holds more than {MAX_VALUES:,} values, counting each alias (*name) as the values it "
                f"stands for (line {node.start_mark.line + 1})",
                source,
            )
    sizes[key] = total
    return total


def _duplicate_keys(
    node: yaml.Node | None, path: str = "", seen: set[int] | None = None
) -> list[tuple[str | None, str]]:
    """Every mapping key given twice under ``node``, as ``(dotted key, message)``.

    Plain PyYAML keeps the later value silently, so a study with two ``trials:`` would run the one the
    reader did not look at. Keys merged in with ``<<: *anchor`` are YAML's way to override and pass.
    A node reached again through an alias is not walked twice (``seen``).
    """
    problems: list[tuple[str | None, str]] = []
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return problems
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, str] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            name = key_node.value
            dotted = f"{path}.{name}" if path else name
            said = f"line {key_node.start_mark.line + 1}" + (
                f" ({value_node.value!r})" if isinstance(value_node, yaml.ScalarNode) else ""
            )
            if name in first:
                problems.append(
                    (
                        dotted,
                        f"given twice, at {first[name]} and {said}; each key may appear once (YAML readers "
                        "would silently keep the later one)",
                    )
                )
            else:
                first[name] = said
            problems += _duplicate_keys(value_node, dotted, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{i}]", seen)
    return problems


def parse_yaml_text(text: str, source: str = "<text>") -> Any:
    """Plain data from YAML text (safe loading: never objects); a key given twice in a mapping is a
    :class:`ConfigError` naming it, and so is text beyond the bounds (module docstring). Syntax errors
    propagate as :class:`yaml.YAMLError`."""
    _check_bounds(text, source)
    # One loader composes the node graph (checked here) and then builds the data from that same graph.
    loader = _SAFE(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_values(root, {}, source)
        duplicates = _duplicate_keys(root)
        if duplicates:
            raise ConfigError.collect(duplicates, source)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file: the one loader of settings and study files.

    Plain data only (safe loading), UTF-8 text only, each mapping key once. Anything else -- a missing
    or unreadable file, bytes that are not UTF-8, malformed YAML, a duplicate key -- is a
    :class:`ConfigError` naming the file (and the line and column where YAML knows them).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", str(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot be read: {e.strerror or e}", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}, line {line}); "
            "settings and study files are YAML saved as UTF-8",
            str(path),
        ) from None
    try:
        return parse_yaml_text(text.removeprefix("\ufeff"), str(path))  # (a BOM some editors write)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"malformed YAML at {where}: {e.problem}", str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML: {e}", str(path)) from None


def parse_overrides(items: list[str] | None, source: str = "--set") -> dict[str, Any]:
    """``["search.sampling_k=4", "seed=1"]`` -> ``{"search.sampling_k": 4, "seed": 1}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}", source)
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = parse_yaml_text(v, source) if v.strip() else None
        except ConfigError as e:  # a mapping value naming a key twice: k's key path in front
            raise ConfigError.collect([(f"{k.strip()}.{key}", m) for key, m in e.problems], source) from None
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], source: str = "--set") -> dict[str, Any]:
    """Set dotted keys in a nested dict (a deep copy); unknown sections are caught by the loader."""
    data = copy.deepcopy(data or {})
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{p!r} is not a section", source, dotted)
            node = nxt
        node[parts[-1]] = value
    return data
