#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# From an NBD export to a local file: rb-convert (to qcow2) vs qemu-img convert (same URI, to
# qcow2) vs nbdcopy (export -> raw file), side by side.  The export: nbdkit file serving a
# 1 GiB raw image that is half data in 1 MiB extents (SIZE_MB=... to change it).
set -euo pipefail
. "$(dirname "$0")/common.sh"
mb=${SIZE_MB:-1024}
runs=${RUNS:-3}
conv="$build/utils/rb-convert"

truncate -s "${mb}M" "$work/src.raw"
for i in $(seq 0 2 $((mb - 1))); do
  dd if=/dev/urandom of="$work/src.raw" bs=1M count=1 seek="$i" conv=notrunc status=none
done
start_server file nbdkit -f -r -U "$work/file.sock" file "$work/src.raw"

rb () { rm -f "$work/rb.qcow2"; "$conv" --no-sync "$URI" "$work/rb.qcow2"; }
qi () { rm -f "$work/qi.qcow2"; qemu-img convert -O qcow2 "$URI" "$work/qi.qcow2"; }
nc () { rm -f "$work/nc.raw"; nbdcopy "$URI" "$work/nc.raw"; }
r=$(best_of "$runs" rb); q=$(best_of "$runs" qi); n=$(best_of "$runs" nc)
qemu-img compare -q "$work/rb.qcow2" "$work/src.raw"
printf 'from nbd (%d MiB, half data): rb-convert %ss  qemu-img convert %ss  nbdcopy(raw) %ss\n' "$mb" "$r" "$q" "$n"
printf '  speed ratio rb-convert/qemu-img %s   rb-convert/nbdcopy %s\n' "$(ratio "$r" "$q")" "$(ratio "$r" "$n")"
echo "(no fsync on any side: rb-convert --no-sync, qemu-img's default cache=unsafe, nbdcopy without --flush)"
