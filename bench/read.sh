#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Sequential read of a 1 GiB qcow2 image with nbdcopy: nbdkit ./rblock.so vs qemu-nbd vs
# nbdkit file serving the equivalent raw image, side by side.  SIZE=... to change the size.
set -euo pipefail
. "$(dirname "$0")/common.sh"
size=${SIZE:-1G}
runs=${RUNS:-3}

echo "making a $size qcow2 image full of data..."
head -c "$size" /dev/urandom > "$work/disk.raw"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"

results=()
for conns in 1 4; do
  rblock_server "$work/disk.qcow2" -r
  r=$(best_of "$runs" nbdcopy --connections=$conns "$URI" null:)
  stop_server
  qemu_server "$work/disk.qcow2" -r
  q=$(best_of "$runs" nbdcopy --connections=$conns "$URI" null:)
  stop_server
  start_server file nbdkit -f -r -U "$work/file.sock" file "$work/disk.raw"
  f=$(best_of "$runs" nbdcopy --connections=$conns "$URI" null:)
  stop_server
  printf 'sequential read %s, %d connection(s): rblock %ss  qemu-nbd %ss  nbdkit-file(raw) %ss\n' \
    "$size" "$conns" "$r" "$q" "$f"
  printf '  rblock/qemu-nbd speed ratio: %s   rblock/nbdkit-file speed ratio: %s\n' \
    "$(ratio "$r" "$q")" "$(ratio "$r" "$f")"
done
