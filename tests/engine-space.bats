#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Space goes back on trim (issue 20): freed clusters are punched out of the host file once
# their refcounts are 0 durably, and free clusters at the end of the file are cut off at close.

load helpers

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# used_kib FILE: the file's allocated space, KiB.
used_kib () {
  echo $(( $(stat -c '%b * %B' "$1") / 1024 ))
}

@test "256 MiB written, trimmed and flushed: the file's space drops to within a few clusters of the metadata" {
  qemu-img create -q -f qcow2 "$T/s.qcow2" 1G
  empty=$(used_kib "$T/s.qcow2")
  start_rblock "$T/s.qcow2"
  nbdsh -u "$URI" -c '
import os
for i in range(256):
    h.pwrite(os.urandom(1 << 20), (1 << 29) + i * (1 << 20))
h.flush()'
  full=$(used_kib "$T/s.qcow2")
  nbdsh -u "$URI" -c 'h.trim(256 << 20, 1 << 29); h.flush()'
  after=$(used_kib "$T/s.qcow2")
  echo "empty $empty KiB, written $full KiB, trimmed $after KiB"
  [ "$full" -gt $((256 * 1024)) ]
  # The L2 table and refcount blocks stay; 4 clusters of slack.
  [ "$after" -le $((empty + 4 * 64 + 64)) ]
  # The guest sees zeros there; the data around is untouched (none here), and QEMU agrees.
  [ "$(nbdsh -u "$URI" -c 'print(h.pread(1 << 20, (1 << 29) + (7 << 20)) == bytes(1 << 20))')" = True ]
  stop_rblock
  qemu_check_clean "$T/s.qcow2"
  run qemu-img map --output=json "$T/s.qcow2"
  [ "$(echo "$output" | jq '[.[] | select(.data)] | length')" -eq 0 ]
}

@test "clusters freed and punched are allocated again by later writes, which read back intact" {
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/s.qcow2" 64M
  start_rblock "$T/s.qcow2"
  nbdsh -u "$URI" -c '
import os
keep = os.urandom(4 << 20)
h.pwrite(keep, 0)
h.pwrite(os.urandom(8 << 20), 8 << 20)
h.flush()
h.trim(8 << 20, 8 << 20)
h.flush()
new = os.urandom(8 << 20)
h.pwrite(new, 32 << 20)
h.flush()
assert h.pread(4 << 20, 0) == keep
assert h.pread(8 << 20, 32 << 20) == new
assert h.pread(8 << 20, 8 << 20) == bytes(8 << 20)
open("'"$T"'/keep", "wb").write(keep)
open("'"$T"'/new", "wb").write(new)'
  stop_rblock
  qemu_check_clean "$T/s.qcow2"
  # The new data went into the punched clusters (the file did not grow past them).
  max=$(qemu-img map --output=json "$T/s.qcow2" | jq '[.[] | select(.data) | .offset + .length] | max')
  [ "$max" -lt $(( ((4 + 8) << 20) + 64 * 4096 )) ]
  qemu-img convert -O raw "$T/s.qcow2" "$T/out.raw"
  cmp <(head -c 4M "$T/out.raw") "$T/keep"
  cmp <(tail -c +$(( (32 << 20) + 1 )) "$T/out.raw" | head -c 8M) "$T/new"
}

@test "free clusters at the end of the file are cut off at a clean close" {
  qemu-img create -q -f qcow2 "$T/s.qcow2" 1G
  start_rblock "$T/s.qcow2"
  nbdsh -u "$URI" -c '
h.pwrite(b"\x11" * (1 << 20), 0)
h.pwrite(b"\x22" * (32 << 20), 100 << 20)
h.flush()
h.trim(32 << 20, 100 << 20)
h.flush()'
  big=$(stat -c %s "$T/s.qcow2")
  stop_rblock
  small=$(stat -c %s "$T/s.qcow2")
  echo "before close $big, after $small"
  [ "$big" -gt $((33 << 20)) ]
  [ "$small" -lt $((2 << 20)) ]
  qemu_check_clean "$T/s.qcow2"
  run qemu-io -r -c 'read -P 0x11 0 1M' -c 'read -P 0 1M 1023M' "$T/s.qcow2"
  [[ "$output" != *"verification failed"* ]]
  # The end offset qemu-img reports is the file's end.
  [ "$(qemu-img check --output=json "$T/s.qcow2" | jq '."image-end-offset"')" -eq "$small" ]
}

@test "a read-only or unwritten open never truncates or punches" {
  qemu-img create -q -f qcow2 "$T/s.qcow2" 64M
  qemu-io -c 'write -P 5 0 1M' -c 'write -P 6 8M 1M' -c 'discard 8M 1M' "$T/s.qcow2" >/dev/null
  truncate -s +16M "$T/s.qcow2"           # free space past the last cluster
  cp "$T/s.qcow2" "$T/copy.qcow2"
  start_rblock "$T/s.qcow2" -r
  nbdsh -u "$URI" -c 'h.pread(1 << 20, 0)'
  stop_rblock
  cmp "$T/s.qcow2" "$T/copy.qcow2"
  start_rblock "$T/s.qcow2"
  nbdsh -u "$URI" -c 'h.pread(1 << 20, 0); h.flush()'
  stop_rblock
  cmp "$T/s.qcow2" "$T/copy.qcow2"
}
