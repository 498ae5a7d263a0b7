#!/usr/bin/env bash
# Data-parallel training on this machine (needs Open MPI; builds with --features mpi): the
# mnist preset at its default batch (64), 1 process x 2 threads against 2 ranks x 1 thread
# (`mpirun -np 2`), alternating, 3 rounds; median images/s of loss.csv rows (the first two
# rows, warm-up, left out) and rank 0's communication time per step from the summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
  echo "distributed bench: mpirun/mpicc not found (apt-get install libopenmpi-dev openmpi-bin libclang-dev); skipped"
  exit 0
fi
cargo build --release --features mpi -q
bin=./target/release/diffuse
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
steps=${DIST_STEPS:-60}
args=(train --dataset mnist --train-steps "$steps" --log-every 5 --sample-every 0 --num 1
  --checkpoint-every 100000)
median_ips() {
  tail -n +4 "$1/loss.csv" | cut -d, -f4 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
one=()
two=()
comm=()
for round in 1 2 3; do
  rm -rf "$tmp/a" "$tmp/b"
  RAYON_NUM_THREADS=2 $bin "${args[@]}" -o "$tmp/a" >/dev/null 2>&1
  one+=("$(median_ips "$tmp/a")")
  line=$(mpirun --allow-run-as-root --oversubscribe -np 2 -x RAYON_NUM_THREADS=1 \
    $bin "${args[@]}" -o "$tmp/b" 2>/dev/null | grep "trained to")
  two+=("$(median_ips "$tmp/b")")
  comm+=("$(echo "$line" | sed -n 's/.*communication \([0-9.]*\) ms per step.*/\1/p')")
  echo "round $round: 1x2 ${one[-1]} images/s, 2x1 ${two[-1]} images/s, communication ${comm[-1]} ms/step"
done
med() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
m1=$(med "${one[@]}")
m2=$(med "${two[@]}")
echo "| run | images/s (median of 3) | communication per step |"
echo "|---|---|---|"
echo "| 1 process x 2 threads | $m1 | - |"
echo "| 2 ranks x 1 thread (mpirun) | $m2 | $(med "${comm[@]}") ms |"
echo "2 ranks / 1 process: $(echo "scale=3; $m2 / $m1" | bc)"
