"""pyproject.toml's package metadata agrees with requirements.txt and with the code (nothing installed).

requirements.txt pins the environment (``pip install -r requirements.txt``, what the README and ``.ci/run``
use); pyproject.toml's ``[project]`` splits the same pins into the torch-only core (``dependencies``) and
the extras ``platform``, ``onnx`` and ``dev``. Every pin is in exactly one group, with the same version.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import os
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _pins(lines: list[str], where: str) -> dict[str, tuple[tuple[str, ...], str]]:
    """Package name -> (extras, version) of ``name[extras]==version`` requirements; anything else fails."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for line in lines:
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{where}: {line!r} is not an exact == pin"
        assert req.marker is None and req.url is None, f"{where}: {line!r} has a marker or URL"
        name = canonicalize_name(req.name)
        assert name not in out, f"{where}: {req.name} is listed twice"
        out[name] = (tuple(sorted(req.extras)), specs[0].version)
    return out


def requirements_txt() -> dict[str, tuple[tuple[str, ...], str]]:
    lines = [ln.split(" #")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    return _pins([ln for ln in lines if ln and not ln.startswith("#")], "requirements.txt")


def groups() -> dict[str, dict[str, tuple[tuple[str, ...], str]]]:
    """``core`` (the base dependencies) and every extra, each as :func:`_pins`."""
    extras = PROJECT.get("optional-dependencies", {})
    assert "core" not in extras
    raw = {"core": PROJECT["dependencies"], **extras}
    return {group: _pins(reqs, f"pyproject.toml [{group}]") for group, reqs in raw.items()}


def test_every_pin_is_in_exactly_one_group_with_the_requirements_txt_version() -> None:
    pinned = requirements_txt()
    by_group = groups()
    seen: dict[str, list[str]] = {}
    for group, pins in by_group.items():
        for name in pins:
            seen.setdefault(name, []).append(group)
    assert {n: g for n, g in seen.items() if len(g) > 1} == {}, "a package in more than one group"
    merged = {name: pin for pins in by_group.values() for name, pin in pins.items()}
    assert sorted(set(pinned) - set(merged)) == [], "in requirements.txt but in no pyproject.toml group"
    assert sorted(set(merged) - set(pinned)) == [], "in pyproject.toml but not pinned in requirements.txt"
    assert merged == pinned


def test_the_core_is_torch_only_and_the_platform_is_an_extra() -> None:
    by_group = groups()
    assert set(by_group) == {"core", "platform", "onnx", "dev"}
    assert {"torch", "torchvision", "numpy", "scipy"} <= set(by_group["core"])
    assert {"ray", "optuna", "mlflow", "pandas", "matplotlib"} <= set(by_group["platform"])
    assert {"onnx", "onnxruntime"} == set(by_group["onnx"])
    assert {"pytest", "ruff"} == set(by_group["dev"])
    assert by_group["platform"]["ray"][0] == ("default", "tune")


def test_python_requirement_admits_the_development_and_gpu_pythons() -> None:
    spec = SpecifierSet(PROJECT["requires-python"])
    assert "3.11" in spec and "3.12" in spec and "3.10" not in spec
    target = PYPROJECT["tool"]["ruff"]["target-version"]  # "py311": ruff checks the lowest allowed Python
    assert f"{target[2]}.{target[3:]}" == "3.11"


def test_metadata_fields() -> None:
    assert PROJECT["name"] == "bnas" and PROJECT["version"] and PROJECT["description"]
    assert (REPO / PROJECT["readme"]).is_file()
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"


def _declared(module: str) -> bool:
    """``module`` goes into the wheel: a declared top-level module, or inside an included package."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    package = module.rpartition(".")[0] or module
    return module in setuptools.get("py-modules", []) or any(fnmatch.fnmatch(package, p) for p in include)


def _load(module: str) -> ModuleType:
    """The checkout's ``module``: a top-level script such as run.py by its path (an installed copy, or
    another ``run`` on sys.path, must not answer), a package module by import (then checked to be ours)."""
    if "." not in module and (REPO / f"{module}.py").is_file():
        spec = importlib.util.spec_from_file_location(f"_packaging_{module}", REPO / f"{module}.py")
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded
    loaded = importlib.import_module(module)
    assert Path(loaded.__file__ or "").resolve().is_relative_to(REPO), f"{module} is not the checkout's"
    return loaded


@pytest.mark.parametrize("command", ["bnas", "bnas-study"])
def test_console_scripts_point_at_callables_of_the_package(command: str) -> None:
    target = PROJECT["scripts"][command]
    module, _, attr = target.partition(":")
    assert attr and _declared(module), f"{command} = {target!r}: module not in the package"
    func = getattr(_load(module), attr, None)
    assert callable(func), f"{command} = {target!r} is not a callable"
    inspect.signature(func).bind()  # the generated script calls it without arguments


def test_the_core_command_sees_the_environment_as_python_m_bnas_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m bnas`` gives ``main`` the process environment (``$BNAS_DATA_ROOT``); so must ``bnas``."""
    import bnas.__main__ as core_main

    module, _, attr = PROJECT["scripts"]["bnas"].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    seen: list[object] = []
    monkeypatch.setattr(core_main, "main", lambda argv=None, environ=None: seen.append(environ) or 0)
    monkeypatch.setattr(sys, "argv", ["bnas", "settings"])
    assert entry() == 0
    assert len(seen) == 1 and seen[0] is os.environ


def test_every_source_folder_is_a_package() -> None:
    """A folder of modules without ``__init__.py`` would be left out of the wheel by packages.find."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    roots = {p.split(".")[0] for p in include}
    for root in sorted(roots):
        for folder in [REPO / root, *(p for p in (REPO / root).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__" or not any(folder.glob("*.py")):
                continue
            assert (folder / "__init__.py").is_file(), f"{folder.relative_to(REPO)} has no __init__.py"
            name = ".".join(folder.relative_to(REPO).parts)
            assert any(fnmatch.fnmatch(name, p) for p in include), f"{name} is not included"


def test_the_cpu_requirements_are_requirements_txt_with_cpu_builds_of_its_torch() -> None:
    """requirements-cpu.txt (the README's CPU-only install): the same pins, torch's as ``+cpu`` builds."""
    lines = [ln.strip() for ln in (REPO / "requirements-cpu.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    options = [ln for ln in lines if ln.startswith("-")]
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu", "-r requirements.txt"]
    cpu = _pins([ln for ln in lines if not ln.startswith("-")], "requirements-cpu.txt")
    pinned = requirements_txt()
    assert set(cpu) == {"torch", "torchvision"}
    for name, (extras, version) in cpu.items():
        base, _, local = version.partition("+")
        assert local == "cpu" and (extras, base) == pinned[name], name
        # pip intersects both pins: `==X` admits the local build `X+cpu` (PEP 440), so they agree.
        assert SpecifierSet(f"=={pinned[name][1]}").contains(version), name
