"""The exception tree of pytest-ctxplat.

Every error the library raises on purpose derives from :class:`CtxplatError`, so a caller
can catch one type. The pytest plugin turns :class:`ConfigError` raised while reading
markers or options into ``pytest.UsageError`` / collection errors.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CtxplatError",
    "SLOViolation",
    "ServerError",
    "ServerStartError",
]


class CtxplatError(Exception):
    """Base class of all pytest-ctxplat errors."""


class ConfigError(CtxplatError, ValueError):
    """Invalid user input: a marker, option, workload or profile. The message says where
    (file, line, test or option), what was wrong and what would be valid."""


class ServerError(CtxplatError):
    """A server under test could not be used."""


class ServerStartError(ServerError):
    """A launched server did not become ready; the message carries its log tail."""


class SLOViolation(AssertionError):
    """A run breached its SLO. The message is the verdict table.

    It derives from ``AssertionError`` so pytest reports it as a test failure, and
    ``@pytest.mark.xfail(raises=SLOViolation, strict=True)`` can expect it.
    """

    def __init__(self, message: str, verdict: object | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict
