#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-delta vs the QEMU recipe (qemu-img create -b NEW -F raw D && qemu-img rebase -b BASE
# -F raw D) on a 1 GiB base with ~1% scattered changes.  SIZE_MB=... to change the size.
set -euo pipefail
. "$(dirname "$0")/common.sh"
mb=${SIZE_MB:-1024}
runs=${RUNS:-3}
delta="$build/utils/rb-delta"

echo "making a $mb MiB base and a new version with ~1% scattered 4 KiB changes..."
head -c "${mb}M" /dev/urandom > "$work/base.raw"
cp "$work/base.raw" "$work/new.raw"
awk -v n="$(( mb * 256 / 100 ))" -v pages="$(( mb * 256 ))" 'BEGIN { srand(7); for (i = 0; i < n; i++) print int(rand() * pages) }' |
  sort -n -u | while read -r p; do
    dd if=/dev/urandom of="$work/new.raw" bs=4k count=1 seek="$p" conv=notrunc status=none
  done
cat "$work/base.raw" "$work/new.raw" > /dev/null

rb () { rm -f "$work/rb.qcow2"; sync; "$delta" "$@" "$work/base.raw" "$work/new.raw" "$work/rb.qcow2"; }
qemu () {
  rm -f "$work/q.qcow2"; sync
  qemu-img create -q -f qcow2 -b "$work/new.raw" -F raw "$work/q.qcow2"
  qemu-img rebase -b "$work/base.raw" -F raw "$work/q.qcow2"
}
r=$(best_of "$runs" rb); q=$(best_of "$runs" qemu)
qemu-img compare -q "$work/rb.qcow2" "$work/new.raw"
qemu-img compare -q "$work/q.qcow2" "$work/new.raw"
printf 'delta of %d MiB, ~1%% changed: rb-delta %ss  qemu-img create+rebase %ss  speed ratio %s\n' \
  "$mb" "$r" "$q" "$(ratio "$r" "$q")"
printf 'delta size: rb-delta %d KiB on disk (%d bytes)  qemu-img %d KiB on disk (%d bytes)\n' \
  "$(du -k "$work/rb.qcow2" | cut -f1)" "$(stat -c %s "$work/rb.qcow2")" \
  "$(du -k "$work/q.qcow2" | cut -f1)" "$(stat -c %s "$work/q.qcow2")"
e=$(best_of "$runs" rb --extended-l2)
printf 'rb-delta --extended-l2 %ss, %d KiB on disk\n' "$e" "$(du -k "$work/rb.qcow2" | cut -f1)"
