#!/usr/bin/env bash
# The GPU check (issue "CUDA for real"), run from the repo root on a GPU machine:
#
#   scripts/gpu-check.sh [cuda|cpu]
#
# Needs gpu/diffuse and gpu/device-test (the CUDA binary and tests/device.rs's executable,
# from `make cuda` with TESTS=1; .xz versions and gpu/bundle.tar.xz from `make gpu-bundle`,
# which adds the cuDNN and NCCL builds, are unpacked), and for the PyTorch columns
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
#    all-reduced by NCCL) against the same run without a launcher: losses within 1e-5;
# 5. where the GPU time goes: with gpu/libkprof.so (`make gpu-profiler`, scripts/kprof.cpp)
#    injected through CUDA_INJECTION64_PATH, the top kernels of our cifar10 train step (f32,
#    TF32, without our CUDA kernels, and the cuDNN build with TF32), our DDIM sampling, and
#    PyTorch's train step.
# Sections 1 and 2 also run the switches: DIFFUSE_CUDA_KERNELS=0 (Candle's ops in place of the
# hand-written group norm and AdamW, which are the default) and DIFFUSE_TF32=1 (off by default).
# SECTIONS (default "1 2 3 4 5") picks sections; PEER_MODES (default "eager compile") the
# PyTorch modes; TF32=1 adds rows with DIFFUSE_TF32=1 (ours) and TF32 off (PyTorch); DTYPES
# (default "bf16 f16") the `sample --dtype` rows (each timed and compared with the f32 draw);
# CUDNN=0 leaves out the cuDNN build's rows. PROFILES (default "f32 tf32 candle cudnn sample
# peer"; "mnist" adds the mnist preset) picks section 5's profiles, PROFILE_STEPS their steps.
set -uo pipefail
dev=${1:-cuda}
out=${OUT:-gpu-report}
mkdir -p "$out"
report="$out/report.md"
tmp=$(mktemp -d)
# gpu/bundle.tar.xz (scripts/gpu-bundle.sh): the executables in one archive whose 256 MiB
# dictionary stores what they share (Candle's PTX, most of the code) once.
for f in gpu/*.xz; do [ -e "$f" ] && [ "$f" != gpu/bundle.tar.xz ] && xz -dkf "$f"; done
[ -e gpu/bundle.tar.xz ] && tar -C gpu -xJf gpu/bundle.tar.xz
chmod +x gpu/diffuse gpu/device-test gpu/diffuse-cudnn gpu/device-test-cudnn gpu/diffuse-nccl 2>/dev/null
bin=${DIFFUSE_BIN:-gpu/diffuse}
[ -x "$bin" ] || bin=target/release/diffuse
tests=gpu/device-test
say() { echo "$*" | tee -a "$report"; }
want() { [[ " ${SECTIONS:-1 2 3 4 5} " == *" $1 "* ]]; }
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
# The cuDNN the cuDNN build loads (PyTorch's, through LD_LIBRARY_PATH above) and PyTorch's own.
say "- cuDNN: $(python3 -c 'import torch; print(torch.backends.cudnn.version(), "(PyTorch", torch.__version__ + ")")' 2>/dev/null || echo 'no PyTorch here')"
say "- first use: $($bin noise data/sample.png --t 500 --device "$dev" -o "$tmp/probe.png" 2>&1 | tail -1)"

if want 1; then
say ""
say "## 1. Correctness on the device"
say '```'
DIFFUSE_TEST_DEVICE=$dev DIFFUSE_REPO=$PWD timeout 150 "$tests" --test-threads 1 --nocapture 2>&1 |
  grep -E "device |max abs|tolerance|launches|^test |test result|panicked|error" | tee -a "$report"
# The switches the default leaves off: the model and 50 training steps again with each.
for vars in DIFFUSE_CUDA_KERNELS=0 DIFFUSE_TF32=1; do
  say "with $vars:"
  env $vars DIFFUSE_TEST_DEVICE=$dev DIFFUSE_REPO=$PWD timeout 120 "$tests" golden_unets fifty_training_steps \
    --test-threads 1 --nocapture 2>&1 | grep -E "max abs|relative|launches|^test |test result|panicked" | tee -a "$report"
done
# The cuDNN build's convolutions (src/kernels/cudnn_conv.rs): conv2d and its gradients, the
# half-precision conv2d, golden UNets and 50 training steps against the CPU, f32 (FMA math)
# and with TF32.
if [ "${CUDNN:-1}" = 1 ] && [ -x gpu/device-test-cudnn ]; then
  for vars in DIFFUSE_TF32=0 DIFFUSE_TF32=1; do
    say "the cuDNN build, $vars:"
    env $vars DIFFUSE_TEST_DEVICE=$dev DIFFUSE_REPO=$PWD timeout 120 gpu/device-test-cudnn conv2d_and half_precision golden_unets \
      fifty_training_steps --test-threads 1 --nocapture 2>&1 |
      grep -E "max abs|relative|launches|tolerance|^test |test result|panicked|cuDNN" | tee -a "$report"
  done
fi
say '```'
fi

export HF_HUB_OFFLINE=1 DIFFUSE_LOG_SECS=1000
python3 - "$tmp/rgb" <<'PY'
import os, random, struct, sys, zlib
d = sys.argv[1]; os.makedirs(d)
rng = random.Random(0)
chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
for i in range(1024):  # 32x32 RGB noise PNGs, written without PIL or numpy
    rows = b"".join(b"\0" + rng.randbytes(96) for _ in range(32))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0))
    open(f"{d}/{i}.png", "wb").write(png + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
PY
if [ "$dev" = cuda ] && ls gpu/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu/wheels/*.whl && export PYTHONPATH=/tmp/site
fi
train_args() { # model-config dataset batch steps out
  echo train --device "$dev" --model-config "$1" --dataset "$2" --batch-size "$3" --train-steps "$4" \
    --log-every 1 --sample-every 0 --checkpoint-every 100000 -n 4 -o "$5"
}
if want 2 || want 3; then
say ""
say "## 2. Speed"
ips() { # median images/s of loss.csv rows after the first 5
  awk -F, 'NR > 6 {print $4}' "$1" | sort -n | awk '{a[NR] = $1} END {print (NR ? a[int((NR + 1) / 2)] : "?")}'
}
run_ours() { # name model-config dataset batch steps [VAR=1 ...: the variant's environment] [binary]
  local name=$1 cfg=$2 data=$3 b=$4 steps=$5 vars=${6:-} exe=${7:-$bin}
  local prec=${vars:-f32}
  [ "$exe" != "$bin" ] && prec="$prec, $($exe --version | sed 's/.*(//; s/)//') build"
  # The cuDNN build logs each shape's algorithm choices (read into the report below).
  local log=; [ "$exe" = gpu/diffuse-cudnn ] && log="RUST_LOG=warn,hf_hub=off,diffuse::progress=info,diffuse::kernels::cudnn_conv=debug"
  timeout 150 env $vars $log $exe $(train_args "$cfg" "$data" "$b" "$steps" "$tmp/$name") >/dev/null 2>"$tmp/$name.err" ||
    { say "| $name | ours | $prec | failed: $(tail -1 "$tmp/$name.err") | |"; return; }
  local t1=$(date +%s.%N)
  timeout 90 env $vars $exe sample --device "$dev" --model "$tmp/$name" -n "${SAMPLE_N:-256}" --batch-size 256 --steps 50 \
    --save-tensors "$tmp/$name.f32.st" -o "$tmp/$name.png" >/dev/null 2>"$tmp/$name.serr"
  local t2=$(date +%s.%N)
  say "| $name | ours | $prec | $(ips "$tmp/$name/loss.csv") | $(python3 -c "print(f'{$t2 - $t1:.2f}')") s (whole command) |"
  [ -n "$vars" ] && return
  for dt in ${DTYPES-bf16 f16}; do # sample --dtype: time, and distance from the f32 draw
    t1=$(date +%s.%N)
    if timeout 90 $exe sample --device "$dev" --model "$tmp/$name" -n "${SAMPLE_N:-256}" --batch-size 256 --steps 50 \
      --dtype "$dt" --save-tensors "$tmp/$name.$dt.st" -o "$tmp/$name.$dt.png" >/dev/null 2>"$tmp/$name.serr"; then
      t2=$(date +%s.%N)
      say "| $name | ours | sampling --dtype $dt ($(st_diff "$tmp/$name.$dt.st" "$tmp/$name.f32.st")) | | $(python3 -c "print(f'{$t2 - $t1:.2f}')") s (whole command) |"
    else
      say "| $name | ours | sampling --dtype $dt | | failed: $(tail -1 "$tmp/$name.serr") |"
    fi
  done
}
st_diff() { # rms and max |a - b| of two f32 safetensors files (key "samples"), pure Python
  python3 - "$1" "$2" <<'PY'
import array, json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    s, e = h["samples"]["data_offsets"]; a = array.array("f"); a.frombytes(b[8 + n + s:8 + n + e]); return a
a, b = load(sys.argv[1]), load(sys.argv[2])
d = [abs(x - y) for x, y in zip(a, b)]
print(f"vs f32: rms {(sum(x * x for x in d) / len(d)) ** 0.5:.1e}, max {max(d):.2f}")
PY
}
say "| model, batch | side | precision | train images/s | DDIM-50, 256 images |"
say "|---|---|---|---|---|"
run_ours mnist-b64 mnist mnist 64 "${MNIST_STEPS:-200}"
run_ours cifar10-b128 cifar10 "$tmp/rgb" 128 "${CIFAR_STEPS:-40}"
run_ours cifar10-b128-candle-gn cifar10 "$tmp/rgb" 128 "${CIFAR_STEPS:-40}" DIFFUSE_CUDA_KERNELS=0
if [ "${TF32:-0}" = 1 ]; then
  run_ours mnist-b64-tf32 mnist mnist 64 "${MNIST_STEPS:-200}" DIFFUSE_TF32=1
  run_ours cifar10-b128-tf32 cifar10 "$tmp/rgb" 128 "${CIFAR_STEPS:-40}" DIFFUSE_TF32=1
fi
if [ "${CUDNN:-1}" = 1 ] && [ -x gpu/diffuse-cudnn ]; then # the cuDNN build (FEATURES=cudnn make cuda)
  run_ours mnist-b64-cudnn mnist mnist 64 "${MNIST_STEPS:-200}" "" gpu/diffuse-cudnn
  run_ours cifar10-b128-cudnn cifar10 "$tmp/rgb" 128 "${CIFAR_STEPS:-40}" "" gpu/diffuse-cudnn
  run_ours cifar10-b128-cudnn-tf32 cifar10 "$tmp/rgb" 128 "${CIFAR_STEPS:-40}" DIFFUSE_TF32=1 gpu/diffuse-cudnn
  # PyTorch eager's own default: TF32 and cuDNN's non-deterministic algorithms allowed.
  run_ours cifar10-b128-cudnn-tf32-nondet cifar10 "$tmp/rgb" 128 "${CIFAR_STEPS:-40}" "DIFFUSE_TF32=1 DIFFUSE_CUDNN_DETERMINISTIC=0" gpu/diffuse-cudnn
  run_ours mnist-b64-cudnn-tf32 mnist mnist 64 "${MNIST_STEPS:-200}" DIFFUSE_TF32=1 gpu/diffuse-cudnn
fi
if [ -n "${PYTHONPATH:-}" ]; then
  for spec in "mnist-b64 models/mnist/config.json 64" "cifar10-b128 models/cifar10/config.json 128"; do
    read -r name cfg b <<<"$spec"
    for mode in ${PEER_MODES:-eager compile}; do
      for tf in default $([ "${TF32:-0}" = 1 ] && echo 0); do
        limit=90; [ "$mode" = compile ] && limit=120
        prec="TF32 convs (PyTorch's default)"; [ "$tf" = 0 ] && prec=f32
        j=$(PEER_TF32=$tf timeout $limit python3 scripts/gpu_peer.py "$cfg" "$b" 20 256 "$mode" 2>"$tmp/peer.err" | tail -1)
        if [ -n "$j" ]; then
          say "| $name | PyTorch $mode | $prec | $(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["train_images_per_s"], "|", d["ddim50_s"], "s (loop only)")') |"
        else
          say "| $name | PyTorch $mode | $prec | failed: $(tail -1 "$tmp/peer.err") | |"
        fi
      done
    done
  done
fi
fi

if want 2 && ls "$tmp"/*-cudnn*.err >/dev/null 2>&1; then # what cuDNN chose, per shape and pass
  say ""
  say "cuDNN's choices in the cuDNN build's training runs (pass, type, shape: algorithm, its place in the heuristics' list, workspace; the list's first entry):"
  say '```'
  cat "$tmp"/*-cudnn*.err | grep -o 'cuDNN .*' | sort -u | head -${CUDNN_LINES:-200} | tee -a "$report"
  say '```'
fi

if want 2; then # same seed, data, t and noise: each variant's losses against the default f32 build's
  say ""
  for v in "$tmp"/mnist-b64-* "$tmp"/cifar10-b128-*; do
    [ -f "$v/loss.csv" ] || continue
    base="$tmp/$(basename "$v" | grep -oE '^(mnist-b64|cifar10-b128)')"
    [ -f "$base/loss.csv" ] || continue
    say "- $(basename "$v") vs $(basename "$base"): $(python3 - "$v/loss.csv" "$base/loss.csv" <<'PY'
import csv, sys
def losses(p):
    rows = list(csv.reader(open(p)))
    i = rows[0].index("loss")
    return [float(r[i]) for r in rows[1:]]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
n = min(len(a), len(b))
w = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a[:n], b[:n]))
print(f"worst relative loss difference over {n} steps {w:.2e} (last {a[n - 1]:.5f} / {b[n - 1]:.5f})")
PY
)"
  done
fi

if want 3; then
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
fi
if want 4; then
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
fi

if want 5; then
say ""
say "## 5. Where the GPU time goes (CUPTI, scripts/kprof.cpp)"
if [ "$dev" != cuda ] || [ ! -f gpu/libkprof.so ]; then
  say "skipped: needs a CUDA device and gpu/libkprof.so (make gpu-profiler)"
else
  prof() { # title, then the command
    local title=$1; shift
    say ""
    say "### $title"
    if CUDA_INJECTION64_PATH=$PWD/gpu/libkprof.so KPROF_OUT="$tmp/k.md" KPROF_TOP=${KPROF_TOP:-15} timeout 150 "$@" >/dev/null 2>"$tmp/k.err"; then
      cat "$tmp/k.md" | tee -a "$report"
    else
      say "failed: $(tail -1 "$tmp/k.err")"
    fi
  }
  steps=${PROFILE_STEPS:-10}
  pw() { [[ " ${PROFILES:-f32 tf32 candle cudnn sample peer} " == *" $1 "* ]]; }
  pw f32 && prof "ours: cifar10 preset, batch 128, $steps train steps (f32; includes a final 4-image DDIM grid)" \
    $bin $(train_args cifar10 "$tmp/rgb" 128 "$steps" "$tmp/p1")
  pw tf32 && prof "ours: the same with DIFFUSE_TF32=1" env DIFFUSE_TF32=1 $bin $(train_args cifar10 "$tmp/rgb" 128 "$steps" "$tmp/p2")
  pw candle && prof "ours: the same with DIFFUSE_CUDA_KERNELS=0 (Candle's group norm, AdamW and convolution)" env DIFFUSE_CUDA_KERNELS=0 \
    $bin $(train_args cifar10 "$tmp/rgb" 128 "$steps" "$tmp/p3")
  if pw cudnn && [ "${CUDNN:-1}" = 1 ] && [ -x gpu/diffuse-cudnn ]; then
    prof "ours, cuDNN build: the same with DIFFUSE_TF32=1" env DIFFUSE_TF32=1 \
      gpu/diffuse-cudnn $(train_args cifar10 "$tmp/rgb" 128 "$steps" "$tmp/p4")
  fi
  pw mnist && prof "ours: mnist preset, batch 64, $((steps * 3)) train steps (f32; includes a final 4-image DDIM grid)" \
    $bin $(train_args mnist mnist 64 "$((steps * 3))" "$tmp/p5")
  pw sample && [ -d "$tmp/p1" ] && prof "ours: DDIM-50 sampling of 128 images (cifar10 preset, f32)" \
    $bin sample --device "$dev" --model "$tmp/p1" -n 128 --batch-size 128 --steps 50 -o "$tmp/p1.png"
  if pw peer && [ -n "${PYTHONPATH:-}" ]; then
    prof "PyTorch eager (default precision): cifar10 preset, batch 128, 3 + $steps train steps" \
      python3 scripts/gpu_peer.py models/cifar10/config.json 128 "$steps" 0 eager
  fi
fi
fi
rm -rf "$tmp"
echo "report: $report"
