#!/usr/bin/env bash
# Check the plugin as users install it: a wheel, installed non-editable into a fresh venv,
# used from a folder outside the source tree. Built-in workloads, server profiles and
# sample traces must be found there (they ship inside the package).
#
#   scripts/check-wheel.sh [WORKDIR]      (default: a new temporary folder, removed after)
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/ctxplat-wheel.XXXXXX")}"
[ -n "${1:-}" ] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/dist" "$WORK/project"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" -q wheel --no-deps -w "$WORK/dist" "$SRC" 2>&1 | { grep -v "is ignored" || true; }
"$WORK/venv/bin/pip" -q install "$WORK"/dist/pytest_ctxplat-*.whl 2>&1 | { grep -v "is ignored" || true; }
cd "$WORK/project"
# a user's project: one SLO test naming a built-in workload, nothing else
cat > test_users_project.py <<'PY'
import pytest


@pytest.mark.slo(ttft_p95_ms=5000, error_rate_max=0.0)
@pytest.mark.workload("quickstart", users=2, turns=2)
def test_builtin_workload_from_the_wheel(ctxplat_run):
    result = ctxplat_run()
    assert result.metrics["requests"] == 4
    assert result.hit_rates.request is not None
PY
export PATH="$WORK/venv/bin:$PATH"
python - <<'PY'
import pathlib, pytest_ctxplat
src = pathlib.Path(pytest_ctxplat.__file__).resolve()
assert "site-packages" in str(src), f"imported from the source tree: {src}"
print("installed at", src.parent)
PY
pytest -p no:cacheprovider -q --ctxplat-sim-speedup=20 test_users_project.py
pytest -p no:cacheprovider -q --collect-only --ctxplat-server vllm-cpu test_users_project.py \
    | tail -1
ctxplat run coding-agent --set users=2 --set duration_s=2 --sim-speedup 20
ctxplat run coding-agent --set users=2 --set duration_s=30 --set start_spread_s=0 \
    --sim-speedup 20 --json run.json
python -c "import json; d = json.load(open('run.json')); assert d['metrics']['requests'] > 0, d['metrics']"
ctxplat simulate trace-replay --set first_requests=20 --profile h100-llama8b-dram
ctxplat analyze coding-agent --set users=2 --duration 600 > /dev/null
test -s run.json
echo "wheel check passed"
