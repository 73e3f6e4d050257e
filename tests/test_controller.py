"""The SLO-governed controller: its decisions window by window, and the runner's gate
that lets only the active users send (on the simulator's virtual clock)."""

from __future__ import annotations

import math

import pytest

from pytest_ctxplat.api import simulate
from pytest_ctxplat.driver.controller import (
    CapacitySearch,
    WindowFigures,
    controller_config,
    window_figures,
    window_spec,
)
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.report.records import RequestRecord
from pytest_ctxplat.slo import SLOSpec
from pytest_ctxplat.workload import load_workload
from pytest_ctxplat.workload.load import ControllerConfig


def _window(users: int, *, passed: bool = True, headroom: float = 0.5,
            tps: float | None = None) -> WindowFigures:
    # by default throughput grows in proportion to the users (no plateau)
    tokens = int((tps if tps is not None else 100.0 * users) * 10)
    return WindowFigures(t=0.0, active_users=users, duration_s=10.0, requests=10,
                         output_tokens=tokens, good_requests=None, ttft_p95_ms=100.0,
                         passed=passed, headroom=headroom if passed else -headroom,
                         breached=() if passed else ("ttft_p95_ms",))


def _drive(search: CapacitySearch, capacity: int, *, limit: int = 100) -> list[int]:
    """Feed windows that pass up to ``capacity`` users, breach above; the levels tried."""
    levels = []
    for _ in range(limit):
        if search.stop_reason is not None:
            break
        level = search.level
        levels.append(level)
        ok = level <= capacity
        search.decide(_window(level, passed=ok, headroom=(capacity - level + 1) / level))
    return levels


def test_controller_grows_in_proportion_to_headroom() -> None:
    search = CapacitySearch(ControllerConfig(start_users=4, step_max=8))
    assert search.decide(_window(4, headroom=0.5)) == "grow"
    assert search.level == 6  # 4 users x 50% headroom
    search = CapacitySearch(ControllerConfig(start_users=4, step_max=8))
    search.decide(_window(4, headroom=0.01))
    assert search.level == 5  # at least one user
    search = CapacitySearch(ControllerConfig(start_users=20, step_max=3))
    search.decide(_window(20, headroom=0.9))
    assert search.level == 23  # at most step_max


def test_controller_backs_off_on_breach_never_below_what_passed() -> None:
    search = CapacitySearch(ControllerConfig(start_users=10, step_max=8))
    search.decide(_window(10, headroom=0.8))
    assert search.level == 18
    decision = search.decide(_window(18, passed=False, headroom=0.9))
    assert decision.startswith("back off: breach (ttft_p95_ms")
    assert search.level == 10  # proportional back-off (9) stops at the level that passed
    assert search.lowest_failed == 18


def test_controller_converges_on_the_same_capacity_from_any_start() -> None:
    for start in (1, 5, 12, 30):
        search = CapacitySearch(ControllerConfig(start_users=start, max_users=40,
                                                 hold_windows=3))
        _drive(search, capacity=12)
        assert search.stop_reason == "converged", start
        report = search.report()
        assert report["sustained_users"] == 12
        assert report["interval"] == {"highest_passed": 12, "lowest_failed": 13}
        assert report["windows_at_sustained"] >= 3


def test_controller_stops_at_max_users_when_everything_passes() -> None:
    search = CapacitySearch(ControllerConfig(start_users=1, max_users=6, hold_windows=2))
    _drive(search, capacity=100)
    assert search.stop_reason == "max_users reached"
    assert search.report()["sustained_users"] == 6
    assert search.report()["interval"]["lowest_failed"] is None


def test_controller_breach_at_one_user_is_zero_capacity() -> None:
    search = CapacitySearch(ControllerConfig(start_users=3))
    _drive(search, capacity=0)
    assert search.stop_reason == "breach at minimum (1 user)"
    assert search.report()["sustained_users"] == 0


def test_controller_backs_off_on_a_throughput_plateau() -> None:
    search = CapacitySearch(ControllerConfig(start_users=8, step_max=8, hold_windows=2,
                                             plateau_gain=0.2))
    search.decide(_window(8, headroom=0.5, tps=800.0))
    assert search.level == 12
    decision = search.decide(_window(12, headroom=0.4, tps=810.0))  # +50% users, +1% tok/s
    assert decision.startswith("back off: throughput plateau")
    assert search.level == 8 and search.lowest_failed == 12
    for _ in range(20):  # throughput saturates at 8 users: smaller steps find the knee
        if search.stop_reason is not None:
            break
        search.decide(_window(search.level, headroom=0.5, tps=100.0 * min(search.level, 8)))
    assert search.stop_reason == "converged"
    assert search.report()["sustained_users"] == 8
    assert search.report()["interval"] == {"highest_passed": 8, "lowest_failed": 9}
    assert search.report()["output_tokens_per_s"] == pytest.approx(800.0)


def test_controller_run_bound_reports_the_highest_level_that_passed() -> None:
    search = CapacitySearch(ControllerConfig(start_users=2))
    search.decide(_window(2, headroom=1.0))
    search.decide(_window(4, passed=False, headroom=0.2))
    search.finish("run bound (duration_s)")
    report = search.report()
    assert report["stop_reason"] == "run bound (duration_s)"
    assert report["sustained_users"] == 2
    assert [p["decision"] for p in report["trajectory"]] == [
        "grow", "back off: breach (ttft_p95_ms)"]


def test_controller_window_judged_against_objectives_but_not_the_gate() -> None:
    spec = window_spec(SLOSpec(ttft_p95_ms=500, min_sustained_users=4,
                               cache_hit_rate_min=0.5, cache_hit_source="server"))
    assert spec.objectives() == {"ttft_p95_ms": 500.0}
    fast = [RequestRecord(session_id="s", user=0, index=i, prompt_tokens=100,
                          max_tokens=10, start_s=float(i), ttft_s=0.2, end_s=i + 1.0,
                          output_tokens=10, outcome="ok") for i in range(5)]
    w = window_figures(fast, spec, t=5.0, active_users=1, duration_s=5.0)
    assert w.passed and w.headroom == pytest.approx(0.6)
    assert w.output_tokens_per_s == pytest.approx(10.0)
    slow = [RequestRecord(session_id="s", user=0, index=0, prompt_tokens=100,
                          max_tokens=10, start_s=0.0, ttft_s=0.75, end_s=1.0,
                          output_tokens=10, outcome="ok")]
    w = window_figures(slow, spec, t=1.0, active_users=1, duration_s=1.0)
    assert not w.passed and w.breached == ("ttft_p95_ms",)
    assert w.headroom == pytest.approx(-0.5)
    empty = window_figures([], spec, t=1.0, active_users=1, duration_s=1.0)
    assert not empty.passed and "no request completed" in empty.breached


def test_controller_config_validated_with_file_and_key() -> None:
    with pytest.raises(ConfigError, match=r"t::x: load.controller.start_users: must be "
                                          r"<= max_users \(4\), got 8"):
        load_workload("chat", {"load": {"controller": {"start_users": 8, "max_users": 4}}},
                      where="t::x")
    with pytest.raises(ConfigError, match=r"load.controller.windows: unknown key; valid: "
                                          r"cooldown_s, hold_windows"):
        load_workload("chat", {"load": {"controller": {"windows": 3}}}, where="t::x")
    with pytest.raises(ConfigError, match=r"load\.controller: the controller governs "
                                          r"closed-loop users"):
        load_workload("chat", {"load": {"arrival": "poisson", "rate_per_s": 1.0,
                                        "controller": {}}}, where="t::x")


def test_controller_implied_by_the_capacity_gate_with_defaults() -> None:
    wl = load_workload("chat", {"users": 4})
    assert controller_config(wl, None) is None
    assert controller_config(wl, SLOSpec(ttft_p95_ms=100)) is None
    implied = controller_config(wl, SLOSpec(min_sustained_users=10))
    assert implied is not None and implied.max_users == 20 and implied.start_users == 1
    own = load_workload("chat", {"load": {"controller": {"max_users": 7}}})
    assert controller_config(own, SLOSpec(min_sustained_users=10)) == own.load.controller
    staged = load_workload("chat", {"load": {"stages": [{"users": 2, "duration_s": 5}]}})
    assert controller_config(staged, SLOSpec(min_sustained_users=1)) is None


def test_controller_gate_lets_only_active_users_send() -> None:
    """At every moment no more users have a request in flight than the controller let
    send; users beyond it never send before their turn."""
    wl = load_workload("chat", {
        "turns": 50, "recycle": True, "think_time_s": 0.5, "output_tokens": 16, "user_tokens": 64,
        "system_prompt_tokens": 256, "start_spread_s": 0, "duration_s": 200,
        "load": {"controller": {"start_users": 1, "max_users": 5, "step_max": 1,
                                "cooldown_s": 2, "window_s": 5, "hold_windows": 2,
                                "min_requests": 2}}})
    result = simulate(wl, "h100-llama8b", slo={"ttft_p95_ms": 10_000}, seed=3)
    cap = result.capacity
    assert cap is not None and cap["stop_reason"] == "max_users reached"
    assert cap["sustained_users"] == 5
    levels = [(p["t"], p["active_users"]) for p in cap["trajectory"]]
    # the first request of user u is sent after the controller first allowed u + 1 users
    first = {}
    for r in result.records:
        first.setdefault(r.user, r.start_s)
    for user, t in first.items():
        allowed_at = min((t0 for t0, n in [(0.0, 1), *((t, n + 1) for t, n in levels)]
                          if n > user), default=math.inf)
        assert t >= allowed_at - 1e-9, (user, t, allowed_at)
    assert result.verdict is not None and result.verdict.passed
    assert result.incomplete is None


def _governed(**over: object) -> dict[str, object]:
    return {"turns": 4, "recycle": True, "think_time_s": 0.5, "output_tokens": 16,
            "user_tokens": 64, "system_prompt_tokens": 256, "start_spread_s": 0,
            "load": {"controller": {"start_users": 1, "max_users": 50, "step_max": 1,
                                    "cooldown_s": 2, "window_s": 5, "hold_windows": 2,
                                    "min_requests": 2}}, **over}


def test_controller_stops_at_the_run_bound_with_what_passed() -> None:
    result = simulate("chat", "h100-llama8b", overrides=_governed(duration_s=30),
                      slo={"ttft_p95_ms": 10_000})
    cap = result.capacity
    assert cap is not None and cap["stop_reason"] == "run bound (duration_s)"
    passed = [p["active_users"] for p in cap["trajectory"] if p["passed"]]
    assert passed and cap["sustained_users"] == max(passed)
    assert result.incomplete is None  # the run filled its window


def test_controller_stops_when_the_workload_runs_out_of_sessions() -> None:
    result = simulate("chat", "h100-llama8b", overrides=_governed(recycle=False, turns=3),
                      slo={"ttft_p95_ms": 10_000})
    cap = result.capacity
    assert cap is not None
    assert cap["stop_reason"] == "workload ended (the active users ran out of sessions)"
