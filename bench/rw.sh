#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Read/write throughput: nbdkit ./rblock.so vs qemu-nbd -f qcow2 --cache=writeback --aio=threads,
# both on Unix sockets, same images, one run: sequential read and write (nbdcopy), write into an
# empty image (allocation path), random 4K read and write (fio --ioengine=nbd, iodepth 16).
set -euo pipefail
. "$(dirname "$0")/common.sh"
size=${SIZE:-512M}
secs=${SECS:-8}
runs=${RUNS:-3}

head -c "$size" /dev/urandom > "$work/src.raw"
qemu-img convert -O qcow2 "$work/src.raw" "$work/full.qcow2"

fio_iops () {   # rw-mode
  fio --name=b --ioengine=nbd --uri="$URI" --rw="$1" --bs=4k --iodepth=16 --size="$size" \
      --time_based --runtime="$secs" --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    jq "if \"$1\" == \"randread\" then .jobs[0].read.iops else .jobs[0].write.iops end | floor"
}

row () { printf '%-34s rblock %10s   qemu-nbd %10s   ratio %s\n' "$1" "$2" "$3" "$4"; }
echo "qemu-nbd runs with --cache=writeback --aio=threads; times in seconds (best of $runs), IOPS for fio"

# Sequential read of a full image.
rblock_server "$work/full.qcow2"; r=$(best_of "$runs" nbdcopy "$URI" null:); stop_server
qemu_server "$work/full.qcow2"; q=$(best_of "$runs" nbdcopy "$URI" null:); stop_server
row "sequential read $size (s)" "$r" "$q" "$(ratio "$r" "$q")"

# Sequential overwrite of allocated clusters.
rblock_server "$work/full.qcow2"; r=$(best_of "$runs" nbdcopy --flush "$work/src.raw" "$URI"); stop_server
qemu_server "$work/full.qcow2"; q=$(best_of "$runs" nbdcopy --flush "$work/src.raw" "$URI"); stop_server
row "sequential overwrite $size (s)" "$r" "$q" "$(ratio "$r" "$q")"

# Writing into an empty image: every cluster allocated.
fresh () { rm -f "$work/empty.qcow2"; qemu-img create -q -f qcow2 "$work/empty.qcow2" "$size"; }
alloc_run () {   # server-function
  local best= t
  for _ in $(seq "$runs"); do
    fresh; "$1" "$work/empty.qcow2"
    t=$(best_of 1 nbdcopy --flush "$work/src.raw" "$URI"); stop_server
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}
r=$(alloc_run rblock_server); q=$(alloc_run qemu_server)
row "write into empty image $size (s)" "$r" "$q" "$(ratio "$r" "$q")"

# Random 4K, iodepth 16.
rblock_server "$work/full.qcow2"; r=$(fio_iops randread); stop_server
qemu_server "$work/full.qcow2"; q=$(fio_iops randread); stop_server
row "random 4K read (IOPS)" "$r" "$q" "$(ratio "$q" "$r")"
rblock_server "$work/full.qcow2"; r=$(fio_iops randwrite); stop_server
qemu_server "$work/full.qcow2"; q=$(fio_iops randwrite); stop_server
row "random 4K write (IOPS)" "$r" "$q" "$(ratio "$q" "$r")"
echo "ratio > 1: rblock is faster"
