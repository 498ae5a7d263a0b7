#!/usr/bin/env bash
# Sampling speed: DDIM-50 and DPM-Solver++-20, 64 samples of the mnist preset, ours (`diffuse
# sample`, wall time of the whole command, median of 3) and, with PEER_PYTHON, PyTorch+diffusers
# on a UNet2DModel of the same config.json (benches/peer_sample.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./target/release/diffuse
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A model with the mnist preset's shapes (untrained weights time the same as trained ones).
$bin train --dataset mnist --train-steps 1 --sample-every 0 --num 1 -o "$tmp/m" >/dev/null 2>&1
echo "| sampler | diffuse s | diffuse images/s | PyTorch s (glibc default / tuned) | PyTorch images/s (default / tuned) | diffuse / PyTorch (default / tuned) |"
echo "|---|---|---|---|---|---|"
peer=""
tuned=""
if [ -n "${PEER_PYTHON:-}" ]; then
  peer=$("$PEER_PYTHON" benches/peer_sample.py models/mnist/config.json)
  # glibc keeping freed memory, as mimalloc does for us: PyTorch's best case.
  tuned=$(MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967295 \
    "$PEER_PYTHON" benches/peer_sample.py models/mnist/config.json)
fi
for spec in "ddim 50 ddim-50" "dpm-solver++ 20 dpm-solver++-20"; do
  read -r sampler steps name <<<"$spec"
  times=()
  for _ in 1 2 3; do
    s=$(date +%s.%N)
    $bin sample --model "$tmp/m" --sampler "$sampler" --steps "$steps" --num 64 -o "$tmp/s.png" >/dev/null 2>&1
    times+=("$(echo "$(date +%s.%N) - $s" | bc)")
  done
  med=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
  ips=$(echo "scale=2; 64 / $med" | bc)
  read -r psec pips <<<"$(echo "$peer" | awk -v n="$name" '$1 == n {print $2, $3}')" || true
  read -r tsec tips <<<"$(echo "$tuned" | awk -v n="$name" '$1 == n {print $2, $3}')" || true
  if [ -n "${psec:-}" ] && [ -n "${tsec:-}" ]; then
    echo "| $name | $med | $ips | $psec / $tsec | $pips / $tips | $(echo "scale=2; $ips / $pips" | bc)x / $(echo "scale=2; $ips / $tips" | bc)x |"
  else
    echo "| $name | $med | $ips | - | - | - |"
  fi
done
