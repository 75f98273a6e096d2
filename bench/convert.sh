#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-convert vs qemu-img convert -O qcow2 on a source that is about half random data in
# scattered 1 MiB extents and half zeros (written zeros and holes).  SIZE_MB=... to change it.
set -euo pipefail
. "$(dirname "$0")/common.sh"
mb=${SIZE_MB:-1024}
runs=${RUNS:-3}
conv="$build/utils/rb-convert"

echo "making a $mb MiB source: random 1 MiB extents, written zeros and holes..."
truncate -s "${mb}M" "$work/src.raw"
awk -v n="$mb" 'BEGIN { srand(42); for (i = 0; i < n; i++) { r = rand(); print i, (r < 0.5 ? "data" : r < 0.75 ? "zero" : "hole") } }' |
while read -r i kind; do
  case $kind in
    data) echo "$i" >> "$work/data.list" ;;
    zero) dd if=/dev/zero of="$work/src.raw" bs=1M count=1 seek="$i" conv=notrunc status=none ;;
  esac
done
head -c "$(( $(wc -l < "$work/data.list") << 20 ))" /dev/urandom > "$work/rand"
k=0
while read -r i; do
  dd if="$work/rand" of="$work/src.raw" bs=1M count=1 skip=$k seek="$i" conv=notrunc status=none
  k=$((k + 1))
done < "$work/data.list"
rm -f "$work/rand"
sync
cat "$work/src.raw" > /dev/null     # both tools read from the page cache

# Same durability on both sides: qemu-img convert's default is cache=unsafe (no flush at
# all), which rb-convert --no-sync matches; rb-convert's default syncs before the rename,
# which qemu-img convert -t writeback (flush at the end) matches.
rb () { rm -f "$work/rb.qcow2"; sync; "$conv" "$@" "$work/src.raw" "$work/rb.qcow2"; }
qi () { rm -f "$work/qi.qcow2"; sync; qemu-img convert "$@" -O qcow2 "$work/src.raw" "$work/qi.qcow2"; }
r=$(best_of "$runs" rb --no-sync); q=$(best_of "$runs" qi)
qemu-img compare -q "$work/rb.qcow2" "$work/qi.qcow2"
printf 'convert %d MiB (half data), no flush:  rb-convert --no-sync %ss  qemu-img convert %ss  speed ratio %s\n' \
  "$mb" "$r" "$q" "$(ratio "$r" "$q")"
r=$(best_of "$runs" rb); q=$(best_of "$runs" qi -t writeback)
printf 'convert %d MiB (half data), durable:   rb-convert %ss  qemu-img convert -t writeback %ss  speed ratio %s\n' \
  "$mb" "$r" "$q" "$(ratio "$r" "$q")"
printf 'output size: rb-convert %d bytes (%d KiB on disk)  qemu-img %d bytes (%d KiB on disk)\n' \
  "$(stat -c %s "$work/rb.qcow2")" "$(du -k "$work/rb.qcow2" | cut -f1)" \
  "$(stat -c %s "$work/qi.qcow2")" "$(du -k "$work/qi.qcow2" | cut -f1)"
