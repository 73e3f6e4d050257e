"""The shape of the code: small modules and functions, every subpackage packaged, the
wheel's built-in data where the loaders look, one orchestrator for both targets."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pytest_ctxplat"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
HOT_PATH = "# hot path:"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_longer_than_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_longer_than_80_lines_unless_an_explained_hot_path() -> None:
    long = []
    for path in _modules():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                body = lines[node.lineno - 1: node.end_lineno]
                if len(body) > MAX_FUNCTION_LINES and not any(
                        line.strip().startswith(HOT_PATH) for line in body):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                f"({len(body)} lines)")
    assert long == []


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
    mapped = tool["package-dir"]
    for package, folder in mapped.items():
        assert (ROOT / folder / "__init__.py").is_file(), (package, folder)
        assert package in listed


def test_every_public_name_resolves_and_every_error_is_a_ctxplat_error() -> None:
    import pytest_ctxplat
    from pytest_ctxplat import errors

    for name in pytest_ctxplat.__all__:
        assert getattr(pytest_ctxplat, name) is not None, name
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.CtxplatError), name
    assert issubclass(errors.SLOViolation, AssertionError)


def test_every_exception_class_in_the_package_is_a_ctxplat_error() -> None:
    import importlib
    import inspect

    for path in _modules():
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if rel.name == "__main__":
            continue
        module = importlib.import_module(".".join(parts))
        for _name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("pytest_ctxplat"):
                assert issubclass(obj, __import__("pytest_ctxplat").CtxplatError), obj
