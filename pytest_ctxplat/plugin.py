"""pytest glue: options, markers, fixtures, terminal summary, JUnit properties.

Thin by design: everything it does is a call into the library. Heavy imports (numpy,
httpx, the simulator) happen inside hooks and fixtures, so loading the plugin is cheap.
"""

from __future__ import annotations

from collections.abc import Generator
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
        "goodput_min=None, good_ttft_ms=None, good_e2e_ms=None, good_decode_tps=None, "
        "effective_ttft_p50_ms=None, effective_ttft_p95_ms=None, effective_ttft_p99_ms=None, "
        "warmup_s=None, warmup_requests=0, cooldown_s=None, period_s=None, "
        "periods_met_min=None, confidence=0.95, on_inconclusive='warn'|'fail'|'rerun', "
        "max_reruns=2, repeat=1, min_sustained_users=None, knee_min_tokens=None, "
        "ttft_hit_p95_ms=None, ttft_miss_p95_ms=None, session_p95_s=None, fanout_p95_ms=None, "
        "hit_rate_gap_min={'lt_30s'|'30s_5m'|'gt_5m': rate}, tier_hit_rate_min=None "
        "({'hbm': 0.3, ...}), external_hit_rate_min=None, timing_skew_max_ms=None, "
        "timing_skew_max_ratio=None): "
        "service-level objectives judged by ctxplat_run; select SLO tests with -m slo.",
    )
    config.addinivalue_line(
        "markers",
        "workload(name, **overrides): the workload ctxplat_run plays: a kind ('chat') or a "
        "YAML definition name, with field overrides such as users=8, duration_s=30.",
    )
    config.addinivalue_line(
        "markers",
        "sweep(*, users=[...] | rates=[...]): ctxplat_run plays the workload once per "
        "point (same seed); the result carries the curve and the largest passing point.",
    )
    config.addinivalue_line(
        "markers",
        "split(*, workers=None): play this test's users from `workers` processes on this "
        "machine (one merged result and verdict); under pytest-xdist against --ctxplat-url, "
        "split the test across the xdist workers.",
    )
    config.addinivalue_line(
        "markers",
        "servers(*profiles): run the test once per server profile (e.g. 'sim', 'vllm-cpu'); "
        "the terminal summary compares the profiles side by side.",
    )
    config.addinivalue_line(
        "markers",
        "tolerance(**metric_or_family): baseline-comparison tolerances of this test, e.g. "
        "tolerance(ttft_ms_p95='+15%', hit_rate_request=0.03, latency='+20%'); used with "
        "--ctxplat-compare NAME.",
    )
    config.stash[settings_key] = read_settings(config)
    config.pluginmanager.register(_Summary(config), "ctxplat-summary")
    if not hasattr(config, "workerinput"):  # no barrier left from an earlier session
        import shutil

        shutil.rmtree(config.stash[settings_key].results / ".ctxplat-barrier",
                      ignore_errors=True)
    config.stash[_before_key] = _live_servers()
    _stop_on_sigterm(config)


_before_key = pytest.StashKey[frozenset[object]]()


def _live_servers() -> frozenset[object]:
    """The servers running now (a session nested in another, as pytester runs one,
    leaves its host's servers alone when it ends)."""
    import sys

    process = sys.modules.get("pytest_ctxplat.servers.process")
    return frozenset(process.LIVE) if process is not None else frozenset()


_sigterm_key = pytest.StashKey[bool]()


def _stop_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM (what CI timeouts send) stops the session like Ctrl-C: the run in progress
    writes its result (interrupted, judged incomplete) and pytest writes its JUnit XML.
    Left alone when something else already handles SIGTERM."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    from .interrupts import clear, note_signal

    def on_sigterm(signum: int, frame: object) -> None:
        note_signal("SIGTERM")  # before anything unwinds: the result says interrupted
        # Whatever handles Ctrl-C now handles this too: while a run is on its event loop
        # that is asyncio.Runner's handler, which cancels the run and raises
        # KeyboardInterrupt once it has unwound. A KeyboardInterrupt raised here instead
        # could land inside a uvloop transport callback, which swallows it.
        on_sigint = signal.getsignal(signal.SIGINT)
        if not callable(on_sigint):
            on_sigint = signal.default_int_handler
        on_sigint(signal.SIGINT, frame)  # type: ignore[arg-type]

    clear()
    signal.signal(signal.SIGTERM, on_sigterm)
    config.stash[_sigterm_key] = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: tell each worker the distribution mode (``--dist each`` splits the
    ``split()`` tests across the workers)."""
    node.workerinput["ctxplat_dist"] = node.config.getoption("dist", None)


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash.get(settings_key, None)
    if s is None:
        return []
    target = s.url if s.server == "url" else s.server
    lines = [f"ctxplat: server={target} seed={s.seed} results={s.results} "
             f"reset_cache={s.reset_cache}" + (f" sim_speedup={s.sim_speedup:g}"
                                               if s.server == "sim" else "")]
    if s.sim_set:
        lines.append("ctxplat: sim-set " + " ".join(f"{k}={v}" for k, v in s.sim_set.items()))
    if s.save or s.compare:
        lines.append(f"ctxplat: baselines={s.baseline_dir}" + (f" save={s.save}" if s.save
                     else "") + (f" compare={s.compare}" if s.compare else ""))
    return lines


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Parse every slo/workload marker now, before any server starts."""
    errors = config.stash[settings_key].marker_errors
    if errors:  # a bad servers() marker, found while parametrising
        raise pytest.UsageError(errors[0])
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
        try:  # reported as a one-line usage error once collection ends
            if not names:
                raise pytest.UsageError(f"{metafunc.definition.nodeid}: servers() needs at "
                                        "least one profile name")
            s.check_servers(names, metafunc.definition.nodeid)
        except pytest.UsageError as exc:
            s.marker_errors.append(str(exc))
            return
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
        from .runtime import judge, run_item

        result = run_sync(run_item(self._item, self._server, workload, overrides))
        if check:
            judge(result)  # here, not inside the event loop: a short traceback
        return result

    async def arun(self, workload: str | None = None, *, check: bool = True,
                   **overrides: Any) -> RunResult:
        __tracebackhide__ = True
        from .runtime import judge, run_item

        result = await run_item(self._item, self._server, workload, overrides)
        if check:
            judge(result)
        return result


@pytest.fixture
def ctxplat_run(request: pytest.FixtureRequest, ctxplat_server: ServerHandle) -> CtxplatRun:
    """Plays the test's ``workload`` marker against ``ctxplat_server`` and judges its
    ``slo`` marker. Returns a :class:`CtxplatRun` (call it, or ``await .arun()``)."""
    return CtxplatRun(request.node, ctxplat_server)


@pytest.fixture
def ctxplat_cold(request: pytest.FixtureRequest, ctxplat_server: ServerHandle) -> Any:
    """Resets every KV tier of ``ctxplat_server`` and verifies the cache is cold (a probe
    sent before the reset gets no cached tokens and moves no hit counter after it). When
    that cannot be shown the test errors with ``invalid setup: ...``. Returns a
    ``ColdReport``."""
    from .runtime import make_cold

    return make_cold(request.node, ctxplat_server)


class CtxplatWarm:
    """Callable returned by the ``ctxplat_warm`` fixture: ``warm(tier="hbm", *,
    workload=None, evict="auto", **overrides) -> WarmReport``; after it, ``ctxplat_run``
    does not reset the cache. ``report``: the last warm-up (None before one)."""

    def __init__(self, item: pytest.Item, server: ServerHandle) -> None:
        self._item = item
        self._server = server
        self.report: Any = None

    def __call__(self, tier: str = "hbm", *, workload: str | None = None,
                 evict: str = "auto", **overrides: Any) -> Any:
        __tracebackhide__ = True
        from .runtime import make_warm

        self.report = make_warm(self._item, self._server, tier, workload, evict, overrides)
        return self.report


@pytest.fixture
def ctxplat_warm(request: pytest.FixtureRequest,
                 ctxplat_server: ServerHandle) -> Generator[CtxplatWarm, None, None]:
    """Loads the test's workload's prefixes into a KV tier (``hbm``, ``dram``, ``nvme``,
    ``disk``, ``external``; see :class:`CtxplatWarm`). Parametrised indirectly (a tier, or
    a dict of the call's arguments) it warms during setup, so a warm state that cannot be
    made errors the test as ``invalid setup``."""
    saved = ctxplat_server.reset_cache
    warm = CtxplatWarm(request.node, ctxplat_server)
    try:
        param = getattr(request, "param", None)
        if param is not None:
            warm(**({"tier": param} if isinstance(param, str) else dict(param)))
        yield warm
    finally:
        ctxplat_server.reset_cache = saved


class _Summary:
    """Collects ctxplat figures from test reports (they travel in ``user_properties``,
    so this also works under xdist), prints the SLO summary table and writes the
    Markdown summary (``--ctxplat-markdown``, ``$GITHUB_STEP_SUMMARY``)."""

    def __init__(self, config: pytest.Config) -> None:
        self.rows: list[dict[str, Any]] = []
        self.config = config
        self.split: Any = None  # runtime.SplitMerger, once a split() test's part arrives

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        props = {k[len("ctxplat."):]: v for k, v in report.user_properties
                 if isinstance(k, str) and k.startswith("ctxplat.")}
        if "part" in props and not hasattr(self.config, "workerinput"):
            from .runtime import SplitMerger

            self.split = self.split or SplitMerger(self.config)
            self.split.add(report.nodeid, props["part"])
        if props:
            props["nodeid"] = report.nodeid
            props["outcome"] = "xfailed" if hasattr(report, "wasxfail") else report.outcome
            self.rows.append(props)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.split is not None and self.split.failed and \
                session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.split is not None:
            self.split.summary(terminalreporter)
        if not self.rows:
            return
        from .report.table import summary_table

        terminalreporter.write_sep("=", "ctxplat SLO summary")
        terminalreporter.write_line(summary_table(self.rows))
        for r in self.rows:
            if r.get("comparison") == "missing":
                terminalreporter.write_line(
                    f"ctxplat: warning: baseline {r.get('comparison.baseline')!r} has no "
                    f"entry for {r['nodeid']}: not compared (save one with --ctxplat-save)")
        from .report.table import inconclusive_lines, timing_lines

        for line in inconclusive_lines(self.rows):
            terminalreporter.write_line(line, yellow=True)
        for line in timing_lines(self.rows):
            terminalreporter.write_line(line, red=True)
        if len({r.get("profile") for r in self.rows}) > 1:
            from .report.compare import profile_comparison

            terminalreporter.write_sep("=", "ctxplat profile comparison")
            terminalreporter.write_line(profile_comparison(self.rows))
        from .runtime import write_markdown_summaries

        for line in write_markdown_summaries(terminalreporter.config, self.rows):
            terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    """Readable failures: an SLO breach, a server error or a bad workload shows its own
    message (the verdict table first), not a traceback through the event loop, in the
    terminal and in the JUnit failure text alike. A test with an ``slo`` marker that
    never called ``ctxplat_run`` fails: its objectives were not judged."""
    outcome = yield
    spec = item.stash.get(item_key, None)
    if call.excinfo is None and (spec is None or spec.slo is None):
        return  # nothing of ours to judge or shorten: other tests pay no import
    from .runtime import readable_report

    readable_report(item, call, outcome.get_result())


@pytest.hookimpl(trylast=True)
def pytest_ctxplat_start_server(config: pytest.Config, name: str) -> ServerHandle | None:
    """The built-in launchers: read profile ``name`` and start it with the launcher its
    ``launcher`` key names (the same registry plugins add launchers to)."""
    from .runtime import start_profile

    return start_profile(config, name)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """``--ctxplat-html FILE``: render the results directory (controller only). The
    report never changes the session's outcome: a problem (no results, a missing extra)
    is one line here."""
    from .settings import html_output

    html = html_output(config)
    settings = config.stash.get(settings_key, None)
    if html is None or settings is None or hasattr(config, "workerinput"):
        return
    from .api import write_html_report
    from .errors import CtxplatError
    from .report.html import plots_note

    try:
        path = write_html_report(settings.results, html[1])
    except (CtxplatError, OSError) as exc:
        terminalreporter.write_line(f"ctxplat: no HTML report written: {exc}")
        return
    note = plots_note()
    terminalreporter.write_line(f"ctxplat: HTML report written to {path}"
                                + (f" ({note})" if note else ""))


def pytest_unconfigure(config: pytest.Config) -> None:
    import signal
    import sys

    if config.stash.get(_sigterm_key, False):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if "pytest_ctxplat.servers.process" in sys.modules:
        from .servers.process import kill_all

        before: frozenset[object] = config.stash.get(_before_key, frozenset())
        kill_all(keep=before)
