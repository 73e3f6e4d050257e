"""Test helper: the properties of the one test case in a JUnit XML file."""

from __future__ import annotations

from pathlib import Path

from junitparser import JUnitXml, Properties, Property

__all__ = ["junit_properties"]


def junit_properties(path: Path) -> dict[str, str]:
    """``name -> value`` of the ``<property>`` elements of the file's only test case."""
    xml = JUnitXml.fromfile(str(path))
    cases = [c for suite in xml for c in suite]
    assert len(cases) == 1, [c.name for c in cases]
    return {p.name: p.value for group in cases[0].iterchildren(Properties)
            for p in group.iterchildren(Property)}
