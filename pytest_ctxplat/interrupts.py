"""The signal that is stopping the process, as the pytest adapter saw it.

A SIGTERM (a CI timeout) interrupts the run in progress like Ctrl-C; while the session
unwinds it also stops the servers it started. A run whose loop notices its server gone
before it notices the interrupt must still be reported as interrupted, not as a server
that died: the adapter notes the signal here first, and the orchestrator reads it when
it builds the result.
"""

from __future__ import annotations

__all__ = ["clear", "note_signal", "signalled"]

_SEEN: list[str] = []


def note_signal(name: str) -> None:
    """Record that ``name`` (e.g. ``SIGTERM``) is stopping the process."""
    if not _SEEN:
        _SEEN.append(name)


def signalled() -> str | None:
    """The first signal noted, or None."""
    return _SEEN[0] if _SEEN else None


def clear() -> None:
    """Forget a noted signal (a new session in the same process)."""
    _SEEN.clear()
