"""Shared test configuration.

CI skip policy: with ``CTXPLAT_CI`` set, a skipped test fails the session unless it is
on ``skip_allowlist.txt`` (see ``skip_policy.py``).

The modules a nested pytest session (pytester's in-process runs) would import lazily are
imported here first: pytester restores ``sys.modules`` after each inner run, and a module
imported twice in one process gives two copies of its classes (an ``httpcore``
``ConnectError`` raised by one copy is not caught as the other) or fails outright (numpy
refuses a second import)."""

import anyio  # noqa: F401
import httpcore
import httpcore._backends.anyio  # noqa: F401
import httpx  # noqa: F401

import pytest_ctxplat.runtime  # noqa: F401

pytest_plugins = ["skip_policy"]
