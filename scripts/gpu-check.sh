#!/usr/bin/env bash
# One command for an NVIDIA machine: build the kernels with nvcc, run every kernel test on the GPU against its CPU
# twin, then time each kernel against its torch equivalent and print a table (time, GB/s or TFLOP/s, % of the
# GPU's peak). Finishes in well under 8 minutes on a 16-core box with an H100/H200-class GPU (most of it is the
# first cargo build). See DEVELOPERS.md "CUDA".
#
#   scripts/gpu-check.sh                 # results also written to target/gpu-check/
#   PYTHON=/path/to/venv/bin/python scripts/gpu-check.sh
#
# Needs: the NVIDIA driver, cargo, python3 with torch (CUDA build) for the timing table. nvcc comes from NVCC,
# CUDA_HOME or PATH, else nvcc 13.0 is installed from PyPI (scripts/install-nvcc.sh; its cubins need a driver
# that supports CUDA 13, R580+; with an older driver point NVCC at a matching local toolkit).
#
# Steps and their time limits:
#   1. build the kernel harness tests and the bench with nvcc (fatbins: PTX compute_80 + sm_86/89/90) .. 300 s
#   2. FERROTUNE_KERNEL_TARGET=cuda cargo test -p ferrotune-kernels --features cuda --test harness ...... 60 s
#      (the same tests and tolerances as the CPU harness in CI, each buffer copied to the GPU and back)
#   3. the bench example (ferrotune kernels, training-sized shapes) .................................... 60 s
#   4. scripts/gpu_bench_torch.py (torch at the same shapes; SDPA flash backend for attention) ........ 90 s
# Not done yet: the SmolLM2-135M LoRA step against HF transformers + peft needs the CUDA tensor backend, whose
# ops are not wired to the kernels yet (DEVELOPERS.md, "State of the CUDA backend"); the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="target/gpu-check"
mkdir -p "$OUT"
SECONDS=0
step() { echo; echo "== [${SECONDS}s] $*"; }

if [ -z "${NVCC:-}" ]; then
    if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
        NVCC="$CUDA_HOME/bin/nvcc"
    elif command -v nvcc >/dev/null 2>&1; then
        NVCC="$(command -v nvcc)"
    else
        NVCC="$(scripts/install-nvcc.sh)"
    fi
fi
export NVCC
echo "nvcc: $NVCC ($("$NVCC" --version | tail -n1))"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

step "1/4 build with nvcc"
timeout 300 cargo test -p ferrotune-kernels --features cuda --test harness --no-run
timeout 300 cargo build -p ferrotune-kernels --features cuda --example gpu_bench

step "2/4 kernel tests on the GPU against the CPU twins"
FERROTUNE_KERNEL_TARGET=cuda timeout 60 cargo test -p ferrotune-kernels --features cuda --test harness 2>&1 | tee "$OUT/tests.log"

step "3/4 ferrotune kernels at training shapes"
timeout 60 cargo run -q -p ferrotune-kernels --features cuda --example gpu_bench | tee "$OUT/ferrotune.jsonl"

step "4/4 torch at the same shapes, and the table"
PYTHON="${PYTHON:-python3}"
if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    timeout 90 "$PYTHON" scripts/gpu_bench_torch.py "$OUT/ferrotune.jsonl" | tee "$OUT/table.txt"
else
    echo "no torch with CUDA in $PYTHON: skipping the torch comparison (set PYTHON to a venv with torch)"
fi

echo
echo "LoRA training step vs HF transformers + peft: skipped, the CUDA tensor backend is not wired to the kernels yet"
echo "== done in ${SECONDS}s; logs in $OUT/"
