"""HTML report: content, embedded plots, files next to it, ``--ctxplat-html``, and a real
headless Chromium that renders it with its plots visible and no console errors."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from report_browser_support import CHROMIUM, render

from pytest_ctxplat import run_workload
from pytest_ctxplat.api import write_html_report as write_report
from pytest_ctxplat.cli import main
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.servers import start_sim

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "traces"
TINY = {"users": 2, "turns": 3, "think_time_s": 0.2, "start_spread_s": 0.5,
        "system_prompt_tokens": 512, "user_tokens": 64, "output_tokens": 8, "block_size": 16}
PNG = b"\x89PNG\r\n\x1a\n"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium; CI does)")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two real runs against the simulator (2 and 4 users) and one trace analysis."""
    d = tmp_path_factory.mktemp("results")
    # speed-up 1: the runs judge TTFT, which is a valid measurement only at a low speed-up
    sim = start_sim({"speedup": 1.0})
    try:
        run_workload(sim, "chat", overrides=TINY, slo={"cache_hit_rate_min": 0.3},
                     results_dir=d, name="two users")
        run_workload(sim, "chat", overrides={**TINY, "users": 4},
                     slo={"ttft_p50_ms": 0.001}, results_dir=d, name="four users")
    finally:
        sim.close()
    assert main(["analyze", str(FIXTURES / "kvcache"), "--json", str(d / "analysis.json")]) == 0
    yield d


def test_report_holds_runs_verdicts_and_embedded_plots(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "report.html"
    assert write_report(results, out) == out
    text = out.read_text()
    assert "<script" not in text.lower()
    # every image is embedded; nothing is fetched from anywhere
    srcs = re.findall(r'src="([^"]+)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text.replace("http://127.0.0.1", "")
    # 1 throughput plot + 3 per run (latency, hit rates, designed TTL curves planned from
    # the run's workload) + TTL and LRU curves of the analysis
    assert len(srcs) == 1 + 3 * 2 + 2
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == PNG
    files = sorted(p.name for p in (out.parent / "report_files").iterdir())
    assert len(files) == len(srcs) and all(f.endswith(".png") for f in files)
    assert "Run: two users" in text and "Run: four users" in text
    assert "Cache analysis: kvcache" in text
    # verdicts: the 2-user run met its SLO, the impossible TTFT target breached
    assert text.count("SLO met") == 1 and text.count("SLO breached") == 1
    assert "ttft_ms.p50" in text and "hit_rate.request" in text


def test_designed_ttl_curves_are_inferred_from_the_run(results: Path, tmp_path: Path) -> None:
    from pytest_ctxplat.analysis.sources import designed_analysis

    run = json.loads((results / "two_users.json").read_text())
    doc = designed_analysis(run)
    # the same workload and seed plan the same requests the run sent
    assert doc["requests"] == run["metrics"]["requests"] == 6
    # designed hit rate of the plan equals the run's designed hit rate (infinite cache)
    assert doc["infinite"]["token_hit_rate"] == pytest.approx(run["hit_rates"]["designed"],
                                                              abs=0.05)
    out = write_report(results, tmp_path / "plain.html", infer=False)
    assert out.read_text().count("<img") == 1 + 2 * 2 + 2
    run["workload"]["kind"] = "no-such-kind"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "r.json").write_text(json.dumps(run))
    text = write_report(tmp_path / "odd").read_text()
    assert "designed TTL curves not available" in text and "no-such-kind" in text


def test_cli_report_and_errors(results: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.html"
    assert main(["report", str(results), "-o", str(out), "--title", "nightly"]) == 0
    assert "<title>nightly</title>" in out.read_text()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "results directory not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no result or analysis JSON"):
        write_report(empty)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": 1}))
    with pytest.raises(ConfigError, match="not an analysis JSON"):
        write_report(results, tmp_path / "x.html", analyses=[bad])


@needs_chromium
def test_report_renders_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    out = write_report(results, tmp_path / "report.html")
    page = render(out.as_uri())
    assert page["errors"] == []
    imgs = page["images"]
    assert len(imgs) == 9
    for img in imgs:
        assert img["complete"] and img["visible"], img
        assert img["w"] >= 600 and img["h"] >= 300, img  # decoded PNG size
        assert img["shown_w"] >= 300 and img["shown_h"] >= 150, img  # laid out on the page
    shot = base64.b64decode(page["screenshot_b64"])
    assert shot[:8] == PNG and len(shot) > 20_000


@needs_chromium
def test_browser_check_catches_console_errors_and_broken_images(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img alt="x" src="missing.png">'
                    '<script>console.error("boom")</script></body></html>')
    got = render(page.as_uri())
    assert any("boom" in e for e in got["errors"])
    assert any("missing.png" in e for e in got["errors"])
    assert got["images"][0]["w"] == 0


def test_ctxplat_html_option_writes_the_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.slo(cache_hit_rate_min=0.1)
        @pytest.mark.workload("chat", users=2, turns=2, think_time_s=0.1,
                              start_spread_s=0.2, system_prompt_tokens=256,
                              user_tokens=32, output_tokens=4, block_size=16)
        def test_small(ctxplat_run):
            ctxplat_run()
    """)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--ctxplat-results=res",
         "--ctxplat-sim-speedup=20", "--ctxplat-html=out/report.html"],
        cwd=pytester.path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = pytester.path / "out" / "report.html"
    assert f"HTML report written to {report}" in proc.stdout
    text = report.read_text()
    assert "test_small" in text and "SLO met" in text
    assert (pytester.path / "out" / "report_files").is_dir()
    # the ini twin works too
    pytester.makeini("[pytest]\nctxplat_html = ini-report.html\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--ctxplat-results=res",
         "--ctxplat-sim-speedup=20"], cwd=pytester.path, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (pytester.path / "ini-report.html").is_file()


# -- without the plots extra, and bad output paths -------------------------------------
QUIET_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
NOTE = "no plots in this report: plots need matplotlib: pip install 'pytest-ctxplat[plots]'"
SMALL_TEST = """
    import pytest

    @pytest.mark.slo(error_rate_max=0.5)
    @pytest.mark.workload("chat", users=1, turns=2, think_time_s=0.1, start_spread_s=0.1,
                          system_prompt_tokens=128, user_tokens=16, output_tokens=2,
                          block_size=16)
    def test_small(ctxplat_run):
        ctxplat_run()
"""


def _hide_matplotlib(folder: Path) -> str:
    """A PYTHONPATH entry whose sitecustomize makes ``import matplotlib`` fail, as when
    the ``plots`` extra is not installed."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text('import sys\nsys.modules["matplotlib"] = None\n')
    return str(folder)


def _page_text(path: Path) -> str:
    import html

    return html.unescape(path.read_text())


def test_pytest_html_without_matplotlib_passes_with_a_note(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [_hide_matplotlib(pytester.path / "no_mpl"),
                      os.environ.get("PYTHONPATH")])))
    pytester.makeini(QUIET_INI)
    pytester.makepyfile(SMALL_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--ctxplat-results=res", "--ctxplat-sim-speedup=50",
        "--ctxplat-html=out/report.html")
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.OK, output
    report = pytester.path / "out" / "report.html"
    lines = [ln for ln in result.outlines if "HTML report written to" in ln]
    assert lines == [f"ctxplat: HTML report written to {report} ({NOTE})"], output
    assert "Traceback" not in output and "INTERNALERROR" not in output
    result.assert_outcomes(passed=1)
    text = _page_text(report)
    assert NOTE in text and "test_small" in text and "SLO met" in text
    assert "<img" not in text
    assert not (pytester.path / "out" / "report_files").exists()


def test_cli_report_without_matplotlib_exits_0_with_a_note(results: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "new" / "report.html"
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from pytest_ctxplat.cli import main\n"
            f"raise SystemExit(main(['report', {str(results)!r}, '-o', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"ctxplat report: {NOTE}"
    assert f"wrote {out}" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    text = _page_text(out)
    assert NOTE in text and "<img" not in text
    # tables and verdicts are all there
    assert "Run: two users" in text and "Cache analysis: kvcache" in text
    assert text.count("SLO met") == 1 and text.count("SLO breached") == 1


def test_report_with_matplotlib_has_no_note(results: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ctxplat.report.html import plots_note

    assert plots_note() is None
    assert main(["report", str(results), "-o", str(tmp_path / "r.html"), "--no-infer"]) == 0
    assert capsys.readouterr().err == ""
    assert "plots-note" not in (tmp_path / "r.html").read_text()


def test_bad_ctxplat_html_path_is_a_usage_error_at_startup(pytester: pytest.Pytester) -> None:
    pytester.makeini(QUIET_INI)
    pytester.makepyfile("def test_x():\n    raise AssertionError('must not run')\n")
    (pytester.path / "afile").write_text("")
    (pytester.path / "adir").mkdir()
    cases = {
        "deep/er/report.html": "*report.html: the folder * does not exist and * is not a "
                               "directory to create it in*",
        "afile/report.html": "*afile is not a directory",
        "adir": "*adir: is a directory; give the HTML file to write*",
    }
    for value, why in cases.items():
        result = pytester.runpytest("-p", "no:cacheprovider", "--ctxplat-results=res",
                                    f"--ctxplat-html={value}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR, value
        result.stderr.fnmatch_lines([f"ERROR: --ctxplat-html: {why}"])
        assert "must not run" not in result.stdout.str()
    assert not (pytester.path / "deep").exists()
    # inside the results directory, which is created on the way: no error at startup
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--ctxplat-results=a/b/res",
                                "--ctxplat-html=a/b/res/report.html")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["ctxplat: no HTML report written: *results directory not "
                                 "found"])
    # the ini twin is checked the same way and named as such
    pytester.makeini(QUIET_INI + "ctxplat_html = deep/er/report.html\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--ctxplat-results=res")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ctxplat_html (ini): *deep*does not exist*"])


def test_report_output_path_rules(results: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ctxplat.report.html import check_output

    # the file's own folder is created when its parent exists; deeper ones are not
    assert check_output(tmp_path / "one" / "r.html") == tmp_path / "one" / "r.html"
    with pytest.raises(ConfigError, match=r"does not exist .*only the file's own folder"):
        check_output(tmp_path / "one" / "two" / "r.html")
    (tmp_path / "r_files").write_text("")
    with pytest.raises(ConfigError, match="folder for its PNGs"):
        check_output(tmp_path / "r.html")
    missing = tmp_path / "a" / "b" / "r.html"
    assert main(["report", str(results), "-o", str(missing), "--no-infer"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ctxplat report: {missing}: the folder") and "Traceback" not in err
    assert not (tmp_path / "a").exists()


def test_report_shows_an_inconclusive_verdict_and_its_interval(tmp_path: Path) -> None:
    from pytest_ctxplat import simulate

    # six requests cannot bound a p99 from above: inconclusive, passing under 'warn'
    result = simulate("chat", "h100-llama8b", overrides=TINY, slo={"ttft_p99_ms": 10_000},
                      results_dir=tmp_path / "res", name="few requests")
    assert result.verdict is not None and result.verdict.status == "inconclusive"
    out = write_report(tmp_path / "res", tmp_path / "report.html")
    text = out.read_text()
    assert "SLO inconclusive (passed with a warning)" in text and "SLO met" not in text
    low = result.verdict.checks[0].interval[0]  # type: ignore[index]
    assert f"[{low:.4g}, inf]" in text and ">inconclusive<" in text
