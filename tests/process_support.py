"""Test helper: find live processes by an environment variable they inherited.

Tests start servers with a unique ``NAME=VALUE`` in the environment; every child and
grandchild inherits it, so scanning ``/proc/*/environ`` finds everything a test started,
however it was spawned.
"""

from __future__ import annotations

from pathlib import Path


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment holds ``name=value``."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
