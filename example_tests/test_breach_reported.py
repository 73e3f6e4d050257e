"""An SLO breach is a test failure with a table: metric, target, observed, margin.

This example asks for an impossible TTFT so you can see the report; it is marked as an
expected failure (strict: it must fail, or the suite fails).
"""

import pytest

from pytest_ctxplat import SLOViolation


@pytest.mark.xfail(raises=SLOViolation, strict=True, reason="demonstrates a breach report")
@pytest.mark.slo(ttft_p50_ms=0.001, cache_hit_rate_min=0.5)
@pytest.mark.workload("quickstart", users=2, turns=2)
def test_impossible_ttft_is_reported(ctxplat_run):
    ctxplat_run()
