"""pytest glue: options, markers, fixtures, terminal summary, JUnit properties.

Thin by design: everything it does is a call into the library. Heavy imports (numpy,
httpx, the simulator) happen inside hooks and fixtures, so loading the plugin is cheap.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from .settings import ItemSpec, Settings, item_key, settings_key

if TYPE_CHECKING:
    from .report.result import RunResult
    from .servers.base import ServerHandle

SERVER_CHOICES = ("sim", "url")


_OPTIONS: list[tuple[str, Literal["string", "bool"], str, Any]] = [
    # (name, ini type, help, default)
    ("server", "string", "Server under test: 'sim' (embedded simulator, default), 'url' "
     "(attach to --ctxplat-url) or a server profile name (fixtures/servers/NAME.yaml, e.g. "
     "vllm-cpu); several, comma-separated, run each test once per profile.", "sim"),
    ("url", "string", "Base URL of a running OpenAI-compatible server (implies "
     "--ctxplat-server=url).", None),
    ("api_key_env", "string", "Name of the environment variable holding the API key for "
     "--ctxplat-url; the key is never written anywhere.", None),
    ("results", "string", "Directory for result JSON files and server logs.", "ctxplat-results"),
    ("seed", "string", "Seed for workloads and the simulator.", "0"),
    ("sim_speedup", "string", "Simulator runs this many times faster than model time.", "1"),
    ("reset_cache", "bool", "POST /reset_prefix_cache before each run so a warm cache from "
     "an earlier test cannot inflate results.", True),
    ("model", "string", "Model name to request (default: the first from /v1/models).", None),
    ("html", "string", "At the end of the session, write one self-contained HTML report "
     "(plots and SLO verdicts of every result JSON in the results directory) to this file.",
     None),
]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ctxplat", "SLO performance tests of inference servers (ctxplat)")
    for name, ini_type, help_text, default in _OPTIONS:
        flag = "--ctxplat-" + name.replace("_", "-")
        if ini_type == "bool":
            group.addoption(flag, action="store_true", default=None,
                            help=f"{help_text} Default: {default!r}.")
            group.addoption("--ctxplat-no-" + name.replace("_", "-"), action="store_false",
                            dest=f"ctxplat_{name}", help=f"Do not: {help_text}")
        else:
            group.addoption(flag, default=None, help=f"{help_text} Default: {default!r}.")
        parser.addini(f"ctxplat_{name}", help_text, type=ini_type,
                      default=default if default is not None else None)
    parser.addini("ctxplat_workload_dirs", "Directories searched for workload YAML files.",
                  type="paths", default=[])
    parser.addini("ctxplat_profile_dirs", "Directories searched for server profile YAML "
                  "files (after the rootdir's fixtures/servers).", type="paths", default=[])


def _get(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"ctxplat_{name}")
    return value if value is not None else config.getini(f"ctxplat_{name}")


def _number(config: pytest.Config, name: str, cast: type, lowest: float) -> Any:
    raw = _get(config, name)
    try:
        value = cast(raw)
    except (TypeError, ValueError):
        raise pytest.UsageError(
            f"--ctxplat-{name.replace('_', '-')}: expected a {cast.__name__}, got {raw!r}"
        ) from None
    if value < lowest:
        raise pytest.UsageError(f"--ctxplat-{name.replace('_', '-')} must be >= {lowest}, "
                                f"got {raw!r}")
    return value


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
    url = _get(config, "url")
    server = _get(config, "server")
    if url and config.getoption("ctxplat_server") is None:
        server = "url"
    if server == "url" and not url:
        raise pytest.UsageError("--ctxplat-server=url needs --ctxplat-url=URL "
                                "(or the ctxplat_url ini option)")
    servers = [n.strip() for n in str(server).split(",") if n.strip()] or ["sim"]
    server = servers[0]
    profile_dirs = [config.rootpath / "fixtures" / "servers",
                    *(Path(p) for p in config.getini("ctxplat_profile_dirs"))]
    if servers != ["sim"] and not _has_custom_launcher(config):
        from .runtime import check_profiles

        check_profiles(servers, profile_dirs, url, "--ctxplat-server")
    if url and not str(url).startswith(("http://", "https://")):
        raise pytest.UsageError(f"--ctxplat-url must start with http:// or https://, got {url!r}")
    reset = config.getoption("ctxplat_reset_cache")
    config.stash[settings_key] = Settings(
        server=server,
        url=url,
        api_key_env=_get(config, "api_key_env"),
        results=Path(config.rootpath, _get(config, "results")),
        seed=_number(config, "seed", int, 0),
        sim_speedup=_number(config, "sim_speedup", float, 0.001),
        reset_cache=config.getini("ctxplat_reset_cache") if reset is None else reset,
        workload_dirs=[Path(p) for p in config.getini("ctxplat_workload_dirs")],
        model=_get(config, "model"),
        servers=servers,
        profile_dirs=profile_dirs,
    )
    config.pluginmanager.register(_Summary(), "ctxplat-summary")


def _has_custom_launcher(config: pytest.Config) -> bool:
    return bool(config.pluginmanager.hook.pytest_ctxplat_start_server.get_hookimpls())


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
    from .errors import ConfigError
    from .slo import parse_slo
    from .workload.spec import load_workload, register_kind

    for kinds in config.pluginmanager.hook.pytest_ctxplat_workload_kinds():
        for cls in kinds:
            register_kind(cls)
    dirs = [*config.stash[settings_key].workload_dirs, config.rootpath / "workloads"]
    for item in items:
        slo_m = item.get_closest_marker("slo")
        wl_m = item.get_closest_marker("workload")
        try:
            slo = None
            if slo_m is not None:
                if slo_m.args:
                    raise ConfigError(f"{item.nodeid}: slo() takes keyword arguments only")
                slo = parse_slo(slo_m.kwargs, item.nodeid)
            wl = None
            if wl_m is not None:
                if len(wl_m.args) != 1 or not isinstance(wl_m.args[0], str):
                    raise ConfigError(f"{item.nodeid}: workload() takes one workload name, "
                                      "then keyword overrides")
                wl = load_workload(wl_m.args[0], wl_m.kwargs, extra_dirs=dirs,
                                   where=item.nodeid)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
        item.stash[item_key] = ItemSpec(slo=slo, workload=wl)


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
        if not _has_custom_launcher(metafunc.config):
            from .runtime import check_profiles

            check_profiles(names, s.profile_dirs, s.url, metafunc.definition.nodeid)
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

    config = request.config
    handle = start_server(config, config.stash[settings_key], getattr(request, "param", None))
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
