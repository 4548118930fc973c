"""The one YAML reader of settings and study files, and ``--set`` overrides.

Plain data only (safe loading, never objects), UTF-8 only, each mapping key once; every problem is a
:class:`~bnas.errors.ConfigError` naming the file (and the line and column where YAML knows them).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from bnas.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[tuple[str | None, str]]:
    """Every mapping key given twice under ``node``, as ``(dotted key, message)``.

    Plain PyYAML keeps the later value silently, so a study with two ``trials:`` would run the one the
    reader did not look at. Keys merged in with ``<<: *anchor`` are YAML's way to override and pass.
    """
    problems: list[tuple[str | None, str]] = []
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
            problems += _duplicate_keys(value_node, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{i}]")
    return problems


def parse_yaml_text(text: str, source: str = "<text>") -> Any:
    """Plain data from YAML text (safe loading: never objects); a key given twice in a mapping is a
    :class:`ConfigError` naming it. Syntax errors propagate as :class:`yaml.YAMLError`."""
    duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    if duplicates:
        raise ConfigError.collect(duplicates, source)
    return yaml.safe_load(text)


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
