#!/usr/bin/env bash
# The CUDA binary on a machine without an NVIDIA driver (CI, this project's machines): it must
# start, `--device auto` must fall back to the CPU with one warning line, and `--device cuda`
# must be one error line and exit 1, writing nothing. Run by .ci/run after `make cuda`.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=target/cuda/release/diffuse
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
check() { if eval "$2"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAILED: $1" >&2; fi; }
if ldd "$bin" | grep -qiE "libcuda|libcudart|libcublas|libcurand|libnvrtc"; then
  check "links no NVIDIA library" false
else
  check "links no NVIDIA library" true
fi
if [ -e /dev/nvidiactl ] || ldconfig -p 2>/dev/null | grep -q libcuda.so.1; then
  echo "an NVIDIA driver is installed here: the no-driver checks do not apply" >&2
else
  "$bin" noise data/sample.png --t 100 --device auto -o "$tmp/auto.png" >"$tmp/out" 2>"$tmp/err"
  check "--device auto exits 0" "[ $? -eq 0 ]"
  check "--device auto writes its PNG on the CPU" "[ -s $tmp/auto.png ]"
  check "--device auto warns in one line" "[ \$(wc -l <$tmp/err) -eq 1 ] && grep -q 'using the CPU' $tmp/err"
  "$bin" noise data/sample.png --t 100 --device cuda -o "$tmp/cuda.png" >"$tmp/out" 2>"$tmp/err"
  check "--device cuda exits 1" "[ $? -eq 1 ]"
  check "--device cuda says why in one line" "[ \$(wc -l <$tmp/err) -eq 1 ] && grep -q 'no NVIDIA driver' $tmp/err"
  check "--device cuda writes nothing" "[ ! -e $tmp/cuda.png ]"
fi
echo "cuda fallback: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
