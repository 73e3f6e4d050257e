"""``KEY=VALUE`` arguments (``--set``, ``--profile-set``, ``--slo``, ``--ctxplat-sim-set``):
one parser for the command line and the pytest options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["parse_assignments"]


def parse_assignments(items: Sequence[str], option: str) -> dict[str, Any]:
    """``["users=8", "load={ramp_s: 5}"]`` -> ``{"users": 8, "load": {"ramp_s": 5}}``:
    each value is read as YAML (numbers, booleans, lists, mappings; else a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except (yaml.YAMLError, ValueError, LookupError, AttributeError, TypeError,
                RecursionError) as exc:  # also '2024-13-45', '!!int x', '!!bool x'
            raise ConfigError(f"{option} {key}: cannot read the value {value!r}: "
                              f"{exc}") from None
    return out
