#!/usr/bin/env bash
# `make gpu-bundle`: everything the GPU check (scripts/gpu-check.sh) runs, built here and packed
# to travel to a GPU machine in one device call (64 MiB carried, tree included):
#   gpu/bundle.tar.xz    the CUDA binary, the device test (tests/device.rs), the cuDNN build
#                        with its device test and,
#                        where Open MPI is installed, the NCCL build: one xz stream with a
#                        256 MiB dictionary, so what they share (Candle's PTX, most of the code)
#                        is stored once (3 binaries: 20 MB, against 53 MB xz'd one by one)
#   gpu/libkprof.so, gpu/libcupti.so.13.xz   the kernel profiler (`make gpu-profiler`)
# Then: scripts/gpu-carry.sh slim; carry gpu/bundle.tar.xz gpu/libkprof.so gpu/libcupti.so.13.xz
# gpu/wheels; scripts/gpu-carry.sh restore (README, "GPU (CUDA)").
set -euo pipefail
cd "$(dirname "$0")/.."
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# The builds share target/cuda, so each variant is copied out before the next one. The cuDNN
# build comes with its own device test (device-test-cudnn: its convolutions are cuDNN's).
# QUICK=1 leaves out the NCCL build; QUICK=1 CUDNN=0 packs the CUDA binary and the device test
# alone (18.7 MB; what sections 1, 2, 3 and 5 need with CUDNN=0): no feature switches, so an
# incremental build takes about a minute here.
if [ "${CUDNN:-1}" = 1 ]; then
  cudnn_test=$(FEATURES=cudnn TESTS=1 ./scripts/cuda-build.sh | tail -1)
  cp target/cuda/release/diffuse "$stage/diffuse-cudnn"
  cp "$cudnn_test" "$stage/device-test-cudnn"
fi
if [ "${QUICK:-0}" != 1 ] && command -v mpicc >/dev/null 2>&1; then
  FEATURES=nccl ./scripts/cuda-build.sh
  cp target/cuda/release/diffuse "$stage/diffuse-nccl"
elif [ "${QUICK:-0}" != 1 ]; then
  echo "gpu-bundle: no Open MPI here (mpicc), so no NCCL build in the bundle" >&2
fi
test_exe=$(TESTS=1 ./scripts/cuda-build.sh | tail -1)
cp target/cuda/release/diffuse "$stage/diffuse"
cp "$test_exe" "$stage/device-test"
strip "$stage"/*
make gpu-profiler
mkdir -p gpu
xz -T1 -6 -kf gpu/libcupti.so.13
(cd "$stage" && tar cf - *) | xz -T1 -6 --lzma2=preset=6,dict=256MiB >gpu/bundle.tar.xz.tmp
mv gpu/bundle.tar.xz.tmp gpu/bundle.tar.xz
ls -l gpu/bundle.tar.xz gpu/libkprof.so gpu/libcupti.so.13.xz
