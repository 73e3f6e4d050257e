"""Live progress: the figures a run reports while it plays, when the display is shown,
and that a forced display leaves pytest's output intact."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest

from pytest_ctxplat.api import simulate
from pytest_ctxplat.orchestrator import InProcessTarget, PlayOptions, Progress, play
from pytest_ctxplat.orchestrator.progress import ProgressTracker
from pytest_ctxplat.progress import LiveProgress, describe, progress_wanted
from pytest_ctxplat.report.records import RequestRecord
from pytest_ctxplat.settings import settings_key
from pytest_ctxplat.sim.hardware import load_hardware
from pytest_ctxplat.sim.virtual import run_virtual
from pytest_ctxplat.workload import load_workload

pytest_plugins = ["pytester"]

PROFILE = "h100-llama8b"
CHAT = {"users": 4, "turns": 50, "think_time_s": 1.0, "system_prompt_tokens": 512,
        "user_tokens": 64, "output_tokens": 16, "block_size": 16}


def _record(user: int, start: float, *, ttft: float | None = None, end: float | None = None,
            outcome: str | None = None, prompt: int = 100, cached: int | None = None
            ) -> RequestRecord:
    return RequestRecord(session_id=f"s{user}", user=user, index=0, prompt_tokens=prompt,
                         max_tokens=8, start_s=start, ttft_s=ttft, end_s=end,
                         cached_tokens=cached, outcome=outcome)


def test_tracker_counts_each_ended_request_once_and_windows_the_rates() -> None:
    tracker = ProgressTracker(duration_s=100.0, max_requests=None, window_s=10.0)
    old = _record(0, 1.0, ttft=0.5, end=2.0, outcome="ok", cached=50)  # before the window
    recent = [_record(1, 11.0 + i, ttft=0.1 * (i + 1), end=12.0 + i, outcome="ok", cached=0)
              for i in range(4)]
    failed = _record(2, 15.0, end=16.0, outcome="timeout")
    open_ = _record(3, 18.0)
    records = [old, *recent, failed, open_]
    p = tracker.snapshot(records, 20.0)
    assert (p.completed, p.errors, p.in_flight) == (6, 1, 1)
    assert p.users == 3  # users 1 and 2 ended within the window, user 3 is in flight
    assert p.requests_per_s == pytest.approx(5 / 10.0)  # old ended 18 s ago: not counted
    assert p.ttft_p95_ms == pytest.approx(385.0)  # p95 of 100..400 ms (failed: no TTFT)
    assert p.hit_rate == pytest.approx(50 / 500)  # ok requests that reported cached tokens
    assert p.fraction == pytest.approx(0.2) and p.time_left_s == pytest.approx(80.0)
    open_.end_s, open_.outcome, open_.ttft_s, open_.cached_tokens = 21.0, "ok", 0.2, 100
    records.append(_record(0, 29.0))
    p = tracker.snapshot(records, 30.0)
    assert (p.completed, p.errors, p.in_flight, p.users) == (7, 1, 1, 2)
    assert p.requests_per_s == pytest.approx(1 / 10.0)  # only the one that ended at 21 s
    assert p.ttft_p95_ms == pytest.approx(200.0)
    assert p.hit_rate == pytest.approx(150 / 600)


def test_bounds_give_fraction_and_time_left() -> None:
    base = dict(users=1, in_flight=0, errors=0, requests_per_s=1.0, ttft_p95_ms=None,
                hit_rate=None, window_s=10.0)
    by_count = Progress(elapsed_s=10.0, duration_s=None, max_requests=40, completed=10, **base)
    assert by_count.fraction == pytest.approx(0.25) and by_count.time_left_s == 30.0
    both = Progress(elapsed_s=10.0, duration_s=20.0, max_requests=40, completed=10, **base)
    assert both.fraction == pytest.approx(0.5) and both.time_left_s == 10.0
    unbounded = Progress(elapsed_s=10.0, duration_s=None, max_requests=None, completed=3,
                         **base)
    assert unbounded.fraction is None and unbounded.time_left_s is None
    assert describe(unbounded).endswith("10s elapsed")
    assert "TTFT p95 -" in describe(unbounded) and "hit -" in describe(unbounded)


def test_play_reports_progress_every_sample_in_virtual_time() -> None:
    spec = load_workload("chat", {**CHAT, "duration_s": 30})
    seen: list[Progress] = []

    async def main():  # type: ignore[no-untyped-def]
        return await play(spec, InProcessTarget(load_hardware(PROFILE)), PlayOptions(
            sample_every_s=1.0, on_progress=seen.append, progress_every_s=0.0))

    result = run_virtual(main())
    assert len(seen) >= 29
    assert [round(p.elapsed_s) for p in seen[:5]] == [1, 2, 3, 4, 5]
    completed = [p.completed for p in seen]
    assert completed == sorted(completed)
    assert all(p.in_flight <= 4 and p.users <= 4 and p.errors == 0 for p in seen)
    assert all(p.duration_s == 30 and 0 <= (p.fraction or 0) <= 1 for p in seen)
    assert seen[10].time_left_s == pytest.approx(30 - seen[10].elapsed_s)
    last = seen[-1]
    assert 0 < last.completed <= result.metrics["requests"]
    assert last.requests_per_s > 0 and last.ttft_p95_ms is not None
    assert last.hit_rate == pytest.approx(result.hit_rates.request, abs=0.05)


def test_a_failing_display_stops_itself_not_the_run() -> None:
    calls: list[float] = []

    def broken(p: Progress) -> None:
        calls.append(p.elapsed_s)
        raise OSError("the terminal went away")

    spec = load_workload("chat", {**CHAT, "duration_s": 20})

    async def main():  # type: ignore[no-untyped-def]
        return await play(spec, InProcessTarget(load_hardware(PROFILE)), PlayOptions(
            sample_every_s=1.0, on_progress=broken, progress_every_s=0.0))

    result = run_virtual(main())
    assert calls == [1.0] and len(result.timeline) >= 19 and not result.incomplete
    assert result.hit_rates.notes["run.progress"] == (
        "progress display stopped: OSError: the terminal went away")


def test_progress_is_throttled_on_the_wall_clock() -> None:
    calls: list[Progress] = []
    t0 = time.monotonic()
    result = simulate("chat", PROFILE, overrides={**CHAT, "turns": 1000, "duration_s": 600},
                      sample_every_s=1.0, on_progress=calls.append)
    wall = time.monotonic() - t0
    assert result.metrics["requests"] > 1000 and len(result.timeline) >= 599
    assert 1 <= len(calls) <= wall / 0.5 + 2  # one per half second of wall time at most


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("choice", "tty", "quiet", "env", "shown"), [
    (None, True, False, {}, True),
    (None, False, False, {}, False),  # piped, redirected: no display
    (None, True, True, {}, False),  # -q
    (None, True, False, {"CI": "true"}, False),
    (None, True, False, {"CTXPLAT_CI": "1"}, False),
    (True, False, True, {"CI": "true"}, True),  # asked for explicitly
    (False, True, False, {}, False),
])
def test_progress_is_automatic_only_on_a_terminal_outside_ci(
        choice: bool | None, tty: bool, quiet: bool, env: dict[str, str], shown: bool) -> None:
    assert progress_wanted(choice, _Stream(tty), quiet=quiet, env=env) is shown


def _progress(elapsed: float) -> Progress:
    return Progress(elapsed_s=elapsed, duration_s=60.0, max_requests=None, users=3,
                    in_flight=2, completed=40, errors=1, requests_per_s=4.25,
                    ttft_p95_ms=123.4, hit_rate=0.875, window_s=10.0)


def test_display_waits_two_seconds_then_draws_and_erases(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    now = [100.0]
    guarded: list[str] = []

    class Guard:
        def __enter__(self) -> None:
            guarded.append("in")

        def __exit__(self, *exc: object) -> None:
            guarded.append("out")

    display = LiveProgress("test_swarm", force_terminal=True, guard=Guard,
                           clock=lambda: now[0])
    with display.running():
        display(_progress(1.0))
        now[0] = 101.9
        display(_progress(2.0))
        assert not display.shown and capsys.readouterr().out == "" and not guarded
        now[0] = 102.0
        display(_progress(3.0))
        assert display.shown and guarded == ["in", "out"]
        now[0] = 102.2  # within min_interval_s: not redrawn
        display(_progress(3.2))
        assert guarded == ["in", "out"] and display.last is not None
    out = capsys.readouterr().out
    assert not display.shown and guarded == ["in", "out", "in", "out"]
    assert "test_swarm" in out and out.endswith("\x1b[1A\x1b[2K")  # erased at the end
    assert "users 3 | in flight 2 | done 40 | 4.2 req/s | TTFT p95 123 ms | hit 87.5% | " \
           "1 errors | 57s left" in out


def test_option_decides_at_startup(pytester: pytest.Pytester,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("CTXPLAT_CI", raising=False)
    pytester.makeini(INI)
    assert pytester.parseconfigure().stash[settings_key].progress is False  # not a tty
    assert pytester.parseconfigure("--ctxplat-progress").stash[settings_key].progress
    pytester.makeini(INI + "ctxplat_progress = true\n")
    assert pytester.parseconfigure().stash[settings_key].progress
    assert not pytester.parseconfigure("--ctxplat-no-progress").stash[settings_key].progress


INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
LONG_TEST = """
import pytest

@pytest.mark.slo(error_rate_max=0)
@pytest.mark.workload("chat", users=2, duration_s=80, think_time_s=1.0, turns=100,
                      system_prompt_tokens=256, user_tokens=32, output_tokens=8, block_size=16)
def test_long(ctxplat_run):
    print("printed by the test")
    ctxplat_run()

def test_after():
    pass
"""


def test_forced_progress_leaves_pytest_output_intact(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_live=LONG_TEST)
    result = pytester.runpytest("-v", "--ctxplat-progress", "--ctxplat-sim-speedup=20",
                                "-p", "no:cacheprovider", "-rP")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "test_long" in out and "req/s" in out and "TTFT p95" in out  # it was drawn
    result.stdout.fnmatch_lines([
        "*test_live.py::test_long *",  # the display starts on a line of its own ...
        "*PASSED*50%]",  # ... and puts the cursor back after the test's name
        "*test_live.py::test_after PASSED*",
        "*Captured stdout call*",
        "printed by the test",  # the test's own output is still captured, not drawn over
        "*ctxplat SLO summary*",
        "*test_live.py::test_long*passed*pass*",
        "*2 passed*",
    ])


def test_cli_takes_progress_flags() -> None:
    from pytest_ctxplat.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["simulate", "chat"]).progress is None
    assert parser.parse_args(["simulate", "chat", "--progress"]).progress is True
    assert parser.parse_args(["run", "chat", "--no-progress"]).progress is False


def test_cli_simulate_without_a_terminal_prints_no_progress() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_ctxplat.cli", "simulate", "chat", "--set", "users=2",
         "--set", "max_requests=6", "--set", "output_tokens=8"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "req/s" not in proc.stderr and "hit rate designed" in proc.stdout


def test_cli_run_draws_forced_progress_on_stderr_only() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_ctxplat.cli", "run", "chat", "--sim-speedup", "20",
         "--set", "users=2", "--set", "duration_s=60", "--set", "think_time_s=1.0",
         "--set", "turns=100", "--set", "output_tokens=8", "--progress"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "req/s" in proc.stderr and "TTFT p95" in proc.stderr and "s left" in proc.stderr
    assert "req/s" not in proc.stdout and "\x1b" not in proc.stdout
    assert proc.stdout.startswith("requests / errors")
