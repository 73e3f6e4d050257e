"""The orchestrator: plays a workload against a *target* and builds the run's result.

A target is what a workload is played against: an HTTP server (the simulator, vLLM, any
OpenAI-compatible URL; :class:`HttpTarget`) or the simulator's engines in this process
on a virtual clock (:class:`InProcessTarget`). Each target supplies the request sink,
``/metrics``-style snapshots, gauge samples and its own description; :func:`play` does
the rest the same way for both, so both produce the same
:class:`~pytest_ctxplat.report.result.RunResult`.
"""

from .core import PlayOptions, Preparation, Target, play
from .http import HttpTarget
from .inprocess import EngineSink, InProcessTarget
from .parts import Part, merge_parts
from .progress import Progress
from .repeat import play_judged
from .results import build_result, format_breach
from .workers import play_workers

__all__ = [
    "EngineSink",
    "HttpTarget",
    "InProcessTarget",
    "Part",
    "PlayOptions",
    "Preparation",
    "Progress",
    "Target",
    "build_result",
    "format_breach",
    "merge_parts",
    "play",
    "play_judged",
    "play_workers",
]
