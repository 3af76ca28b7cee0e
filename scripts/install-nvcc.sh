#!/usr/bin/env bash
# Install NVIDIA's nvcc 13.0 from PyPI (no driver, GPU or root needed) and print the nvcc path on stdout
# (everything else goes to stderr). Used by .ci/run and scripts/gpu-check.sh; see DEVELOPERS.md "CUDA".
#
#   export NVCC="$(scripts/install-nvcc.sh)"      # then cargo build compiles kernels/*.cu for every target
#   FERROTUNE_NVCC_VENV=/opt/nvcc scripts/install-nvcc.sh
#
# Idempotent: an existing install is reused. The pins are the versions the kernels are checked with; the wheels
# are nvcc + ptxas (nvidia-cuda-nvcc), cicc (nvidia-nvvm), the CUDA headers (nvidia-cuda-runtime,
# nvidia-cuda-crt) and libcu++ (nvidia-cuda-cccl), about 150 MB.
set -euo pipefail

VENV="${FERROTUNE_NVCC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrotune-ci/nvcc-13.0}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"

find_nvcc() { ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1 || true; }

NVCC="$(find_nvcc)"
if [ -z "$NVCC" ] || ! "$NVCC" --version >/dev/null 2>&1; then
    echo "installing nvcc 13.0 from PyPI into $VENV ..." >&2
    "$PYTHON" -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime nvidia-cuda-crt 'nvidia-nvvm==13.0.*' \
        nvidia-cuda-cccl==13.0.85 >&2
    NVCC="$(find_nvcc)"
    if [ -z "$NVCC" ] || ! "$NVCC" --version >/dev/null 2>&1; then
        echo "error: nvcc not found under $VENV after pip install" >&2
        exit 1
    fi
fi
echo "$NVCC"
