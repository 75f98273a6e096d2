#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Incremental backup time against disk size: disks of 1, 4 and 16 GiB, each with the same 40 MiB
# of scattered writes recorded by a dirty bitmap.  rb-delta --bitmap vs the full-scan rb-delta vs
# qemu-img convert -B BASE of the same NEW, one run.  BASE is a sparse raw file with one non-zero
# byte in every 64 KiB (files stay small, but a full scan must read every byte); NEW is a qcow2
# on top of it holding bitmap b and the writes.
set -euo pipefail
. "$(dirname "$0")/common.sh"
sizes=${SIZES:-"1 4 16"}           # GiB
dirty_mb=${DIRTY_MB:-40}
runs=${RUNS:-3}
utils="$build/utils"

declare -A tb tf tq
for g in $sizes; do
  size=$((g << 30))
  base="$work/base$g.raw" new="$work/new$g.qcow2"
  truncate -s "$size" "$base"
  python3 - "$base" "$size" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for off in range(0, int(sys.argv[2]), 65536):
    os.pwrite(fd, b"\x01", off)
os.close(fd)
PY
  qemu-img create -q -f qcow2 -b "$base" -F raw "$new"
  qemu-img bitmap --add "$new" b
  # The same dirty data on every size: 64 KiB writes spread over the disk (fixed seed).
  args=()
  RANDOM=42
  for i in $(seq $((dirty_mb * 16))); do
    off=$(( ((RANDOM << 15 | RANDOM) % (size >> 16)) << 16 ))
    args+=(-c "write -P $((i % 250 + 2)) $off 64k")
  done
  qemu-io "${args[@]}" "$new" >/dev/null
done

# keep_best ARRAY KEY SECONDS
keep_best () {
  local -n a=$1
  if [ -z "${a[$2]:-}" ] || [ "$(echo "$3 < ${a[$2]}" | bc -l)" = 1 ]; then a[$2]=$3; fi
}
# Rounds interleave the sizes and tools, so a busy moment of the machine hits them all alike.
for _ in $(seq "$runs"); do
  for g in $sizes; do
    base="$work/base$g.raw" new="$work/new$g.qcow2"
    keep_best tb "$g" "$(best_of 1 bash -c "rm -f '$work/out.qcow2'; '$utils/rb-delta' --bitmap b '$base' '$new' '$work/out.qcow2'")"
    keep_best tf "$g" "$(best_of 1 bash -c "rm -f '$work/full.qcow2'; '$utils/rb-delta' '$base' '$new' '$work/full.qcow2'")"
    keep_best tq "$g" "$(best_of 1 bash -c "rm -f '$work/q.qcow2'; qemu-img convert -O qcow2 -B '$base' -F raw '$new' '$work/q.qcow2'")"
    # The increment is right: NEW through its chain, and the full scan's guest view.
    qemu-img compare -q "$new" "$work/out.qcow2"
    qemu-img compare -q "$work/out.qcow2" "$work/full.qcow2"
  done
done

echo "incremental backup of ${dirty_mb} MiB of scattered writes; seconds, best of $runs"
printf '%6s %14s %14s %22s %12s %12s\n' disk "--bitmap" "full scan" "qemu-img convert -B" "full/bitmap" "qemu/bitmap"
for g in $sizes; do
  printf '%4sG %14s %14s %22s %11sx %11sx\n' "$g" "${tb[$g]}" "${tf[$g]}" "${tq[$g]}" \
    "$(ratio "${tb[$g]}" "${tf[$g]}")" "$(ratio "${tb[$g]}" "${tq[$g]}")"
done
set -- $sizes
first=$1
last=${!#}
echo "--bitmap from ${first}G to ${last}G: $(ratio "${tb[$first]}" "${tb[$last]}")x the time (flat: 1)"
