"""pytest glue: options, markers, fixtures, terminal summary, JUnit properties.

Thin by design: everything it does is a call into the library. Heavy imports (numpy,
httpx, the simulator) happen inside hooks and fixtures, so loading the plugin is cheap.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .settings import add_options, item_key, parse_markers, read_settings, settings_key

if TYPE_CHECKING:
    from .report.result import RunResult
    from .servers.base import ServerHandle


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slo(*, ttft_p50_ms=None, ttft_p90_ms=None, ttft_p95_ms=None, ttft_p99_ms=None, "
        "itl_p99_ms=None, e2e_p95_ms=None, decode_tps_p10=None, decode_tps_p50=None, "
        "output_tokens_per_request_min=None, cache_hit_rate_min=None, "
        "cache_hit_source='request'|'designed'|'server', error_rate_max=None, "
        "goodput_min=None, good_ttft_ms=None, good_e2e_ms=None, good_decode_tps=None): "
        "service-level objectives judged by ctxplat_run; select SLO tests with -m slo.",
    )
    config.addinivalue_line(
        "markers",
        "workload(name, **overrides): the workload ctxplat_run plays: a kind ('chat') or a "
        "YAML definition name, with field overrides such as users=8, duration_s=30.",
    )
    config.addinivalue_line(
        "markers",
        "servers(*profiles): run the test once per server profile (e.g. 'sim', 'vllm-cpu'); "
        "the terminal summary compares the profiles side by side.",
    )
    config.stash[settings_key] = read_settings(config)
    config.pluginmanager.register(_Summary(), "ctxplat-summary")


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash.get(settings_key, None)
    if s is None:
        return []
    target = s.url if s.server == "url" else s.server
    return [f"ctxplat: server={target} seed={s.seed} results={s.results} "
            f"reset_cache={s.reset_cache}" + (f" sim_speedup={s.sim_speedup:g}"
                                              if s.server == "sim" else "")]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Parse every slo/workload marker now, before any server starts."""
    for item in items:
        item.stash[item_key] = parse_markers(item)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run tests across several server profiles (``servers`` marker or a comma list in
    ``--ctxplat-server``): indirect, session-scoped parametrisation, so pytest groups the
    tests by profile and each server starts once."""
    if "ctxplat_server" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("servers")
    s = metafunc.config.stash[settings_key]
    if marker is not None:
        names = [str(a) for a in marker.args]
        if not names:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: servers() needs at least "
                                    "one profile name")
        s.check_servers(names, metafunc.definition.nodeid)
    elif len(s.servers) > 1:
        names = s.servers
    else:
        return
    metafunc.parametrize("ctxplat_server", names, indirect=True, scope="session", ids=names)


@pytest.fixture(scope="session")
def ctxplat_server(request: pytest.FixtureRequest) -> Generator[ServerHandle, None, None]:
    """The server under test (simulator by default), started once per session and
    profile; parametrised per profile by the ``servers`` marker or a comma list in
    ``--ctxplat-server``."""
    from .runtime import start_server

    handle = start_server(request.config, getattr(request, "param", None))
    try:
        yield handle
    finally:
        handle.close()


class CtxplatRun:
    """Callable returned by the ``ctxplat_run`` fixture.

    ``ctxplat_run()`` plays the test's workload, writes its result, records JUnit
    properties, and raises :class:`~pytest_ctxplat.errors.SLOViolation` when the test's
    ``slo`` marker is breached (``check=False`` returns the result instead). In
    ``async def`` tests use ``await ctxplat_run.arun()``.
    """

    def __init__(self, item: pytest.Item, server: ServerHandle) -> None:
        self._item = item
        self._server = server

    def __call__(self, workload: str | None = None, *, check: bool = True,
                 **overrides: Any) -> RunResult:
        __tracebackhide__ = True
        from .api import run_sync

        return run_sync(self.arun(workload, check=check, **overrides))

    async def arun(self, workload: str | None = None, *, check: bool = True,
                   **overrides: Any) -> RunResult:
        __tracebackhide__ = True
        from .runtime import run_item

        return await run_item(self._item, self._server, workload, check, overrides)


@pytest.fixture
def ctxplat_run(request: pytest.FixtureRequest, ctxplat_server: ServerHandle) -> CtxplatRun:
    """Plays the test's ``workload`` marker against ``ctxplat_server`` and judges its
    ``slo`` marker. Returns a :class:`CtxplatRun` (call it, or ``await .arun()``)."""
    return CtxplatRun(request.node, ctxplat_server)


class _Summary:
    """Collects ctxplat figures from test reports (they travel in ``user_properties``,
    so this also works under xdist) and prints the SLO summary table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        props = {k[len("ctxplat."):]: v for k, v in report.user_properties
                 if isinstance(k, str) and k.startswith("ctxplat.")}
        if props:
            props["nodeid"] = report.nodeid
            props["outcome"] = "xfailed" if hasattr(report, "wasxfail") else report.outcome
            self.rows.append(props)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows:
            return
        from .report.table import summary_table

        terminalreporter.write_sep("=", "ctxplat SLO summary")
        terminalreporter.write_line(summary_table(self.rows))
        if len({r.get("profile") for r in self.rows}) > 1:
            from .report.compare import profile_comparison

            terminalreporter.write_sep("=", "ctxplat profile comparison")
            terminalreporter.write_line(profile_comparison(self.rows))


@pytest.hookimpl(trylast=True)
def pytest_ctxplat_start_server(config: pytest.Config, name: str) -> ServerHandle | None:
    """The built-in launchers: read profile ``name`` and start it with the launcher its
    ``launcher`` key names (the same registry plugins add launchers to)."""
    from .runtime import start_profile

    return start_profile(config, name)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """``--ctxplat-html FILE``: render the results directory (controller only)."""
    html = config.getoption("ctxplat_html")
    base = config.invocation_params.dir
    if html is None:
        html, base = config.getini("ctxplat_html"), config.rootpath
    settings = config.stash.get(settings_key, None)
    if not html or settings is None or hasattr(config, "workerinput"):
        return
    from .api import write_html_report
    from .errors import ConfigError

    try:
        path = write_html_report(settings.results, Path(base, html))
    except ConfigError as exc:
        terminalreporter.write_line(f"ctxplat: no HTML report written: {exc}")
        return
    terminalreporter.write_line(f"ctxplat: HTML report written to {path}")


def pytest_unconfigure(config: pytest.Config) -> None:
    import sys

    if "pytest_ctxplat.servers.process" in sys.modules:
        from .servers.process import kill_all

        kill_all()
