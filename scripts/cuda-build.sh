#!/usr/bin/env bash
# `make cuda`: build diffuse with --features cuda (and FEATURES=cudnn) on any machine.
#
# Toolkit: a system CUDA (nvcc on PATH, or CUDA_HOME/bin/nvcc, or /usr/local/cuda) if one is
# found; else CUDA 13.0's compiler, headers and static runtime from PyPI wheels, installed into
# .cuda/ (ignored; 271 MB). 13.0 is pinned so the PTX loads on driver 580 (CUDA 13.0), the
# GPU machines' driver. No driver is needed to build: the driver, cuBLAS, cuRAND and NVRTC are
# loaded at run time (cudarc's dynamic loading) and the CUDA runtime is linked statically
# (vendor/candle-kernels), so the binary links against nothing of NVIDIA's and starts anywhere.
#
# CUDA_COMPUTE_CAP (default 90: H100/H200) picks the architecture without asking nvidia-smi.
# Outputs: target/cuda/release/diffuse and, with TESTS=1, the device test executable
# (tests/device.rs) whose path is printed last. CLIPPY=1 lints the build instead (with
# FEATURES=nccl: the NCCL code, which needs Open MPI to build).
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
features="cuda${FEATURES:+,$FEATURES}"

find_system_cuda() {
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then echo "$CUDA_HOME"; return; fi
  if command -v nvcc >/dev/null 2>&1; then dirname "$(dirname "$(command -v nvcc)")"; return; fi
  if [ -x /usr/local/cuda/bin/nvcc ]; then echo /usr/local/cuda; return; fi
}

cuda_home=$(find_system_cuda || true)
if [ -z "$cuda_home" ]; then
  cuda_home="$PWD/.cuda/nvidia/cu13"
  if [ ! -x "$cuda_home/bin/nvcc" ]; then
    echo "no CUDA toolkit found: installing CUDA 13.0 (nvcc, crt, cccl, runtime, nvvm) from PyPI into .cuda/" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target .cuda \
      nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 \
      nvidia-cuda-runtime==13.0.96 nvidia-nvvm==13.0.88
  fi
fi
export CUDA_HOME="$cuda_home" CUDA_PATH="$cuda_home" PATH="$cuda_home/bin:$PATH"
[ "${TOOLKIT_ONLY:-0}" = 1 ] && exit 0 # `make gpu-profiler` needs the headers alone
echo "CUDA toolkit: $CUDA_HOME ($(nvcc --version | tail -2 | head -1)); compute capability $CUDA_COMPUTE_CAP; features $features" >&2
if [ "${CLIPPY:-0}" = 1 ]; then
  exec cargo clippy --release --features "$features" --target-dir target/cuda -- -D warnings
fi
cargo build --release --features "$features" --target-dir target/cuda
if [ "${TESTS:-0}" = 1 ]; then
  cargo test --release --features "$features" --target-dir target/cuda --test device --no-run 2>&1 |
    tee /dev/stderr | sed -n 's/.*Executable tests\/device.rs (\(.*\))/\1/p'
fi
