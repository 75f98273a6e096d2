#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-map, rb-info, rb-measure, rb-create vs their qemu-img twins on one image, side by side:
# a SIZE_GB (default 16) qcow2 with NR (default 20000) scattered 64 KiB writes, so the map
# has tens of thousands of runs; also a metadata-preallocated image (the host-hole path).
set -euo pipefail
. "$(dirname "$0")/common.sh"
gb=${SIZE_GB:-16}
nr=${NR:-20000}
runs=${RUNS:-3}
u="$build/utils"

echo "making a $gb GiB image with $nr scattered 64 KiB clusters of data..."
qemu-img create -q -f qcow2 "$work/frag.qcow2" "${gb}G"
# qemu-io takes the writes as -c arguments, a few hundred at a time.
shuf -i 0-$(( gb * 16384 - 1 )) -n "$nr" --random-source=<(yes rblock) |
  awk '{ printf "-c\nwrite -q -P %d %.0f 64k\n", NR % 250 + 1, $1 * 65536 }' |
  xargs -d '\n' -n 600 qemu-io "$work/frag.qcow2" > /dev/null
qemu-img create -q -f qcow2 -o preallocation=metadata "$work/pre.qcow2" "${gb}G"
qemu-io -c 'write -q -P 9 1G 64M' "$work/pre.qcow2" > /dev/null

# Same output first (the suites check it in depth): the JSON maps are equal.
cmp <("$u/rb-map" --output=json "$work/frag.qcow2" | jq -c 'map(del(.compressed))') \
    <(qemu-img map --output=json "$work/frag.qcow2" | jq -c .)
lines=$(qemu-img map --output=json "$work/frag.qcow2" | wc -l)

row () {   # what rb-command qemu-command
  local what=$1 r q
  r=$(best_of "$runs" bash -c "$2"); q=$(best_of "$runs" bash -c "$3")
  printf '%-44s rblock %6ss  qemu-img %6ss  ratio %s\n' "$what" "$r" "$q" "$(ratio "$r" "$q")"
}
row "map --output=json ($lines runs)" "$u/rb-map --output=json $work/frag.qcow2" \
    "qemu-img map --output=json $work/frag.qcow2"
row "map (human)" "$u/rb-map $work/frag.qcow2" "qemu-img map $work/frag.qcow2"
row "map --output=json, metadata-preallocated" "$u/rb-map --output=json $work/pre.qcow2" \
    "qemu-img map --output=json $work/pre.qcow2"
row "info --output=json" "$u/rb-info --output=json $work/frag.qcow2" \
    "qemu-img info --output=json $work/frag.qcow2"
row "measure -O qcow2" "$u/rb-measure $work/frag.qcow2" "qemu-img measure -O qcow2 $work/frag.qcow2"
row "check" "$u/rb-check $work/frag.qcow2" "qemu-img check $work/frag.qcow2"
row "create ${gb}G, preallocation=metadata" \
    "rm -f $work/c.qcow2; $u/rb-create -q -o preallocation=metadata $work/c.qcow2 ${gb}G" \
    "rm -f $work/c.qcow2; qemu-img create -q -f qcow2 -o preallocation=metadata $work/c.qcow2 ${gb}G"
