"""The pytest side of running a workload: starting the session's server and running one
test's workload. Kept out of ``plugin.py`` so the plugin stays thin and cheap to import;
the work itself is done by the library (:mod:`pytest_ctxplat.api`)."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import pytest

from .api import arun_workload
from .errors import ConfigError, ServerError, SLOViolation
from .orchestrator import format_breach
from .servers.base import ServerHandle
from .servers.launchers import LaunchContext
from .settings import item_key, kind_registry, settings_key
from .workload.loader import load_workload, resolve_workload

if TYPE_CHECKING:
    from .report.result import RunResult

DEFAULT_WORKLOAD = "chat"


def start_server(config: pytest.Config, name: str | None = None) -> ServerHandle:
    """Start or attach to server ``name`` (default: the session's ``--ctxplat-server``)
    through the ``pytest_ctxplat_start_server`` hook (plugins first, the built-in
    launchers last)."""
    s = config.stash[settings_key]
    name = name or s.server
    handle = config.pluginmanager.hook.pytest_ctxplat_start_server(config=config, name=name)
    if handle is None:
        raise pytest.UsageError(f"no launcher started server {name!r}")
    return handle  # type: ignore[no-any-return]


def start_profile(config: pytest.Config, name: str) -> ServerHandle:
    """The built-in path: profile ``name`` started by the launcher its ``launcher`` key
    names (built-in or a plugin's)."""
    s = config.stash[settings_key]
    if name == "url" and os.environ.get("PYTEST_XDIST_WORKER"):
        warnings.warn(
            "ctxplat: several xdist workers share one server at --ctxplat-url; their "
            "loads overlap and /metrics deltas mix. Run SLO tests without -n.",
            pytest.PytestWarning, stacklevel=1)
    try:
        profile = s.profile(name)
        ctx = LaunchContext(log_dir=s.results / "logs", rootdir=s.rootdir, seed=s.seed,
                            sim_speedup=s.sim_speedup)
        return s.launcher_registry().start(profile, ctx)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def _properties(result: RunResult) -> list[tuple[str, Any]]:
    m = result.metrics
    o = result.observed
    props: dict[str, Any] = {
        "server": f"{result.target.get('launcher')}:{result.target.get('profile')}",
        "profile": result.target.get("profile"),
        "requests": m["requests"],
        "errors": m["errors"],
        "ttft_p50_ms": o.get("ttft_ms.p50"),
        "ttft_p95_ms": o.get("ttft_ms.p95"),
        "ttft_p99_ms": o.get("ttft_ms.p99"),
        "itl_p99_ms": o.get("itl_ms.p99"),
        "e2e_p95_ms": o.get("e2e_ms.p95"),
        "decode_tps_p10": o.get("decode_tps.p10"),
        "decode_tps_p50": o.get("decode_tps.p50"),
        "output_tokens_per_s": m.get("output_tokens_per_s"),
        "hit_rate_designed": result.hit_rates.designed,
        "hit_rate_request": result.hit_rates.request,
        "hit_rate_server": result.hit_rates.server,
        "hit_rate_external": result.server.external_hit_rate if result.server else None,
        "slo_passed": None if result.verdict is None else result.verdict.passed,
    }
    return [(f"ctxplat.{k}", _round(v)) for k, v in props.items()]


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


async def run_item(item: pytest.Item, server: ServerHandle, workload: str | None,
                   check: bool, overrides: dict[str, Any]) -> RunResult:
    __tracebackhide__ = True
    config = item.config
    s = config.stash[settings_key]
    spec = item.stash.get(item_key, None)
    marker_wl = spec.workload if spec else None
    try:
        if workload is not None or marker_wl is None:
            wl = load_workload(workload or DEFAULT_WORKLOAD, overrides, dirs=s.workload_dirs,
                               kinds=kind_registry(config), where=item.nodeid)
        else:
            wl = resolve_workload(marker_wl, overrides, where=item.nodeid)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{item.nodeid}: {exc}") from None
    if not server.alive():
        raise ServerError(f"the server under test is not running; log tail:\n"
                          f"{server.log_tail()}")
    result = await arun_workload(server, wl, slo=spec.slo if spec else None, seed=s.seed,
                                 model=s.model, name=item.nodeid, results_dir=s.results,
                                 reset_cache=s.reset_cache, check=False)
    item.user_properties.extend(_properties(result))
    config.pluginmanager.hook.pytest_ctxplat_result(config=config, item=item, result=result)
    if result.target.get("alive_after_run") is False:
        # The server died during the run: a failure whatever the SLO says; what was
        # measured until then is already written.
        tail = result.target.get("log_tail") or server.log_tail()
        detail = format_breach(result) if result.verdict is not None and \
            result.target.get("log_tail") else f"server log tail:\n{tail}"
        raise ServerError(f"the server under test ({result.target.get('profile')}) died "
                          f"during the run of {item.nodeid}; {result.metrics['requests']} "
                          f"requests, {result.metrics['errors']} errors; results written to "
                          f"{s.results}\n{detail}")
    if check and result.verdict is not None and not result.verdict.passed:
        raise SLOViolation(format_breach(result), result.verdict)
    return result
