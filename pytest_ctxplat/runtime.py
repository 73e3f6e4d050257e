"""The pytest side of running a workload: starting the session's server and running one
test's workload. Kept out of ``plugin.py`` so the plugin stays thin and cheap to import;
the work itself is done by the library (:mod:`pytest_ctxplat.api`)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .api import arun_workload, asweep, run_sync
from .errors import ConfigError, ServerError, SLOViolation
from .orchestrator import format_breach
from .orchestrator.http import check_server
from .progress import LiveProgress
from .report.markdown import changes_line, objective_fields
from .report.records import ERROR_OUTCOMES
from .report.stats import outcome_counts
from .servers.base import ServerHandle
from .servers.launchers import LaunchContext
from .settings import item_key, kind_registry, settings_key
from .slo import SLOSpec
from .workload.loader import load_workload, resolve_workload

if TYPE_CHECKING:
    from .orchestrator.parts import Part
    from .report.result import RunResult

DEFAULT_WORKLOAD = "chat"


def start_server(config: pytest.Config, name: str | None = None) -> ServerHandle:
    """Start or attach to server ``name`` (default: the session's ``--ctxplat-server``)
    through the ``pytest_ctxplat_start_server`` hook (plugins first, the built-in
    launchers last)."""
    s = config.stash[settings_key]
    name = name or s.server
    handle: ServerHandle | None = config.pluginmanager.hook.pytest_ctxplat_start_server(
        config=config, name=name)
    if handle is None:
        raise pytest.UsageError(f"no launcher started server {name!r}")
    try:  # fail fast: no test plays against a server that cannot serve it
        run_sync(check_server(handle, s.model, s.limits))
    except BaseException:
        handle.close()
        raise
    return handle


def start_profile(config: pytest.Config, name: str) -> ServerHandle:
    """The built-in path: profile ``name`` started by the launcher its ``launcher`` key
    names (built-in or a plugin's)."""
    s = config.stash[settings_key]
    if name == "url" and hasattr(config, "workerinput"):  # an xdist worker
        warnings.warn(
            "ctxplat: several xdist workers share one server at --ctxplat-url; their "
            "loads overlap and /metrics deltas mix. Run SLO tests without -n, or mark a "
            "test split() and use --dist each to split its users across the workers.",
            pytest.PytestWarning, stacklevel=1)
    try:
        profile = s.profile(name)
        ctx = LaunchContext(log_dir=s.results / "logs", rootdir=s.rootdir, seed=s.seed,
                            sim_speedup=s.sim_speedup, sim_set=s.sim_set)
        return s.launcher_registry().start(profile, ctx)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def properties(result: RunResult) -> list[tuple[str, Any]]:
    """The JUnit properties of a run: key figures, the count of each outcome class, the
    verdict, each objective's target, observed value, interval (where judged with one),
    verdict and result, and the changes against a baseline (where compared). A figure
    that was not measured is left out (never written as "None")."""
    m = result.metrics
    o = result.observed
    v = result.verdict
    requests, errors, outcomes = m["requests"], m["errors"], m.get("outcomes") or {}
    if result.window.get("runs", 1) > 1:  # repeat / reruns: the requests of every run
        outcomes = outcome_counts(result.records)
        requests, errors = len(result.records), sum(outcomes[k] for k in ERROR_OUTCOMES)
    props: dict[str, Any] = {
        "server": f"{result.target.get('launcher')}:{result.target.get('profile')}",
        "profile": result.target.get("profile"),
        "requests": requests,
        "errors": errors,
        "runs": result.window.get("runs"),
        "error_rate": o.get("error_rate"),
        **{f"outcome.{k}": n for k, n in outcomes.items() if n},
        "ttft_p50_ms": o.get("ttft_ms.p50"),
        "ttft_p95_ms": o.get("ttft_ms.p95"),
        "ttft_p99_ms": o.get("ttft_ms.p99"),
        "effective_ttft_p95_ms": o.get("effective_ttft_ms.p95"),
        "itl_p99_ms": o.get("itl_ms.p99"),
        "e2e_p95_ms": o.get("e2e_ms.p95"),
        "decode_tps_p10": o.get("decode_tps.p10"),
        "decode_tps_p50": o.get("decode_tps.p50"),
        "output_tokens_per_s": m.get("output_tokens_per_s"),
        "hit_rate_designed": result.hit_rates.designed,
        "hit_rate_request": result.hit_rates.request,
        "hit_rate_server": result.hit_rates.server,
        "hit_rate_external": result.server.external_hit_rate if result.server else None,
        "slo_passed": None if v is None else v.passed,
        "verdict": None if v is None else v.status,
        "incomplete": result.incomplete,
        **_comparison_properties(result.comparison),
        "requests_judged": result.window.get("judged"),
        "confidence": None if v is None else v.confidence,
        "on_inconclusive": None if result.slo is None else result.slo.on_inconclusive,
        "capacity_sustained_users": o.get("capacity.sustained_users"),
        **_timing_properties(result.timing),
    }
    if result.comparison:  # judged against a baseline: what changed, in one line
        props["baseline_changes"] = changes_line(result.comparison)
    for c in v.checks if v is not None else ():
        props.update({f"slo.{c.key}.{k}": x for k, x in objective_fields(c).items()})
    return [(f"ctxplat.{k}", _round(x)) for k, x in props.items() if x is not None]


def with_timing_bounds(slo: SLOSpec | None, bounds: tuple[float, float]) -> SLOSpec | None:
    """``slo`` with the session's measurement-validity bounds where its marker set none
    (``--ctxplat-timing-skew-max-ms`` / ``-ratio``)."""
    if slo is None:
        return None
    ms, ratio = bounds
    return dataclasses.replace(
        slo, timing_skew_max_ms=ms if slo.timing_skew_max_ms is None else slo.timing_skew_max_ms,
        timing_skew_max_ratio=ratio if slo.timing_skew_max_ratio is None
        else slo.timing_skew_max_ratio)


def _timing_properties(timing: Any) -> dict[str, Any]:
    """Client-minus-server TTFT (report.timing): per request against the server's model
    time (p50, p95, and whether the measurement is valid), or the histogram means."""
    if not timing:
        return {}
    if "ttft_skew_ms" in timing:
        return {"ttft_skew_p50_ms": timing["ttft_skew_ms"]["p50"],
                "ttft_skew_p95_ms": timing["ttft_skew_ms"]["p95"],
                "e2e_skew_p95_ms": timing["e2e_skew_ms"]["p95"],
                "timing_valid": timing["valid"], "timing_invalid": timing["reason"]}
    return {"ttft_skew_mean_ms": timing.get("ttft_skew_ms_mean")}


def _comparison_properties(comparison: Any) -> dict[str, Any]:
    """The baseline comparison's verdict (``pass``, ``regression``, ``missing``), its
    baseline and the metrics that regressed."""
    if not comparison:
        return {}
    regressed = [r["metric"] for r in comparison.get("rows", ()) if r["verdict"] == "REGRESSION"]
    return {"comparison": comparison.get("status"), "comparison.baseline":
            comparison.get("baseline"), "comparison.regressed": ",".join(regressed) or None}


def against_baselines(item: pytest.Item, server: ServerHandle, result: RunResult) -> RunResult:
    """``--ctxplat-save``: store the result in the baseline; ``--ctxplat-compare``: judge
    it against its entry there (the comparison travels in the result and its JSON). A
    test missing from the baseline is compared with nothing and says so (``missing``);
    a run that did not fill its window is not saved."""
    import dataclasses

    from .report.baseline import compare_to_baseline, entry_from_result, save_entry
    from .report.result import write_json
    from .servers.version import engine_version

    s = item.config.stash[settings_key]
    if not (s.save or s.compare) or s.baseline_dir is None:
        return result
    if server.url not in s.engines:
        s.engines[server.url] = engine_version(server)
    engine = s.engines[server.url]
    spec = item.stash.get(item_key, None)
    if s.compare:
        tolerances = {**s.tolerances, **(spec.tolerances if spec else {})}
        found = compare_to_baseline(result, s.baseline_dir, s.compare, tolerances=tolerances,
                                    engine=engine, rootdir=s.rootdir)
        comparison = found.to_dict() if found is not None else {
            "baseline": s.compare, "test": item.nodeid, "status": "missing", "passed": True}
        result = dataclasses.replace(result, comparison=comparison)
        write_json(result, s.results)
    if s.save and not (result.incomplete or result.interrupted):  # never a partial run
        save_entry(s.baseline_dir, s.save, entry_from_result(result, engine=engine,
                                                             rootdir=s.rootdir))
    return result


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


async def run_item(item: pytest.Item, server: ServerHandle, workload: str | None,
                   overrides: dict[str, Any]) -> RunResult:
    """Play the test's workload and record it (JSON, JUnit properties, result hook);
    a dead server is a :class:`ServerError`. Judging is the caller's (:func:`judge`)."""
    __tracebackhide__ = True
    config = item.config
    s = config.stash[settings_key]
    spec = item.stash.get(item_key, None)
    if spec is not None:
        spec.ran = True
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
    common: dict[str, Any] = {"seed": s.seed, "model": s.model,
                              "reset_cache": s.reset_cache, "limits": s.limits}
    slo = with_timing_bounds(spec.slo if spec else None, s.timing_skew)
    workers, part = xdist_split(item, s.workers, s.part)
    if spec is not None and spec.sweep is not None and (part is not None or workers > 1):
        raise ConfigError(f"{item.nodeid}: a sweep is played whole: run it without "
                          "--ctxplat-shard, --ctxplat-workers or split(workers=N)")
    if spec is not None and spec.sweep is not None:
        try:
            result = await asweep(wl, users=spec.sweep.users, rates=spec.sweep.rates,
                                  server=server, slo=slo, name=item.nodeid,
                                  results_dir=s.results, **common)
        except ConfigError as exc:
            raise ConfigError(f"{item.nodeid}: {exc}") from None
    else:
        display = live_progress(item)
        try:
            result = await arun_workload(server, wl, slo=slo, name=item.nodeid,
                                         results_dir=s.results, check=False,
                                         on_progress=display, workers=workers, part=part,
                                         **common)
        finally:
            if display is not None:
                display.close()
            if s.part is not None and s.part.start_at is not None:  # the first run only
                s.part = dataclasses.replace(s.part, start_at=None)
    result = against_baselines(item, server, result)
    item.user_properties.extend(properties(result))
    if part is not None and xdist_worker(config) is not None:  # the controller merges it
        item.user_properties.append(("ctxplat.part", f"{part.index}/{part.count}"))
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
    return result


def live_progress(item: pytest.Item) -> LiveProgress | None:
    """The test's live progress display (None: progress is off). It writes with output
    capture suspended, on a line of its own, and puts the cursor back where pytest left
    it when it closes."""
    config = item.config
    if not config.stash[settings_key].progress:
        return None
    capman = config.pluginmanager.getplugin("capturemanager")
    terminal = config.pluginmanager.getplugin("terminalreporter")
    column = None
    if terminal is not None:
        writer = config.get_terminal_writer()
        column = lambda: writer.width_of_current_line  # noqa: E731
    return LiveProgress(item.name, force_terminal=True, column=column,
                        guard=None if capman is None else capman.global_and_fixture_disabled)


def judge(result: RunResult) -> None:
    """Raise :class:`SLOViolation` (the verdict table first) when ``result`` did not
    pass its objectives, or did not fill its measurement window; a regression against
    the ``--ctxplat-compare`` baseline raises its subclass ``BaselineRegression`` (the
    comparison table first, then any SLO breach)."""
    __tracebackhide__ = True
    breach = result.verdict is not None and not result.verdict.passed
    comparison = result.comparison
    if comparison is not None and not comparison.get("passed", True):
        from .report.regression import BaselineRegression, comparison_text

        text = comparison_text(comparison)
        raise BaselineRegression(text + ("\n\n" + format_breach(result) if breach else ""),
                                 result.verdict)
    if breach:
        raise SLOViolation(format_breach(result), result.verdict)


def write_markdown_summaries(config: pytest.Config, rows: list[dict[str, Any]]) -> list[str]:
    """Write the Markdown summary of ``rows`` where ``--ctxplat-markdown`` and
    ``$GITHUB_STEP_SUMMARY`` ask (controller only); returns one line per file for the
    terminal. A file that cannot be written is reported, never fails the session."""
    from .report.markdown import markdown_summary, write_markdown
    from .settings import markdown_outputs

    outputs = [] if hasattr(config, "workerinput") else markdown_outputs(config)
    if not outputs:
        return []
    text = markdown_summary(rows)
    lines = []
    for path, append in outputs:
        try:
            write_markdown(path, text, append=append)
        except OSError as exc:
            lines.append(f"ctxplat: no Markdown summary written to {path}: {exc}")
        else:
            lines.append(f"ctxplat: Markdown summary {'appended' if append else 'written'} "
                         f"to {path}")
    return lines


def readable_report(item: pytest.Item, call: pytest.CallInfo[None],
                    report: pytest.TestReport) -> None:
    """Shorten a ctxplat failure's report to its message (see the plugin's
    ``pytest_runtest_makereport``); fail a passed test whose ``slo`` marker was never
    judged."""
    excinfo = call.excinfo
    if excinfo is not None and report.failed and \
            excinfo.errisinstance((SLOViolation, ServerError, ConfigError)):
        report.longrepr = f"{excinfo.typename}: {excinfo.value}"
        return
    spec = item.stash.get(item_key, None)
    if call.when == "call" and report.passed and spec is not None and spec.slo is not None \
            and spec.slo.objectives() and not spec.ran and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} has an slo marker but never called ctxplat_run: "
                           "its objectives were not judged")


def make_cold(item: pytest.Item, server: ServerHandle) -> Any:
    """The ``ctxplat_cold`` fixture's work: reset every tier of ``server`` and verify it
    is cold (raises ``InvalidSetup``: the test errors as an invalid setup)."""
    from .orchestrator.cache_state import make_cold as cold

    __tracebackhide__ = True
    if not server.alive():
        raise ServerError(f"the server under test is not running; log tail:\n"
                          f"{server.log_tail()}")
    return run_sync(cold(server, seed=item.config.stash[settings_key].seed))


def make_warm(item: pytest.Item, server: ServerHandle, tier: str, workload: str | None,
              evict: str, overrides: dict[str, Any]) -> Any:
    """The ``ctxplat_warm`` fixture's work: load the test's workload (or ``workload``)
    prefixes into ``tier`` under the test's run name and seed."""
    from .orchestrator.cache_state import make_warm as warm

    __tracebackhide__ = True
    s = item.config.stash[settings_key]
    spec = item.stash.get(item_key, None)
    marker_wl = spec.workload if spec else None
    try:
        if workload is not None or marker_wl is None:
            wl = load_workload(workload or DEFAULT_WORKLOAD, overrides, dirs=s.workload_dirs,
                               kinds=kind_registry(config=item.config), where=item.nodeid)
        else:
            wl = resolve_workload(marker_wl, overrides, where=item.nodeid)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{item.nodeid}: {exc}") from None
    return run_sync(warm(server, wl, tier, name=item.nodeid, seed=s.seed, evict=evict))


# -- pytest-xdist: one test split across the xdist workers ------------------------------
BARRIER_TIMEOUT_S = 3600.0  # the others may be playing other tests first
BARRIER_MARGIN_S = 2.0


def xdist_worker(config: pytest.Config) -> tuple[int, int] | None:
    """``(index, count)`` of this xdist worker; None: not one."""
    info = getattr(config, "workerinput", None)
    if info is None:
        return None
    return int(str(info["workerid"]).removeprefix("gw")), int(info["workercount"])


def xdist_split(item: pytest.Item, workers: int, part: Part | None
                ) -> tuple[int, Part | None]:
    """The test's worker count and part. A ``split()`` test under xdist against
    ``--ctxplat-url``: with ``--dist each``, this worker's part of it, starting at a
    barrier shared through the results directory; else all of it, split across as many
    processes as there are xdist workers. Under ``--dist each`` any other test is played
    whole by the first worker only (skipped by the others)."""
    s = item.config.stash[settings_key]
    spec = item.stash.get(item_key, None)
    if spec is not None and spec.workers is not None:
        workers = spec.workers
    worker = xdist_worker(item.config)
    if worker is None or s.server != "url":
        return workers, part
    each = getattr(item.config, "workerinput", {}).get("ctxplat_dist") == "each"
    if spec is None or not spec.split:
        if each and worker[0] != 0:
            pytest.skip("--dist each: a test without split() is played whole by gw0")
        return workers, part
    if part is not None:
        raise ConfigError(f"{item.nodeid}: split() under xdist with --ctxplat-shard: a "
                          "shard is one process; drop -n or the shard")
    if not each:
        return max(workers, worker[1]), None
    from .orchestrator.parts import Part

    return 1, Part(worker[0], worker[1], _barrier(s.results, item.nodeid, *worker))


def _barrier(results: Path, nodeid: str, index: int, count: int) -> float:
    """Every xdist worker writes its arrival time for ``nodeid`` and waits for the
    others'; all return the same start: the latest arrival plus a margin."""
    import re
    import time

    folder = results / ".ctxplat-barrier" / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{index}.tmp").write_text(repr(time.time()))
    (folder / f"{index}.tmp").replace(folder / str(index))
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while True:
        arrived = [folder / str(i) for i in range(count) if (folder / str(i)).exists()]
        if len(arrived) == count:
            return max(float(p.read_text()) for p in arrived) + BARRIER_MARGIN_S
        if time.monotonic() > deadline:
            raise ConfigError(f"{nodeid}: {len(arrived)} of {count} xdist workers reached "
                              f"this split() test within {BARRIER_TIMEOUT_S:.0f} s: under "
                              "--dist each every worker runs it (deselect nothing per worker)")
        time.sleep(0.05)


class SplitMerger:
    """On the xdist controller: collects the parts of each ``split()`` test from the
    workers' reports, merges them into one result (written beside the parts) and one
    verdict, shows it in the terminal summary; :attr:`failed` fails the session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.parts: dict[str, set[int]] = {}
        self.merged: list[RunResult] = []
        self.errors: list[str] = []

    def add(self, nodeid: str, part: str) -> None:
        """Part ``"I/N"`` of ``nodeid`` was played; merge once all N were."""
        from .orchestrator.parts import parse_part

        played = parse_part(part, f"{nodeid}: ctxplat.part")
        seen = self.parts.setdefault(nodeid, set())
        seen.add(played.index)
        if len(seen) == played.count:
            self._merge(nodeid, played.count)

    def _merge(self, nodeid: str, count: int) -> None:
        from .orchestrator.parts import Part, merge_parts
        from .report.result import read_document, result_path, write_json

        results = self.config.stash[settings_key].results
        try:
            docs = [read_document(result_path(results, Part(i, count).result_name(nodeid)),
                                  "parts", "a part's result") for i in range(count)]
            merged = merge_parts(docs, nodeid)
        except ConfigError as exc:
            self.errors.append(f"{nodeid}: parts not merged: {exc}")
            return
        write_json(merged, results)
        self.merged.append(merged)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(not r.passed for r in self.merged)

    def summary(self, terminalreporter: Any) -> None:
        if not self.merged and not self.errors:
            return
        terminalreporter.write_sep("=", "ctxplat split tests (merged across xdist workers)")
        for r in self.merged:
            v = r.verdict
            terminalreporter.write_line(
                f"{r.name}: {len(r.records)} requests from {(r.parts or {}).get('count')} "
                f"workers: {'no objectives' if v is None else v.status} "
                f"({'passed' if r.passed else 'failed'})")
            if not r.passed:
                terminalreporter.write_line(format_breach(r), red=True)
        for line in self.errors:
            terminalreporter.write_line(line, red=True)
