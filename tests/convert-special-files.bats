#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Inputs that are not files (FIFOs, character devices) are refused at once, never waited on;
# a full file system is reported as ENOSPC.  Every command runs under timeout: a hang fails.

load helpers

B="$top_builddir/utils"

setup () {
  T="$BATS_TEST_TMPDIR"
  mkfifo "$T/fifo"
  # A qcow2 whose backing file is the FIFO (-u: qemu-img itself would block opening it).
  qemu-img create -q -f qcow2 -u -b fifo -F raw "$T/over-fifo.qcow2" 1M
  head -c 1M /dev/urandom > "$T/data.raw"
}

teardown () {
  stop_rblock
  if mountpoint -q "$T/full" 2>/dev/null; then umount "$T/full"; fi
  if [ -n "${LOOPDEV:-}" ]; then losetup -d "$LOOPDEV" 2>/dev/null || true; fi
}

# refused NAME CMD...: CMD ends (within RB_WAIT s: a hang, not a slow machine) with exit 2
# and one line naming NAME and why.
refused () {
  local name=$1; shift
  run timeout "$RB_WAIT" "$@"
  [ "$status" -ne 124 ] || { echo "hung: $*"; return 1; }
  [ "$status" -eq 2 ] || { echo "exit $status: $output"; return 1; }
  [ "${#lines[@]}" -eq 1 ] || { echo "not one line: $output"; return 1; }
  [[ "$output" == *"$name"*"not a regular file or block device"* ]] || { echo "$output"; return 1; }
}

@test "rb-convert: a FIFO source is refused at once with one line, no output left" {
  refused fifo "$B/rb-convert" "$T/fifo" "$T/out.qcow2"
  [[ "$output" == *"(a FIFO)" ]]
  refused fifo "$B/rb-convert" -O raw "$T/fifo" "$T/out.raw"
  [ ! -e "$T/out.qcow2" ] && [ ! -e "$T/out.raw" ]
  [ -z "$(ls -A "$T" | grep '\.tmp\.' || true)" ]
}

@test "rb-convert: a character device source is refused with its type" {
  refused /dev/zero "$B/rb-convert" /dev/zero "$T/out.qcow2"
  [[ "$output" == *"(a character device)" ]]
  [ ! -e "$T/out.qcow2" ]
}

@test "engine: a FIFO as backing file is refused at open (rb-convert, rb-check, the plugin)" {
  refused "backing file" "$B/rb-convert" "$T/over-fifo.qcow2" "$T/out.qcow2"
  [[ "$output" == *"over-fifo.qcow2"*"fifo"* ]]
  [ ! -e "$T/out.qcow2" ]
  run timeout "$RB_WAIT" "$B/rb-check" "$T/over-fifo.qcow2"
  [ "$status" -ne 124 ] && [ "$status" -ne 0 ]
  [[ "$output" == *"backing file"*"fifo: not a regular file or block device"* ]]
  # The plugin opens the image (and its chain) at start-up: it must fail, not wait.
  run timeout "$RB_WAIT" nbdkit -U "$T/s.sock" -P "$T/s.pid" "$RBLOCK_SO" file="$T/over-fifo.qcow2"
  [ "$status" -ne 124 ] && [ "$status" -ne 0 ]
  [[ "$output" == *"fifo: not a regular file or block device"* ]]
  [ ! -e "$T/s.pid" ]
}

@test "rb-diff and rb-delta: a FIFO input is refused at once" {
  refused fifo "$B/rb-diff" "$T/fifo" "$T/data.raw"
  refused fifo "$B/rb-diff" "$T/data.raw" "$T/fifo"
  refused fifo "$B/rb-delta" "$T/fifo" "$T/data.raw" "$T/d.qcow2"
  refused fifo "$B/rb-delta" "$T/data.raw" "$T/fifo" "$T/d.qcow2"
  refused "backing file" "$B/rb-delta" "$T/over-fifo.qcow2" "$T/data.raw" "$T/d.qcow2"
  [ ! -e "$T/d.qcow2" ]
  [ -p "$T/fifo" ]
}

# mount_full: a 2 MiB file system at $T/full (tmpfs, else a loop-mounted ext4), or skip saying why.
mount_full () {
  mkdir -p "$T/full"
  if mount -t tmpfs -o size=2M tmpfs "$T/full" 2>"$T/mount.err"; then return 0; fi
  truncate -s 4M "$T/ext4.img"
  mkfs.ext4 -q -F "$T/ext4.img" 2>>"$T/mount.err" &&
    LOOPDEV=$(losetup --find --show "$T/ext4.img" 2>>"$T/mount.err") &&
    mount "$LOOPDEV" "$T/full" 2>>"$T/mount.err" && return 0
  skip "no small file system can be mounted here (needs root for mount and losetup): $(head -1 "$T/mount.err")"
}

@test "rb-convert -O raw onto a full file system: ENOSPC named, exit 2, nothing left" {
  mount_full
  head -c 8M /dev/urandom > "$T/big.raw"
  run timeout 60 "$B/rb-convert" -O raw "$T/big.raw" "$T/full/out.raw"
  [ "$status" -eq 2 ] || { echo "$output"; false; }
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "rb-convert: "*"out.raw: "*"No space left on device" ]] || { echo "$output"; false; }
  [ -z "$(ls -A "$T/full" | grep -v lost+found || true)" ]
  # With room it works, and the copy is exact.
  run timeout 60 "$B/rb-convert" -O raw "$T/data.raw" "$T/full/out.raw"
  [ "$status" -eq 0 ] || { echo "$output"; false; }
  cmp "$T/data.raw" "$T/full/out.raw"
}
