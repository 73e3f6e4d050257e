"""CI summaries: the Markdown table of a session's SLO tests (``--ctxplat-markdown``,
``$GITHUB_STEP_SUMMARY``) and the per-objective JUnit properties behind it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from junitparser import JUnitXml, Properties, Property

from pytest_ctxplat.api import simulate
from pytest_ctxplat.report.markdown import (
    changes_line,
    markdown_summary,
    objective_fields,
    result_row,
    write_markdown,
)
from pytest_ctxplat.report.result import RunResult
from pytest_ctxplat.slo import Check

pytest_plugins = ["pytester"]

# functional checks at speed-up 20, where the client's timings stray from the model's
# (docs/concepts/simulator.md, "Timing over HTTP"): the validity bound is lifted
FAST = ["--ctxplat-sim-speedup=20", "--ctxplat-timing-skew-max-ms=inf", "-p",
        "no:cacheprovider"]
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
TESTS = """
import pytest

WL = dict(users=2, turns=3, think_time_s=0.2, start_spread_s=1.0, system_prompt_tokens=512,
          user_tokens=64, output_tokens=8, block_size=16)

@pytest.mark.slo(ttft_p95_ms=5000, error_rate_max=0)
@pytest.mark.workload("chat", **WL)
def test_holds(ctxplat_run):
    ctxplat_run()

@pytest.mark.slo(ttft_p95_ms=0.001, cache_hit_rate_min=0.1)
@pytest.mark.workload("chat", **WL)
def test_breaches(ctxplat_run):
    ctxplat_run()

def test_plain():
    pass
"""


def _rows(text: str) -> list[list[str]]:
    """The table's body rows, split into cells (escaped pipes kept in their cell)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| test |"):
            cells = line[2:-2].replace("\\|", "\0").split(" | ")
            rows.append([c.replace("\0", "\\|") for c in cells])
    return rows


@pytest.fixture(scope="module")
def result() -> RunResult:
    return simulate("chat", "h100-llama8b", overrides={"users": 2, "max_requests": 8,
                                                       "output_tokens": 8},
                    slo={"ttft_p95_ms": 0.001, "error_rate_max": 0}, name="sim|run")


def test_summary_of_a_real_result_shows_figures_and_failed_objectives(
        result: RunResult) -> None:
    text = markdown_summary([result])
    assert text.startswith("### ctxplat SLO summary\n") and "1 tests: 1 fail" in text
    (row,) = _rows(text)
    test, outcome, verdict, req_err, ttft, decode, out_tps, hit, failed, baseline = row
    assert outcome == "" and out_tps == f"{result.metrics['output_tokens_per_s']:.0f}"
    assert test == "`sim\\|run`"  # a pipe is escaped, not a new cell
    assert verdict.endswith("fail") and req_err == "8/0"
    assert ttft == f"{result.observed['ttft_ms.p95']:.0f}"
    assert decode == f"{result.observed['decode_tps.p50']:.1f}"
    assert hit == f"{result.hit_rates.request:.1%}"
    check = result.verdict.checks[0]  # type: ignore[union-attr]
    assert check.interval is not None  # too few requests for an upper bound: inf
    low, high = check.interval
    assert failed == (f"ttft_p95_ms {check.observed:.4g} (target ≤ 0.001, fail, "
                      f"[{low:.4g}, {high:.4g}])")
    assert "error_rate_max" not in failed and baseline == "-"
    fields = result_row(result, "failed")
    assert fields["outcome"] == "failed" and fields["slo.error_rate_max.verdict"] == "pass"


def test_comparison_rows_that_changed_are_listed_compactly(result: RunResult) -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Compared(RunResult):  # a result judged against a baseline
        comparison: Mapping[str, Any] | None = None

    rows = [{"metric": "ttft_p95_ms", "baseline": 400.0, "now": 520.0, "delta": 0.3,
             "tolerance": 0.1, "verdict": "REGRESSION"},
            {"metric": "decode_tps_p50", "baseline": 50.0, "now": 50.5, "delta": 0.01,
             "tolerance": 0.1, "verdict": "ok"},
            {"metric": "hit_rate_request", "baseline": 0.9, "now": 0.8, "delta": -0.1,
             "tolerance": 0.05, "verdict": "REGRESSION"}]
    compared = dataclasses.replace(result, comparison={"baseline": "baselines/main.json",
                                                       "passed": False, "rows": rows})
    (row,) = _rows(markdown_summary([compared]))
    assert row[-1] == ("vs main.json: ttft_p95_ms 400 → 520 (+30.0%, REGRESSION); "
                       "hit_rate_request 0.9 → 0.8 (-11.1%, REGRESSION)")
    assert changes_line({"baseline": "b.json", "passed": True, "rows": rows[1:2]}) == \
        "within tolerance of b.json"
    many = {"baseline": "b.json", "rows": [{**rows[0], "metric": f"m{i}"} for i in range(6)]}
    assert (changes_line(many) or "").endswith("; +2 more")
    assert changes_line(None) is None


def test_interval_and_inconclusive_status_are_recorded_when_a_check_has_them() -> None:
    check = Check(key="ttft_p95_ms", metric="ttft_ms.p95", direction="max",
                  target=500.0, observed=480.2, status="inconclusive",
                  interval=(451.25, 530.0), policy="fail")
    fields = objective_fields(check)
    assert fields == {"target": 500.0, "observed": 480.2, "interval": "[451.2, 530]",
                      "verdict": "inconclusive", "result": "fail"}
    plain = Check(key="decode_tps_p10", metric="decode_tps.p10", direction="min",
                  target=30.0, observed=None, status="fail", note="not measured")
    assert objective_fields(plain) == {"target": 30.0, "verdict": "fail", "result": "fail"}
    row = {"nodeid": "t.py::a\nb", "outcome": "failed", "verdict": "inconclusive",
           "requests": 10, "errors": 0,
           **{f"slo.ttft_p95_ms.{k}": v for k, v in fields.items()},
           **{f"slo.decode_tps_p10.{k}": v for k, v in objective_fields(plain).items()}}
    (cells,) = _rows(markdown_summary([row]))
    assert cells[0] == "`t.py::a<br>b`" and cells[2].endswith("inconclusive")
    assert cells[7] == "n/a"
    assert cells[8] == ("ttft_p95_ms 480.2 (target ≤ 500, inconclusive, [451.2, 530]); "
                        "decode_tps_p10 n/a (target ≥ 30, fail)")


def test_write_appends_to_a_step_summary(tmp_path: Path) -> None:
    path = tmp_path / "step.md"
    path.write_text("# an earlier step\n")
    write_markdown(path, "### ctxplat\n", append=True)
    assert path.read_text() == "# an earlier step\n\n### ctxplat\n"
    out = write_markdown(tmp_path / "new" / "s.md", "### x\n")
    assert out.read_text() == "### x\n"
    write_markdown(out, "### y\n")
    assert out.read_text() == "### y\n"


def test_session_writes_markdown_and_appends_to_github_step_summary(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    step = pytester.path / "github-step-summary.md"
    step.write_text("## build\nok\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    pytester.makeini(INI)
    pytester.makepyfile(test_gate=TESTS)
    result = pytester.runpytest("--ctxplat-markdown=out/summary.md", "--junitxml=r.xml",
                                *FAST)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["ctxplat: Markdown summary written to *summary.md",
                                 f"ctxplat: Markdown summary appended to {step}"])
    written = (pytester.path / "out" / "summary.md").read_text()
    appended = step.read_text()
    assert appended == "## build\nok\n\n" + written
    # six requests cannot bound a p95: inconclusive, passed under the default 'warn'
    assert "2 tests: 1 inconclusive, 1 fail" in written and "test_plain" not in written
    rows = {r[0]: r for r in _rows(written)}
    holds, breaches = rows["`test_gate.py::test_holds`"], rows["`test_gate.py::test_breaches`"]
    assert holds[1:3] == ["passed", "⚠️ inconclusive"] and holds[3] == "6/0"
    assert holds[8].startswith("ttft_p95_ms ") and "inconclusive, [" in holds[8]
    assert breaches[1:3] == ["failed", "❌ fail"]
    assert breaches[8].startswith("ttft_p95_ms ") and "(target ≤ 0.001, fail, [" in \
        breaches[8] and "cache_hit_rate" not in breaches[8]  # that one passed: not listed
    # the same figures as the JUnit properties
    props = _junit(pytester.path / "r.xml")["test_breaches"]
    assert props["ctxplat.slo.ttft_p95_ms.verdict"] == "fail"
    assert props["ctxplat.slo.cache_hit_rate_min.verdict"] == "pass"
    assert breaches[4] == f"{float(props['ctxplat.ttft_p95_ms']):.0f}"
    assert breaches[7] == f"{float(props['ctxplat.hit_rate_request']):.1%}"


def test_no_markdown_without_the_option_or_the_variable(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_gate=TESTS.split("@pytest.mark.slo(ttft_p95_ms=0.001")[0])
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=1)
    assert "Markdown" not in result.stdout.str()
    assert not list(pytester.path.rglob("*.md"))


def test_a_folder_as_markdown_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.mkdir("out")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--ctxplat-markdown=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ctxplat-markdown: *out is a directory; give a file name*"])


def _junit(path: Path) -> dict[str, dict[str, str]]:
    xml = JUnitXml.fromfile(str(path))
    return {case.name: {p.name: p.value for group in case.iterchildren(Properties)
                        for p in group.iterchildren(Property)}
            for suite in xml for case in suite}


def test_step_summary_under_xdist_has_every_worker_s_tests(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    step = pytester.path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    pytester.makeini(INI)
    pytester.makepyfile(test_gate=TESTS)
    result = pytester.runpytest_subprocess("-n", "2", *FAST)
    result.assert_outcomes(passed=2, failed=1)
    text = step.read_text()
    assert text.count("### ctxplat SLO summary") == 1  # the controller writes it, once
    assert {r[0] for r in _rows(text)} == {"`test_gate.py::test_holds`",
                                           "`test_gate.py::test_breaches`"}
