"""Extension points through pytester: a plugin's workload kind and launcher take the same
path as the built-ins (registries built per session, names checked, profiles validated),
and a kind or launcher registered twice is a usage error naming both."""

from __future__ import annotations

import pytest

# imported here, before pytester's in-process runs snapshot sys.modules (numpy cannot be
# imported twice in one process)
import pytest_ctxplat.servers.launchers
import pytest_ctxplat.workload  # noqa: F401

pytest_plugins = ["pytester"]

# functional checks at speed-up 20, where the client's timings stray from the model's
# (docs/concepts/simulator.md, "Timing over HTTP"): the validity bound is lifted
FAST = ["--ctxplat-sim-speedup=20", "--ctxplat-timing-skew-max-ms=inf", "-p",
        "no:cacheprovider"]


@pytest.fixture(autouse=True)
def _quiet_asyncio_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

CONFTEST = '''
import dataclasses

from pytest_ctxplat import FieldError, SessionPlan, SessionStream, WorkloadSpec, setting
from pytest_ctxplat.servers.launchers import LauncherRegistry


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ping(WorkloadSpec):
    kind = "ping"
    prompt_tokens: int = setting(256, gt=0, doc="tokens per request")

    def validate(self):
        if self.prompt_tokens > 4096:
            raise FieldError("prompt_tokens", "at most 4096 here")

    def user_sessions(self, user, ctx):
        while True:
            stream = SessionStream.start(self.block_size, ctx.ids, ctx.ids.take(0))
            stream.extend(self.prompt_tokens, role="user")
            yield SessionPlan(f"u{user}", iter([stream.request(self.output_tokens)]))


STARTED = []


def launch_wrapped_sim(profile, context):
    # a plugin's launcher: here it reuses the built-in simulator launcher, with the
    # speed-up from its own options
    STARTED.append(profile.options)
    sim_profile = dataclasses.replace(profile, launcher="sim",
                                      sim={"speedup": profile.options["speedup"]})
    return LauncherRegistry.builtin().start(sim_profile, context)


def pytest_ctxplat_workload_kinds():
    return [Ping]


def pytest_ctxplat_launchers():
    return {"wrapped-sim": launch_wrapped_sim}
'''

PROFILE = "launcher: wrapped-sim\\ndescription: a plugin's launcher\\noptions: {speedup: 20}\\n"

TEST = '''
import pytest
import conftest


@pytest.mark.slo(error_rate_max=0.0)
@pytest.mark.workload("ping", users=2, max_requests=6, prompt_tokens=300, block_size=16)
def test_plugin_kind_on_plugin_launcher(ctxplat_run, ctxplat_server):
    result = ctxplat_run()
    assert result.metrics["requests"] == 6
    assert result.workload["kind"] == "ping" and result.workload["prompt_tokens"] == 300
    assert ctxplat_server.info.profile == "wrapped"
    assert conftest.STARTED == [{"speedup": 20}]
'''


def test_a_plugin_kind_and_launcher_take_the_builtin_path(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    (pytester.path / "fixtures" / "servers").mkdir(parents=True)
    (pytester.path / "fixtures" / "servers" / "wrapped.yaml").write_text(
        PROFILE.replace("\\n", "\n"))
    pytester.makepyfile(test_ext=TEST)
    result = pytester.runpytest("--ctxplat-server=wrapped", "--ctxplat-results=res", *FAST)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(("marker", "message"), [
    ('workload("ping", prompt_tokens=0)', "*::test_x: prompt_tokens: must be > 0, got 0*"),
    ('workload("ping", prompt_tokens=9000)', "*::test_x: prompt_tokens: at most 4096 here*"),
    ('workload("ping", promt_tokens=9)', "*::test_x: promt_tokens: unknown key; valid: *"),
])
def test_a_plugin_kind_is_checked_like_a_builtin(pytester: pytest.Pytester, marker: str,
                                                 message: str) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.{marker}
        def test_x(ctxplat_run):
            ctxplat_run()
    """)
    result = pytester.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_server_names_are_checked_with_plugin_launchers_installed(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST + '''

def pytest_ctxplat_start_server(config, name):
    return None
''')
    pytester.makepyfile(test_ext=TEST)
    result = pytester.runpytest("--ctxplat-server=nosuch", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ctxplat-server: unknown server 'nosuch'; valid: sim, url*"])
    (pytester.path / "bad.yaml").write_text("launcher: wrapped-sim\noptionz: {}\n")
    result = pytester.runpytest("--ctxplat-server=bad.yaml", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad.yaml:2: optionz: unknown key; valid: *"])
    (pytester.path / "other.yaml").write_text("launcher: nosuch-kind\n")
    result = pytester.runpytest("--ctxplat-server=other.yaml", *FAST)
    result.stderr.fnmatch_lines(["*other.yaml:1: launcher: unknown launcher 'nosuch-kind'; "
                                 "valid: sim, url, vllm, vllm-cpu, sglang, wrapped-sim*"])


def test_a_kind_registered_twice_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST + '''

@dataclasses.dataclass(frozen=True, kw_only=True)
class Chat2(WorkloadSpec):
    kind = "chat"


class Again:
    @staticmethod
    def pytest_ctxplat_workload_kinds():
        return [Chat2]


def pytest_configure(config):
    config.pluginmanager.register(Again(), "again-plugin")
''')
    pytester.makepyfile("""
        import pytest

        @pytest.mark.workload("ping")
        def test_x(ctxplat_run):
            pass
    """)
    result = pytester.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*workload kind 'chat' is registered twice: "
        "pytest_ctxplat.workload.chat.ChatSessions (built-in) and conftest.Chat2 "
        "(again-plugin)*"])


def test_a_launcher_registered_twice_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.replace('return {"wrapped-sim": launch_wrapped_sim}',
                                           'return {"vllm": launch_wrapped_sim}'))
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*launcher 'vllm' is registered twice: by built-in and by "
                                 "*conftest.py*"])
