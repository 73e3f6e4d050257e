"""The pytest side of running a workload: starting the session's server and running one
test's workload. Kept out of ``plugin.py`` so the plugin stays thin and cheap to import;
the work itself is done by the library (:mod:`pytest_ctxplat.api`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .api import arun_workload
from .errors import ConfigError, ServerError, SLOViolation
from .orchestrator import format_breach
from .servers.attach import AttachedServer
from .servers.base import ServerHandle
from .settings import Settings, item_key, settings_key
from .workload.spec import load_workload, resolve_workload

if TYPE_CHECKING:
    from .report.result import RunResult

DEFAULT_WORKLOAD = "chat"


def check_profiles(names: list[str], dirs: list[Path], url: str | None, where: str) -> None:
    """Read every named server profile now (before any server starts); a bad name or
    profile file is a usage error naming the file, line and key."""
    from .servers.profiles import find_profile

    for name in names:
        if name == "url":
            if not url:
                raise pytest.UsageError(f"{where}: server 'url' needs --ctxplat-url=URL "
                                        "(or the ctxplat_url ini option)")
            continue
        try:
            find_profile(name, dirs)
        except ConfigError as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None


def start_server(config: pytest.Config, s: Settings, name: str | None = None) -> ServerHandle:
    """Start or attach to server ``name`` (default: the session's ``--ctxplat-server``):
    hook implementations first, then ``url`` and the server profiles (``sim`` built in)."""
    name = name or s.server
    handle = config.pluginmanager.hook.pytest_ctxplat_start_server(config=config, name=name)
    if handle is not None:
        return handle  # type: ignore[no-any-return]
    if name == "url":
        assert s.url is not None
        if os.environ.get("PYTEST_XDIST_WORKER"):
            warnings.warn(
                "ctxplat: several xdist workers share one server at --ctxplat-url; their "
                "loads overlap and /metrics deltas mix. Run SLO tests without -n.",
                pytest.PytestWarning, stacklevel=1)
        try:
            return AttachedServer(s.url, api_key_env=s.api_key_env, model=s.model)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    from .servers.launch import start_profile
    from .servers.profiles import find_profile

    try:
        profile = find_profile(name, s.profile_dirs)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    return start_profile(profile, log_dir=s.results / "logs", rootdir=config.rootpath,
                         seed=s.seed, sim_speedup=s.sim_speedup)


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
        if workload is not None:
            dirs = [*s.workload_dirs, config.rootpath / "workloads"]
            wl = load_workload(workload, overrides, extra_dirs=dirs, where=item.nodeid)
        elif marker_wl is not None:
            wl = resolve_workload(marker_wl, overrides, where=item.nodeid)
        else:
            wl = load_workload(DEFAULT_WORKLOAD, overrides, where=item.nodeid)
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
