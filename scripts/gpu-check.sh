#!/usr/bin/env bash
# The GPU check (issue "CUDA for real"), run from the repo root on a GPU machine:
#
#   scripts/gpu-check.sh [cuda|cpu]
#
# Needs gpu/diffuse and gpu/device-test (the CUDA binary and tests/device.rs's executable,
# from `make cuda` with TESTS=1; .xz versions are unpacked), and for the PyTorch columns
# diffusers' wheel (and importlib_metadata's) in gpu/wheels. `cpu` runs the same steps on the
# CPU: the dry run this machine can do (MNIST_STEPS, CIFAR_STEPS and SAMPLE_N shrink it). Writes $OUT/report.md (or gpu-report/report.md):
# 1. correctness on the device (tests/device.rs: golden UNet, q_sample vs CPU, golden
#    sampler chains, 50 training steps vs the CPU and the checkpoint back on the CPU);
# 2. speed: train step images/s (mnist preset batch 64, cifar10 preset batch 128) and
#    DDIM-50 sampling of 256 images, ours and diffusers' UNet2DModel (eager, torch.compile);
# 3. the steering and editing commands (RePaint, trace, invert, interpolate, loss by t) on
#    the device, each with its one-line result and time;
# 4. NCCL, one rank (issue "Data-parallel"): with gpu/diffuse-nccl (FEATURES=nccl make cuda)
#    and Open MPI's mpirun on the machine, 20 training steps under `mpirun -np 1` (gradients
#    all-reduced by NCCL) against the same run without a launcher: losses within 1e-5.
set -uo pipefail
dev=${1:-cuda}
out=${OUT:-gpu-report}
mkdir -p "$out"
report="$out/report.md"
tmp=$(mktemp -d)
for f in gpu/*.xz; do [ -e "$f" ] && xz -dkf "$f"; done
chmod +x gpu/diffuse gpu/device-test 2>/dev/null
bin=${DIFFUSE_BIN:-gpu/diffuse}
[ -x "$bin" ] || bin=target/release/diffuse
tests=gpu/device-test
say() { echo "$*" | tee -a "$report"; }
# cudarc opens cuBLAS, cuRAND and the driver at run time: let it find the toolkit's and the
# Python wheels' libraries (PyTorch's nvidia-* packages) as well as the system's.
wheel_libs=$(python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "**", "lib"), recursive=True)})))
PY
)
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64:$wheel_libs"
: >"$report"
say "# diffuse GPU check ($dev), $(date -u +%FT%TZ)"
say ""
say "- machine: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
say "- binary: $($bin --version)"
say "- first use: $($bin noise data/sample.png --t 500 --device "$dev" -o "$tmp/probe.png" 2>&1 | tail -1)"

say ""
say "## 1. Correctness on the device"
say '```'
DIFFUSE_TEST_DEVICE=$dev DIFFUSE_REPO=$PWD timeout 150 "$tests" --test-threads 1 --nocapture 2>&1 |
  grep -E "device |max abs|tolerance|^test |test result|panicked|error" | tee -a "$report"
say '```'

say ""
say "## 2. Speed"
export HF_HUB_OFFLINE=1 DIFFUSE_LOG_SECS=1000
ips() { # median images/s of loss.csv rows after the first 5
  awk -F, 'NR > 6 {print $4}' "$1" | sort -n | awk '{a[NR] = $1} END {print (NR ? a[int((NR + 1) / 2)] : "?")}'
}
python3 - "$tmp/rgb" <<'PY'
import sys, os, numpy as np
from PIL import Image
d = sys.argv[1]; os.makedirs(d)
rng = np.random.default_rng(0)
for i in range(1024):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f"{d}/{i}.png")
PY
run_ours() { # name model-config dataset batch steps
  local name=$1 cfg=$2 data=$3 b=$4 steps=$5
  timeout 150 $bin train --device "$dev" --model-config "$cfg" --dataset "$data" --batch-size "$b" \
    --train-steps "$steps" --log-every 1 --sample-every 0 --checkpoint-every 100000 -n 4 \
    -o "$tmp/$name" >/dev/null 2>"$tmp/$name.err" || { say "| $name train | failed: $(tail -1 "$tmp/$name.err") |"; return; }
  local t1=$(date +%s.%N)
  timeout 90 $bin sample --device "$dev" --model "$tmp/$name" -n "${SAMPLE_N:-256}" --batch-size 256 --steps 50 -o "$tmp/$name.png" >/dev/null 2>"$tmp/$name.serr"
  local t2=$(date +%s.%N)
  say "| $name | ours | $(ips "$tmp/$name/loss.csv") | $(python3 -c "print(f'{$t2 - $t1:.2f}')") s (whole command) |"
}
say "| model, batch | side | train images/s | DDIM-50, 256 images |"
say "|---|---|---|---|"
run_ours mnist-b64 mnist mnist 64 "${MNIST_STEPS:-200}"
run_ours cifar10-b128 cifar10 "$tmp/rgb" 128 "${CIFAR_STEPS:-40}"
if [ "$dev" = cuda ] && ls gpu/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu/wheels/*.whl && export PYTHONPATH=/tmp/site
  for spec in "mnist-b64 models/mnist/config.json 64" "cifar10-b128 models/cifar10/config.json 128"; do
    read -r name cfg b <<<"$spec"
    for mode in eager compile; do
      limit=90; [ "$mode" = compile ] && limit=120
      j=$(timeout $limit python3 scripts/gpu_peer.py "$cfg" "$b" 20 256 "$mode" 2>"$tmp/peer.err" | tail -1)
      if [ -n "$j" ]; then
        say "| $name | PyTorch $mode | $(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["train_images_per_s"], "|", d["ddim50_s"], "s (loop only)")') |"
      else
        say "| $name | PyTorch $mode | failed: $(tail -1 "$tmp/peer.err") | |"
      fi
    done
  done
fi

say ""
say "## 3. Steering and editing on the device (smoke: the mnist-b64 model above)"
say "| command | result | seconds |"
say "|---|---|---|"
edit() { # name, then the diffuse arguments
  local name=$1; shift
  local t1=$(date +%s.%N)
  if out=$(timeout 90 $bin "$@" --device "$dev" 2>&1); then
    local t2=$(date +%s.%N)
    say "| $name | ok: $(echo "$out" | grep -v '^wrote' | tail -1 | tr '|' '/') | $(python3 -c "print(f'{$t2 - $t1:.2f}')") |"
  else
    say "| $name | failed: $(echo "$out" | tail -1 | tr '|' '/') | |"
  fi
}
m="$tmp/mnist-b64"
$bin data show --split test -n 1 --seed 1 -o "$tmp/a.png" >/dev/null 2>&1
$bin data show --split test -n 1 --seed 2 -o "$tmp/b.png" >/dev/null 2>&1
edit "RePaint, center, 50 steps" sample --model "$m" --init "$tmp/a.png" --mask center -n 64 --steps 50 --jump-length 10 --jump-n-sample 3 -o "$tmp/rp.png"
edit "x0 trace, DPM-Solver++ 20" sample --model "$m" -n 16 --trace "$tmp/trace.png" -o "$tmp/tr.png"
edit "invert 2 digits, 50 steps, refine 6" invert "$tmp/a.png" "$tmp/b.png" --model "$m" -o "$tmp/l.safetensors" --reconstruction "$tmp/rec.png"
edit "interpolate, 8 frames" interpolate "$tmp/a.png" "$tmp/b.png" --model "$m" --steps 20 --refine 2 -o "$tmp/i.png" --gif "$tmp/i.gif"
edit "loss by t, 512 digits" eval --loss-by-t --model "$m" -o "$tmp/lbt.png"
say ""
say "## 4. NCCL, one rank"
nccl_bin=gpu/diffuse-nccl
if [ ! -x "$nccl_bin" ] || ! command -v mpirun >/dev/null; then
  say "skipped: needs $nccl_bin (FEATURES=nccl make cuda) and mpirun (Open MPI) on this machine"
else
  nargs=(train --dataset mnist --train-steps 20 --log-every 1 --sample-every 0 --num 1 --lr-schedule constant --device "$dev")
  $nccl_bin "${nargs[@]}" -o "$tmp/n1" >/dev/null 2>&1
  line=$(mpirun --allow-run-as-root -np 1 $nccl_bin "${nargs[@]}" -o "$tmp/n2" 2>&1 | grep "trained to")
  worst=$(paste -d, <(cut -d, -f2 "$tmp/n1/loss.csv" | tail -n +2) <(cut -d, -f2 "$tmp/n2/loss.csv" | tail -n +2) |
    awk -F, '{d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d} END {printf "%.2e", m}')
  say "20 steps under mpirun -np 1 (NCCL all-reduce) vs no launcher: worst relative loss difference $worst (tolerance 1e-5); $line"
fi
rm -rf "$tmp"
echo "report: $report"
