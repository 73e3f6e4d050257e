"""The pytest plugin's options and per-run state.

The options (``--ctxplat-*``, each with an ini twin), reading them into the session's
:class:`Settings` (kept in ``config.stash``) with every check done at startup, and each
test's parsed markers (:class:`ItemSpec`, in ``item.stash``). Its own module so the
plugin and the code it calls share it without importing each other; it imports nothing
heavy.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from .driver.limits import ClientLimits
    from .orchestrator.parts import Part
    from .orchestrator.sweep import SweepSpec
    from .servers.launchers import LauncherRegistry
    from .servers.profiles import ServerProfile
    from .slo import SLOSpec
    from .workload.kinds import KindRegistry
    from .workload.spec import WorkloadSpec

__all__ = ["OPTIONS", "ItemSpec", "Settings", "add_options", "item_key", "read_settings",
           "settings_key"]

OPTIONS: list[tuple[str, Literal["string", "bool"], str, Any]] = [
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
    ("sim_speedup", "string", "Simulator runs this many times faster than model time "
     "(above 2 the client's timings stray from the model's, and timing objectives may be "
     "judged invalid measurements; higher speed-ups suit hit-rate and functional "
     "checks).", "1"),
    ("timing_skew_max_ms", "string", "Measurement validity: a run whose client TTFT "
     "differs from the server's model time (the simulator reports it) by more than this "
     "many ms at p95, and by more than --ctxplat-timing-skew-max-ratio, is an invalid "
     "measurement (the slo marker's timing_skew_max_ms wins).", "100"),
    ("timing_skew_max_ratio", "string", "Measurement validity: the bound on that p95 "
     "relative to each request's model TTFT (the slo marker's timing_skew_max_ratio "
     "wins).", "1"),
    ("reset_cache", "bool", "POST /reset_prefix_cache before each run so a warm cache from "
     "an earlier test cannot inflate results.", True),
    ("model", "string", "Model name to request (default: the first from /v1/models).", None),
    ("connect_timeout", "string", "Seconds to open a connection; past it a request is a "
     "timeout.", "10"),
    ("first_byte_timeout", "string", "Seconds from sending a request to its first token "
     "chunk (also bounds the capability probe).", "45"),
    ("token_timeout", "string", "Longest silence in seconds between a stream's tokens.",
     "30"),
    ("request_timeout", "string", "Seconds a whole request may take (default: no limit).",
     None),
    ("retry_throttled", "bool", "Send a request answered 429 or 503 again after its "
     "Retry-After (at most 3 times, waiting at most 30 s).", False),
    ("max_connect_failures", "string", "Stop a run after this many connection failures "
     "in a row (0: never); the run is then judged incomplete.", "10"),
    ("html", "string", "At the end of the session, write one self-contained HTML report "
     "(plots and SLO verdicts of every result JSON in the results directory) to this file.",
     None),
    ("progress", "bool", "Show a live progress line (users, in flight, requests/s, TTFT "
     "p95, hit rate, time left) while a run lasts longer than 2 s; 'auto': only on a "
     "terminal, not with -q, not under CI (CI or CTXPLAT_CI set).", "auto"),
    ("markdown", "string", "At the end of the session, write a Markdown table of the "
     "ctxplat tests (verdict, key figures, failed objectives, baseline changes) to this "
     "file; it is also appended to $GITHUB_STEP_SUMMARY when that is set.", None),
    ("save", "string", "Save each test's result, with provenance, as baseline NAME in the "
     "baseline directory (one JSON per test; committable).", None),
    ("compare", "string", "Judge each test against its entry in baseline NAME: per-metric "
     "tolerances and a significance test; a regression fails the test.", None),
    ("baseline_dir", "string", "Directory of saved baselines (relative to the rootdir).",
     "ctxplat-baselines"),
    ("workers", "string", "Play each test's users from this many worker processes on this "
     "machine, merged into one result and verdict (a split(workers=N) marker wins).", "1"),
    ("shard", "string", "Play shard I of N of every test (I/N, e.g. 0/2): its share of the "
     "users; results carry the shard in their names; 'ctxplat merge' judges the shards "
     "together. Unset: JOB_COMPLETION_INDEX of CTXPLAT_SHARDS (a Kubernetes Indexed Job).",
     None),
    ("start_at", "string", "When the shards start their first run: epoch seconds or an ISO "
     "8601 time (unset: CTXPLAT_START_AT, else each shard starts when ready).", None),
]


@dataclasses.dataclass
class Settings:
    """Effective settings of this pytest run (options over ini values over defaults)."""

    server: str
    url: str | None
    api_key_env: str | None
    results: Path
    seed: int
    sim_speedup: float
    reset_cache: bool
    workload_dirs: list[Path]
    model: str | None
    rootdir: Path
    servers: list[str] = dataclasses.field(default_factory=list)  # --ctxplat-server a,b
    profile_dirs: list[Path] = dataclasses.field(default_factory=list)
    launchers: LauncherRegistry | None = None  # built-ins + plugins, at configure
    kinds: KindRegistry | None = None  # built-ins + plugins, at collection
    limits: ClientLimits | None = None  # timeouts, throttling retries, circuit breaker
    marker_errors: list[str] = dataclasses.field(default_factory=list)  # bad servers()
    progress: bool = False  # draw live progress (decided at configure)
    save: str | None = None  # --ctxplat-save NAME
    compare: str | None = None  # --ctxplat-compare NAME
    baseline_dir: Path | None = None
    tolerances: dict[str, Any] = dataclasses.field(default_factory=dict)  # ini overrides
    sim_set: dict[str, Any] = dataclasses.field(default_factory=dict)  # --ctxplat-sim-set
    engines: dict[str, Any] = dataclasses.field(default_factory=dict)  # url -> /version
    workers: int = 1  # --ctxplat-workers
    part: Part | None = None  # --ctxplat-shard I/N (start_at: the first run's start)
    # measurement validity bounds (ms, ratio): defaults of the slo keys timing_skew_max_*
    timing_skew: tuple[float, float] = (100.0, 1.0)

    def launcher_registry(self) -> LauncherRegistry:
        assert self.launchers is not None, "built in pytest_configure"
        return self.launchers

    def profile(self, name: str) -> ServerProfile:
        """The server profile ``name`` (``url``: the one --ctxplat-url describes)."""
        from .servers.profiles import find_profile, parse_profile

        kinds = self.launcher_registry().kinds()
        if name == "url":
            if not self.url:
                raise pytest.UsageError("server 'url' needs --ctxplat-url=URL (or the "
                                        "ctxplat_url ini option)")
            data = {"launcher": "url", "url": self.url, "api_key_env": self.api_key_env,
                    "model": self.model}
            return parse_profile(data, source="--ctxplat-url", name="url", launchers=kinds)
        return find_profile(name, self.profile_dirs, kinds)

    def check_servers(self, names: Iterable[str], where: str) -> None:
        """Read every named server profile now, before any server starts: a bad name or
        profile file is a usage error naming the file, line and key."""
        from .errors import ConfigError

        for name in names:
            try:
                self.profile(name)
            except ConfigError as exc:
                raise pytest.UsageError(f"{where}: {exc}") from None


@dataclasses.dataclass
class ItemSpec:
    slo: SLOSpec | None
    workload: WorkloadSpec | None
    sweep: SweepSpec | None = None  # the sweep marker: one run per load point
    ran: bool = False  # ctxplat_run was called (an slo marker without a run is an error)
    tolerances: dict[str, Any] = dataclasses.field(default_factory=dict)  # tolerance()
    workers: int | None = None  # split(workers=N)
    split: bool = False  # a split marker: under xdist --dist each, split across workers


settings_key = pytest.StashKey[Settings]()
item_key = pytest.StashKey[ItemSpec]()


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("ctxplat", "SLO performance tests of inference servers (ctxplat)")
    for name, ini_type, help_text, default in OPTIONS:
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
    parser.addini("ctxplat_workload_dirs", "Directories searched for workload YAML files "
                  "(before the rootdir's workloads/ and the built-ins).", type="paths",
                  default=[])
    group.addoption("--ctxplat-sim-set", action="append", default=None, metavar="KEY=VALUE",
                    help="Simulator setting for every simulator server the session starts, "
                    "repeatable: a SimConfig key (slowdown=1.3, jitter=0.05) or a dotted "
                    "hardware-profile key. Default: none.")
    parser.addini("ctxplat_sim_set", "Simulator settings KEY=VALUE, one a line (see "
                  "--ctxplat-sim-set).", type="linelist", default=[])
    parser.addini("ctxplat_tolerances", "Baseline comparison tolerances METRIC=VALUE, one a "
                  "line (e.g. ttft_ms_p95=+15%, latency=+20%, hit_rate_request=0.03).",
                  type="linelist", default=[])
    parser.addini("ctxplat_profile_dirs", "Directories searched for server profile YAML "
                  "files (after the rootdir's fixtures/servers, before the built-ins).",
                  type="paths", default=[])


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


def _collect(hook: Any) -> list[tuple[str, Any]]:
    """Each implementation's result of a hook without arguments, with its plugin's name."""
    return [(impl.plugin_name, impl.function()) for impl in hook.get_hookimpls()]


def progress_enabled(config: pytest.Config) -> bool:
    """``--ctxplat-progress`` / ``--ctxplat-no-progress`` (or the ini twin), else auto:
    on when standard output is a terminal, output is not quiet (``-q``) and no CI
    variable is set. Never in an xdist worker (it has no terminal)."""
    from .progress import progress_wanted

    if hasattr(config, "workerinput"):
        return False
    choice = config.getoption("ctxplat_progress")
    if choice is None:
        ini = config.getini("ctxplat_progress")
        choice = ini if isinstance(ini, bool) else None  # unset: the default, auto
    return progress_wanted(choice, sys.stdout, quiet=(config.getoption("verbose") or 0) < 0)


def markdown_outputs(config: pytest.Config) -> list[tuple[Path, bool]]:
    """Where the session's Markdown summary goes, each with whether to append:
    ``--ctxplat-markdown`` (relative to the current directory) or the ini value
    ``ctxplat_markdown`` (relative to the rootdir), written afresh; then
    ``$GITHUB_STEP_SUMMARY``, appended to (as GitHub Actions expects)."""
    out: list[tuple[Path, bool]] = []
    value = config.getoption("ctxplat_markdown")
    if value:
        out.append((Path(config.invocation_params.dir, value), False))
    elif value is None and config.getini("ctxplat_markdown"):
        out.append((Path(config.rootpath, config.getini("ctxplat_markdown")), False))
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        out.append((Path(step), True))
    return out


def html_output(config: pytest.Config) -> tuple[str, Path] | None:
    """Where ``--ctxplat-html`` (relative to the current directory) or the ini value
    ``ctxplat_html`` (relative to the rootdir) asks for the HTML report, with the name
    of the setting; None when neither is set."""
    value = config.getoption("ctxplat_html")
    if value is not None:
        return ("--ctxplat-html", Path(config.invocation_params.dir, value)) if value else None
    value = config.getini("ctxplat_html")
    return ("ctxplat_html (ini)", Path(config.rootpath, value)) if value else None


_LIMIT_OPTIONS = {"connect_timeout": "connect_timeout_s",
                  "first_byte_timeout": "first_byte_timeout_s",
                  "token_timeout": "token_timeout_s", "request_timeout": "request_timeout_s",
                  "max_connect_failures": "max_connect_failures"}


def _limits(config: pytest.Config) -> ClientLimits:
    """The client's limits from the options, each checked and named by its option."""
    from .driver.limits import ClientLimits
    from .errors import ConfigError

    values: dict[str, Any] = {}
    for option, key in _LIMIT_OPTIONS.items():
        if _get(config, option) is None:
            continue
        cast = int if key == "max_connect_failures" else float
        values[key] = _number(config, option, cast, 0)
    retry = config.getoption("ctxplat_retry_throttled")
    values["retry_throttled"] = bool(config.getini("ctxplat_retry_throttled")
                                     if retry is None else retry)
    try:
        return ClientLimits(**values)
    except ConfigError as exc:
        key = getattr(exc, "key", "")
        option = next((o for o, k in _LIMIT_OPTIONS.items() if k == key), key)
        raise pytest.UsageError(f"--ctxplat-{option.replace('_', '-')}: "
                                f"{getattr(exc, 'problem', exc)}") from None


def _writable(results: Path) -> Path:
    """The results directory, checked now (without creating it: a session that runs no
    ctxplat test leaves nothing behind): it, or the nearest folder above it that
    exists, must be a writable directory."""
    existing = results
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a directory" if not existing.is_dir() else "is not writable"
        raise pytest.UsageError(f"--ctxplat-results: cannot write results to {results}: "
                                f"{existing} {what}")
    return results


def read_settings(config: pytest.Config) -> Settings:
    """The session's settings from options and ini values, every value checked; the
    launchers registered by plugins; every named server profile read."""
    from .servers.launchers import LauncherRegistry

    url = _get(config, "url")
    server = _get(config, "server")
    if url and config.getoption("ctxplat_server") is None:
        server = "url"
    if server == "url" and not url:
        raise pytest.UsageError("--ctxplat-server=url needs --ctxplat-url=URL "
                                "(or the ctxplat_url ini option)")
    if url and not str(url).startswith(("http://", "https://")):
        raise pytest.UsageError(f"--ctxplat-url must start with http:// or https://, got {url!r}")
    api_key_env = _get(config, "api_key_env")
    if api_key_env and not os.environ.get(api_key_env):
        raise pytest.UsageError(f"--ctxplat-api-key-env: the environment variable "
                                f"{api_key_env} (the API key) is not set")
    servers = [n.strip() for n in str(server).split(",") if n.strip()] or ["sim"]
    launchers = LauncherRegistry.builtin()
    for origin, found in _collect(config.pluginmanager.hook.pytest_ctxplat_launchers):
        try:
            launchers.add(found or {}, origin)
        except Exception as exc:  # a ConfigError: name it as a usage error
            raise pytest.UsageError(f"pytest_ctxplat_launchers: {exc}") from None
    reset = config.getoption("ctxplat_reset_cache")
    settings = Settings(
        server=servers[0],
        url=url,
        api_key_env=api_key_env,
        results=_writable(Path(config.rootpath, _get(config, "results"))),
        seed=_number(config, "seed", int, 0),
        sim_speedup=_number(config, "sim_speedup", float, 0.001),
        reset_cache=config.getini("ctxplat_reset_cache") if reset is None else reset,
        workload_dirs=[*(Path(p) for p in config.getini("ctxplat_workload_dirs")),
                       config.rootpath / "workloads"],
        model=_get(config, "model"),
        rootdir=config.rootpath,
        servers=servers,
        profile_dirs=[config.rootpath / "fixtures" / "servers",
                      *(Path(p) for p in config.getini("ctxplat_profile_dirs"))],
        launchers=launchers,
        limits=_limits(config),
        progress=progress_enabled(config),
        workers=_number(config, "workers", int, 1),
        part=_part(config),
        timing_skew=(_number(config, "timing_skew_max_ms", float, 0.0),
                     _number(config, "timing_skew_max_ratio", float, 0.0)),
    )
    html = html_output(config)  # a bad path is a usage error now, not a surprise at the end
    if html is not None and not html[1].resolve().is_relative_to(settings.results.resolve()):
        from .errors import ConfigError  # (the results directory is created on the way)
        from .report.html import check_output

        try:
            check_output(html[1])
        except ConfigError as exc:
            raise pytest.UsageError(f"{html[0]}: {exc}") from None
    for path, append in markdown_outputs(config):  # a folder is a usage error now
        if path.is_dir():
            where = "$GITHUB_STEP_SUMMARY" if append else "--ctxplat-markdown"
            raise pytest.UsageError(f"{where}: {path} is a directory; give a file name "
                                    "(e.g. ctxplat-summary.md)")
    settings.check_servers(servers, "--ctxplat-server")
    _read_baselines(config, settings)
    return settings


def _part(config: pytest.Config) -> Part | None:
    """``--ctxplat-shard`` (else an Indexed Job's environment) with its agreed start."""
    from .errors import ConfigError
    from .orchestrator.parts import ENV_START, parse_part, parse_start_at, part_from_env

    shard, start = _get(config, "shard"), _get(config, "start_at")
    try:
        part = parse_part(shard) if shard else part_from_env()
        if start is None and os.environ.get(ENV_START):
            start = parse_start_at(os.environ[ENV_START], ENV_START)
        elif start is not None:
            start = parse_start_at(start)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if part is None or part.count == 1:
        return None
    return dataclasses.replace(part, start_at=start)


def _read_baselines(config: pytest.Config, s: Settings) -> None:
    """Baseline options, tolerances and simulator settings, checked now: an unknown
    baseline to compare with is a usage error naming it and the baselines there are."""
    from .assignments import parse_assignments
    from .errors import ConfigError
    from .report.baseline import check_name, load_index
    from .report.regression import parse_tolerances

    s.baseline_dir = Path(config.rootpath, _get(config, "baseline_dir"))
    s.save, s.compare = _get(config, "save") or None, _get(config, "compare") or None
    sim_set = config.getoption("ctxplat_sim_set")
    where = "--ctxplat-sim-set" if sim_set is not None else "ctxplat_sim_set (ini)"
    try:
        s.tolerances = parse_tolerances(parse_assignments(
            config.getini("ctxplat_tolerances"), "ctxplat_tolerances"), "ctxplat_tolerances")
        s.sim_set = parse_assignments(sim_set if sim_set is not None
                                      else config.getini("ctxplat_sim_set"), where)
        if s.compare:
            load_index(s.baseline_dir, s.compare)
        if s.save:
            check_name(s.save)
        if s.sim_set:
            _check_sim_set(s, where)
    except ConfigError as exc:
        option = "--ctxplat-compare" if "unknown baseline" in str(exc) else ""
        raise pytest.UsageError(f"{option}: {exc}" if option else str(exc)) from None


def _check_sim_set(s: Settings, where: str) -> None:
    """Every simulator profile of the session accepts the ``--ctxplat-sim-set`` keys."""
    from .servers.sim import apply_sim_set

    for name in s.servers:
        profile = s.profile(name)
        if profile.launcher == "sim":
            apply_sim_set({"seed": s.seed, **profile.sim}, s.sim_set,
                          f"{where} (server {name})")


def kind_registry(config: pytest.Config) -> KindRegistry:
    """The session's workload kinds: the built-ins plus the plugins' (built once, after
    collection has loaded every conftest)."""
    from .workload.kinds import KindRegistry

    s = config.stash[settings_key]
    if s.kinds is None:
        registry = KindRegistry.builtin()
        for origin, found in _collect(config.pluginmanager.hook.pytest_ctxplat_workload_kinds):
            registry.add(found or [], origin)
        s.kinds = registry
    return s.kinds


def parse_markers(item: pytest.Item) -> ItemSpec:
    """The test's ``slo``, ``workload`` and ``sweep`` markers, parsed and checked now
    (at collection, before any server starts); a bad one is a usage error naming the
    test (and, for a workload file, its file and line)."""
    slo_m = item.get_closest_marker("slo")
    wl_m = item.get_closest_marker("workload")
    tol_m = item.get_closest_marker("tolerance")
    sweep_m = item.get_closest_marker("sweep")
    split_m = item.get_closest_marker("split")
    if slo_m is None and wl_m is None and tol_m is None and sweep_m is None and split_m is None:
        return ItemSpec(slo=None, workload=None)
    from .errors import ConfigError
    from .orchestrator.sweep import point_overrides, sweep_spec
    from .slo import parse_slo
    from .workload.loader import load_workload

    s = item.config.stash[settings_key]
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
            wl = load_workload(wl_m.args[0], wl_m.kwargs, dirs=s.workload_dirs,
                               kinds=kind_registry(item.config), where=item.nodeid)
        sweep = None
        if sweep_m is not None:
            if sweep_m.args:
                raise ConfigError(f"{item.nodeid}: sweep() takes keyword arguments only: "
                                  "users=[...] or rates=[...]")
            sweep = sweep_spec(sweep_m.kwargs, f"{item.nodeid}: sweep")
            if wl is not None:  # a load shape that would ignore the points: say so now
                try:
                    point_overrides(wl, sweep, sweep.points[0])
                except ConfigError as exc:
                    raise ConfigError(f"{item.nodeid}: {exc}") from None
        tolerances = _tolerances(tol_m, item.nodeid)
        workers = _split_workers(split_m, item.nodeid)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    return ItemSpec(slo=slo, workload=wl, sweep=sweep, tolerances=tolerances, workers=workers,
                    split=split_m is not None)


def _split_workers(marker: pytest.Mark | None, where: str) -> int | None:
    """The ``split`` marker's ``workers`` (None: no marker, or no count given)."""
    from .errors import ConfigError

    if marker is None:
        return None
    unknown = sorted(set(marker.kwargs) - {"workers"})
    if marker.args or unknown:
        raise ConfigError(f"{where}: split() takes one keyword, workers=N; got "
                          f"{', '.join(map(repr, marker.args)) or ', '.join(unknown)}")
    workers = marker.kwargs.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ConfigError(f"{where}: split(): workers: expected an integer >= 1, got "
                          f"{workers!r}")
    return workers


def _tolerances(marker: pytest.Mark | None, where: str) -> dict[str, Any]:
    """The ``tolerance`` marker's overrides, checked (keyword arguments only)."""
    from .errors import ConfigError
    from .report.regression import parse_tolerances

    if marker is None:
        return {}
    if marker.args:
        raise ConfigError(f"{where}: tolerance() takes keyword arguments only, e.g. "
                          "tolerance(ttft_ms_p95='+15%')")
    return parse_tolerances(marker.kwargs, f"{where}: tolerance()")
