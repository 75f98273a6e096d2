#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Read/write throughput: nbdkit ./rblock.so vs qemu-nbd -f qcow2 --cache=writeback --aio=threads,
# both on Unix sockets, same images, one run: sequential read and write (nbdcopy), write into an
# empty image (allocation path), random 4K read and write (fio --ioengine=nbd, iodepth 16),
# and random 4K / sequential 1M writes into an empty 16 GiB image against qemu-nbd and against
# nbdkit's file plugin on an empty raw file (the limit).
set -euo pipefail
. "$(dirname "$0")/common.sh"
size=${SIZE:-512M}         # ROWS=empty: only the empty-image rows
secs=${SECS:-8}
runs=${RUNS:-3}


fio_iops () {   # rw-mode
  fio --name=b --ioengine=nbd --uri="$URI" --rw="$1" --bs=4k --iodepth=16 --size="$size" \
      --time_based --runtime="$secs" --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    jq "if \"$1\" == \"randread\" then .jobs[0].read.iops else .jobs[0].write.iops end | floor"
}

row () { printf '%-34s rblock %10s   qemu-nbd %10s   ratio %s\n' "$1" "$2" "$3" "$4"; }
echo "qemu-nbd runs with --cache=writeback --aio=threads; times in seconds (best of $runs), IOPS for fio"

# Random 4K writes into an empty image (a new one each round), the allocation path, with
# nbdkit's file plugin on an empty raw file of the same size as the limit.  Rounds interleave
# the three servers; medians.
empty_size=${EMPTY_SIZE:-16G}
raw_server () { start_server raw nbdkit -f -U "$work/raw.sock" file "$1"; }
fio_empty () {   # rw-mode size
  fio --name=b --ioengine=nbd --uri="$URI" --rw="$1" --bs="${BS:-4k}" --iodepth=16 --size="$2" \
      --time_based --runtime="$secs" --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    jq '.jobs[0].write.iops | floor'
}
median () { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# Each round's images stay until the end: deleting a file of many extents can take minutes
# where the file system discards synchronously (seen here), and must not overlap a measurement.
# A sync (not timed) before each server: rblock and qemu-nbd flush when they stop, nbdkit's
# file plugin does not, so without it the server after the raw one shares the disk with up to
# the dirty limit (20% of memory) of the raw file's writeback.  That alone made sequential 1M
# writes 0.46-0.55x the raw limit in rounds where rblock measured 0.97-1.07x in isolation.
empty_rows () {   # rw-mode label
  local rr= qq= ff= i e=$work/empty-$1
  mkdir -p "$e"
  for i in $(seq "$runs"); do
    qemu-img create -q -f qcow2 "$e/r$i.qcow2" "$empty_size"; sync
    rblock_server "$e/r$i.qcow2"; rr="$rr $(fio_empty "$1" "$empty_size")"; stop_server
    qemu-img create -q -f qcow2 "$e/q$i.qcow2" "$empty_size"; sync
    qemu_server "$e/q$i.qcow2"; qq="$qq $(fio_empty "$1" "$empty_size")"; stop_server
    truncate -s "$empty_size" "$e/f$i.raw"; sync
    raw_server "$e/f$i.raw"; ff="$ff $(fio_empty "$1" "$empty_size")"; stop_server
  done
  r=$(echo $rr | tr ' ' '\n' | median); q=$(echo $qq | tr ' ' '\n' | median)
  f=$(echo $ff | tr ' ' '\n' | median)
  printf '%-34s rblock %10s   qemu-nbd %10s   ratio %s   raw limit %s   rblock/raw %s\n' \
    "$2" "$r" "$q" "$(ratio "$q" "$r")" "$f" "$(ratio "$f" "$r")"
  echo "  (rounds: rblock$rr; qemu-nbd$qq; raw$ff)"
}
empty_rows randwrite "random 4K write, empty $empty_size (IOPS)"
BS=1M empty_rows write "sequential 1M write, empty $empty_size (IOPS)"
[ "${ROWS:-all}" = empty ] && exit 0

head -c "$size" /dev/urandom > "$work/src.raw"
qemu-img convert -O qcow2 "$work/src.raw" "$work/full.qcow2"

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
