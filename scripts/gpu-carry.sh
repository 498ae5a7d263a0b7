#!/usr/bin/env bash
# Fits a GPU run's copy of the tree, with the xz'd binaries from gpu/, under the 64 MiB the
# device tool carries: the tree it copies is the tracked files, and the GPU check never reads
# the ones below (tests on the device read tests/data's golden files, models/*/config.json,
# data/ and scripts/).
#   scripts/gpu-carry.sh slim      take them out of the index and hide them (.git/info/exclude)
#   scripts/gpu-carry.sh restore   put both back (the files on disk are never touched)
#   scripts/gpu-carry.sh size [carried paths...]   MB the tree (and those paths) would carry
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
left_out=(vendor docs assets models/mnist-cond tests/data/unet_tiny_bin tests/data/unet_tiny_fp16
  tests/data/guided_chains.safetensors benches examples)
begin="# gpu-carry.sh: begin" end="# gpu-carry.sh: end"
exclude=.git/info/exclude
case ${1:-} in
slim)
  if grep -qF "$begin" "$exclude" 2>/dev/null; then
    echo "gpu-carry.sh: already slim (run restore first)" >&2
    exit 1
  fi
  if ! git diff --cached --quiet; then
    echo "gpu-carry.sh: the index has staged changes; commit or unstage them first" >&2
    exit 1
  fi
  git rm -r -q --cached "${left_out[@]}"
  { echo "$begin"; printf '/%s\n' "${left_out[@]}"; echo "$end"; } >>"$exclude"
  echo "slim: ${left_out[*]} left out of the copy until 'scripts/gpu-carry.sh restore'"
  ;;
restore)
  git reset -q
  sed -i "/^$begin\$/,/^$end\$/d" "$exclude"
  echo "restored"
  ;;
size)
  shift
  { git ls-files -z --cached --others --exclude-standard; [ $# -gt 0 ] && printf '%s\0' "$@"; } |
    xargs -0 du -sb 2>/dev/null | awk '{s += $1} END {printf "%.1f MB (limit 64 MiB = 67.1 MB)\n", s / 1e6}'
  ;;
*)
  echo "usage: scripts/gpu-carry.sh slim | restore | size [carried paths...]" >&2
  exit 2
  ;;
esac
