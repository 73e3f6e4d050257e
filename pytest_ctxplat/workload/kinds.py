"""The workload-kind registry: kind names -> :class:`~pytest_ctxplat.workload.spec.WorkloadSpec`
subclasses.

A registry is a value, not a process-wide table: :meth:`KindRegistry.builtin` holds the
built-in kinds, and the pytest plugin builds one per session from the built-ins plus
the kinds its ``pytest_ctxplat_workload_kinds`` hook returns. Registering a kind name
twice is an error naming both classes.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ConfigError
from .agent import CodingAgent, CodingSwarm
from .chat import ChatSessions
from .replay import TraceReplay
from .sessions import LongSessions
from .spec import WorkloadSpec
from .tierspill import TierSpill
from .workingset import GrowingWorkingSet, SinglePrompt, TargetCacheRate

__all__ = ["BUILTIN_KINDS", "KindRegistry"]

BUILTIN_KINDS: tuple[type[WorkloadSpec], ...] = (
    ChatSessions, CodingAgent, CodingSwarm, TargetCacheRate, GrowingWorkingSet,
    SinglePrompt, LongSessions, TraceReplay, TierSpill,
)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class KindRegistry:
    """Workload kinds by name."""

    def __init__(self, kinds: Iterable[type[WorkloadSpec]] = (), origin: str = "") -> None:
        self._kinds: dict[str, type[WorkloadSpec]] = {}
        self._origins: dict[str, str] = {}
        self.add(kinds, origin)

    @classmethod
    def builtin(cls) -> KindRegistry:
        return cls(BUILTIN_KINDS, "built-in")

    def add(self, kinds: Iterable[type[WorkloadSpec]], origin: str = "") -> KindRegistry:
        """Register ``kinds`` (from ``origin``, e.g. a plugin's name); returns self."""
        for cls in kinds:
            if not (isinstance(cls, type) and issubclass(cls, WorkloadSpec)):
                raise ConfigError(f"{origin or 'workload kinds'}: {cls!r} is not a "
                                  "WorkloadSpec subclass")
            name = cls.kind
            if not name:
                raise ConfigError(f"{origin or 'workload kinds'}: {_qualname(cls)} has no "
                                  "kind name (set the class attribute kind)")
            old = self._kinds.get(name)
            if old is not None and old is not cls:
                raise ConfigError(
                    f"workload kind {name!r} is registered twice: {_qualname(old)} "
                    f"({self._origins[name] or 'first'}) and {_qualname(cls)} "
                    f"({origin or 'second'})")
            self._kinds[name] = cls
            self._origins[name] = origin
        return self

    def get(self, name: str) -> type[WorkloadSpec] | None:
        return self._kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds
