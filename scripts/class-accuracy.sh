#!/usr/bin/env bash
# Per-class accuracy of a class-conditional digit model: for each guidance scale and class,
# draw N samples of that class (default sampler of the model, seed 0) and let `diffuse eval`'s
# classifier say which digit each shows; accuracy = the share it reads as the class asked for.
#   scripts/class-accuracy.sh MODEL OUT_DIR [N] [SCALES]
# Sample files already in OUT_DIR are scored again, not drawn again.
set -euo pipefail
model=${1:?model directory}
out=${2:?output directory}
n=${3:-100}
scales=${4:-1 2 4}
bin=${DIFFUSE:-target/release/diffuse}
mkdir -p "$out"
files=()
for w in $scales; do
  for c in 0 1 2 3 4 5 6 7 8 9; do
    f="$out/w${w}_c${c}.safetensors"
    [ -f "$f" ] || "$bin" sample --model "$model" --class "$c" --guidance "$w" -n "$n" --seed 0 \
      --device cpu -o "$out/w${w}_c${c}.png" --save-tensors "$f" > /dev/null
    files+=("$f")
  done
done
"$bin" eval "${files[@]}" --device cpu > "$out/eval.tsv"
# One row per scale: the share of class c among the samples asked to be c.
awk -F'\t' '
  /^#/ { print; next }
  $1 ~ /_c[0-9]\.safetensors$/ {
    match($1, /w[^_]*_c[0-9]/); tag = substr($1, RSTART, RLENGTH)
    split(tag, p, "_c"); w = substr(p[1], 2); c = p[2]
    split($NF, sh, ","); acc[w, c] = sh[c + 1]; ws[w] = 1
  }
  END {
    printf "guidance"; for (c = 0; c < 10; c++) printf "\t%d", c; printf "\tmean\n"
    for (w in ws) {
      printf "%s", w; s = 0
      for (c = 0; c < 10; c++) { printf "\t%.2f", acc[w, c]; s += acc[w, c] }
      printf "\t%.3f\n", s / 10
    }
  }' "$out/eval.tsv" | tee "$out/accuracy.tsv"
