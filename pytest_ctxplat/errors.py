"""The exception tree of pytest-ctxplat.

Every error the package raises derives from :class:`CtxplatError`, so a caller can catch
one type::

    CtxplatError
    ├── ConfigError (ValueError)        invalid input: marker, option, YAML, trace
    │   └── config.FieldError           one key's value (located by the config layer)
    ├── ServerError                     a server under test could not be used
    │   └── ServerStartError            ... did not become ready (carries its log tail)
    ├── SLOViolation (AssertionError)   a run breached its SLO: the verdict table
    ├── ExtraMissing (ImportError)      a feature needs an optional extra
    ├── DriverError (RuntimeError)      the load driver failed (a worker process, ...)
    └── SimulatorError                  the simulator refused or failed
        ├── RequestError (ValueError)   a request it cannot serve (HTTP 400)
        ├── EngineStoppedError          it stopped before a request finished
        └── VirtualTimeDeadlock         virtual time cannot advance

The pytest plugin turns :class:`ConfigError` raised while reading markers or options
into ``pytest.UsageError``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CtxplatError",
    "DriverError",
    "EngineStoppedError",
    "ExtraMissing",
    "RequestError",
    "SLOViolation",
    "ServerError",
    "ServerStartError",
    "SimulatorError",
    "VirtualTimeDeadlock",
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


class SLOViolation(CtxplatError, AssertionError):
    """A run breached its SLO. The message is the verdict table.

    It derives from ``AssertionError`` so pytest reports it as a test failure, and
    ``@pytest.mark.xfail(raises=SLOViolation, strict=True)`` can expect it.
    """

    def __init__(self, message: str, verdict: object | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class ExtraMissing(CtxplatError, ImportError):
    """A feature needs an optional extra that is not installed; the message says which
    (e.g. ``pip install 'pytest-ctxplat[plots]'``)."""


class DriverError(CtxplatError, RuntimeError):
    """The load driver failed: a client used before it was opened, a worker process
    that did not start or report."""


class SimulatorError(CtxplatError):
    """The embedded simulator refused or failed."""


class RequestError(SimulatorError, ValueError):
    """A request the simulator cannot serve (bad tokens, too long, ...): HTTP 400."""


class EngineStoppedError(SimulatorError, RuntimeError):
    """The engine stopped (or failed) before the request finished."""


class VirtualTimeDeadlock(SimulatorError, RuntimeError):
    """Every task waits and no timer is pending: virtual time cannot advance."""
