#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-convert -n: a backup restored onto an existing disk (loop device, raw file, qcow2) holding
# stale data; the disk then reads as the source (qemu-img compare), the zeroing is counted
# with strace, a too-small disk is refused untouched.

load helpers

RB_CONVERT="$top_builddir/utils/rb-convert"

setup () {
  T="$BATS_TEST_TMPDIR"
  # The backup: a qcow2 with data, a zero cluster, unallocated space, a partial zero
  # cluster inside data; 20 MiB.
  qemu-img create -q -f qcow2 -o cluster_size=64k "$T/backup.qcow2" 20M
  qemu-io -c 'write -P 0x11 0 3M' -c 'write -z 1M 64k' -c 'write -P 0x22 5M 1M' \
          -c 'write -z 5M 4k' -c 'write -P 0x33 19M 1M' "$T/backup.qcow2" > /dev/null
  qemu-img convert -O raw "$T/backup.qcow2" "$T/want.raw"
  # Stale data everywhere, 24 MiB (larger than the backup).
  head -c 24M /dev/urandom > "$T/stale.raw"
}

teardown () {
  if [ -n "${LOOPDEV:-}" ]; then losetup -d "$LOOPDEV" 2>/dev/null || true; fi
}

# traced FILE CMD...: run CMD under strace, its writing and zeroing calls into FILE.
traced () {
  local out=$1; shift
  strace -f -qq -e trace=copy_file_range,pwrite64,pwritev,fallocate,ioctl -o "$out" "$@"
}

# restored_equals DISK: the first 20 MiB of DISK are the backup's guest view; the rest is
# the stale data, untouched.
restored_equals () {
  cmp -n $((20 << 20)) "$1" "$T/want.raw" || return 1
  cmp -i $((20 << 20)) -n $((4 << 20)) "$1" "$T/stale.raw" || return 1
}

@test "rb-convert -n onto a raw file with stale data: it reads as the source, holes punched" {
  head -c 20M "$T/stale.raw" > "$T/disk.raw"
  traced "$T/trace" "$RB_CONVERT" -n "$T/backup.qcow2" "$T/disk.raw"
  qemu-img compare -f qcow2 -F raw "$T/backup.qcow2" "$T/disk.raw"
  [ "$(grep -c 'fallocate(.*FALLOC_FL_PUNCH_HOLE' "$T/trace")" -gt 0 ]
  # The space of what is not data is given back: about 3+1+1 MiB of 20 stay allocated.
  [ "$(du -k "$T/disk.raw" | cut -f1)" -lt $(( 6 * 1024 )) ]
  # A larger disk: past the source's size it is left as it was.
  cp "$T/stale.raw" "$T/big.raw"
  "$RB_CONVERT" -n "$T/backup.qcow2" "$T/big.raw"
  restored_equals "$T/big.raw"
}

@test "rb-convert -n onto a block device (loop): BLKZEROOUT for what is not data, the rest untouched" {
  cp "$T/stale.raw" "$T/dev.img"
  LOOPDEV=$(losetup --find --show "$T/dev.img" 2>/dev/null) ||
    skip "no loop device can be made here (needs root and /dev/loop*); the raw-file test covers the same path except BLKZEROOUT"
  traced "$T/trace" "$RB_CONVERT" -n "$T/backup.qcow2" "$LOOPDEV"
  [ "$(grep -c 'ioctl(.*BLKZEROOUT' "$T/trace")" -gt 0 ]
  [ "$(grep -c 'copy_file_range' "$T/trace")" -eq 0 ]
  restored_equals "$LOOPDEV"
  losetup -d "$LOOPDEV"; LOOPDEV=
  restored_equals "$T/dev.img"
}

@test "rb-convert -n onto an existing qcow2 (stale clusters, a backing file with data): it reads as the source" {
  head -c 20M /dev/urandom > "$T/base.raw"
  qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw "$T/disk.qcow2" 20M
  qemu-io -c 'write -P 0x77 0 20M' "$T/disk.qcow2" > /dev/null
  qemu-io -c 'discard 8M 4M' "$T/disk.qcow2" > /dev/null        # the backing file shows there
  "$RB_CONVERT" -n "$T/backup.qcow2" "$T/disk.qcow2"
  qemu_check_clean "$T/disk.qcow2"
  qemu-img compare "$T/backup.qcow2" "$T/disk.qcow2"
  # Still the same image: its cluster size and backing file kept.
  info=$(qemu-img info --output=json "$T/disk.qcow2")
  [ "$(echo "$info" | jq '."cluster-size"')" = 4096 ]
  [ "$(echo "$info" | jq -r '."backing-filename"')" = base.raw ]
}

@test "rb-convert -n -C from a raw file source onto a raw file: copy_file_range for the data" {
  qemu-img convert -O raw "$T/backup.qcow2" "$T/src.raw"
  cp "$T/stale.raw" "$T/disk.raw"
  traced "$T/trace" "$RB_CONVERT" -n -C -O raw "$T/src.raw" "$T/disk.raw"
  restored_equals "$T/disk.raw"
  [ "$(grep -c 'copy_file_range' "$T/trace")" -gt 0 ]
  [ "$(grep -c 'pwrite64' "$T/trace")" -eq 0 ]
}

@test "rb-convert -n --target-is-zero writes no zeros: only the data (strace)" {
  truncate -s 24M "$T/zero.raw"
  traced "$T/trace" "$RB_CONVERT" -n --target-is-zero "$T/backup.qcow2" "$T/zero.raw"
  cmp -n $((24 << 20)) "$T/zero.raw" <(cat "$T/want.raw" /dev/zero)
  [ "$(grep -c 'fallocate' "$T/trace")" -eq 0 ]
  [ "$(grep -c 'BLKZEROOUT' "$T/trace")" -eq 0 ]
  # The bytes written are the data clusters: 3M - 64K + 1M - 4K + 1M.
  [ "$(awk '/pwrite64\(/ { n += $NF } END { print n + 0 }' "$T/trace")" -eq $(( (5 << 20) - 65536 - 4096 )) ]
  # Onto a disk that is not zero, the stale data shows through where the source has none:
  # --target-is-zero is a promise.
  cp "$T/stale.raw" "$T/disk.raw"
  "$RB_CONVERT" -n --target-is-zero "$T/backup.qcow2" "$T/disk.raw"
  ! cmp -s -n $((20 << 20)) "$T/disk.raw" "$T/want.raw"
}

@test "rb-convert -n -S 0 writes every byte: no fallocate, no holes, stale data gone" {
  cp "$T/stale.raw" "$T/disk.raw"
  traced "$T/trace" "$RB_CONVERT" -n -S 0 "$T/backup.qcow2" "$T/disk.raw"
  restored_equals "$T/disk.raw"
  [ "$(grep -c 'fallocate' "$T/trace")" -eq 0 ]
  [ "$(awk '/pwrite64\(/ { n += $NF } END { print n + 0 }' "$T/trace")" -eq $((20 << 20)) ]
}

@test "rb-convert -n: a target smaller than the source is refused in one line, untouched" {
  head -c 16M /dev/urandom > "$T/small.raw"
  sum=$(md5sum < "$T/small.raw")
  run "$RB_CONVERT" -n "$T/backup.qcow2" "$T/small.raw"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "rb-convert: "*"small.raw"*"smaller"*"nothing was written" ]] || { echo "$output"; false; }
  [ "$(md5sum < "$T/small.raw")" = "$sum" ]
  qemu-img create -q -f qcow2 "$T/small.qcow2" 16M
  qemu-io -c 'write -P 5 0 1M' "$T/small.qcow2" > /dev/null
  sum=$(md5sum < "$T/small.qcow2")
  run "$RB_CONVERT" -n "$T/backup.qcow2" "$T/small.qcow2"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == *"smaller"* ]]
  [ "$(md5sum < "$T/small.qcow2")" = "$sum" ]
}

@test "rb-convert -n: usage and refusals (no OUTPUT, OUTPUT is SOURCE, a FIFO, creation options, --target-is-zero alone)" {
  run "$RB_CONVERT" -n "$T/backup.qcow2" "$T/nosuch.raw"
  [ "$status" -eq 2 ]
  [[ "$output" == *"nosuch.raw: No such file or directory (-n writes onto an existing disk)" ]]
  [ ! -e "$T/nosuch.raw" ]
  sum=$(md5sum < "$T/backup.qcow2")
  run "$RB_CONVERT" -n "$T/backup.qcow2" "$T/backup.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"refusing to overwrite an input"* ]]
  [ "$(md5sum < "$T/backup.qcow2")" = "$sum" ]
  mkfifo "$T/fifo"
  run timeout "$RB_WAIT" "$RB_CONVERT" -n "$T/backup.qcow2" "$T/fifo"
  [ "$status" -eq 2 ]
  [[ "$output" == *"not a regular file or block device (a FIFO)" ]]
  run "$RB_CONVERT" -n -c 4K "$T/backup.qcow2" "$T/stale.raw"
  [ "$status" -eq 1 ]
  run "$RB_CONVERT" --target-is-zero "$T/backup.qcow2" "$T/new.qcow2"
  [ "$status" -eq 1 ]
  [[ "$output" == *"--target-is-zero needs -n"* ]]
  [ ! -e "$T/new.qcow2" ]
  # -O qcow2 onto a raw file: not a qcow2 image, nothing written.
  sum=$(md5sum < "$T/stale.raw")
  run "$RB_CONVERT" -n -O qcow2 "$T/backup.qcow2" "$T/stale.raw"
  [ "$status" -eq 2 ]
  [ "$(md5sum < "$T/stale.raw")" = "$sum" ]
}

@test "rb-convert -n: --help and the man page say it is not atomic" {
  run "$RB_CONVERT" --help
  [[ "$output" == *"-n, --no-create"*"NOT ATOMIC"* ]]
  grep -q 'B<-n is not atomic>' "$BATS_TEST_DIRNAME/../utils/rb-convert.pod"
}
