#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-convert and rb-delta on NBD URIs (issue 9): exports of nbdkit file, memory/sparse-random,
# qemu-nbd and nbdkit ./rblock.so give the same results as files; block status is honoured;
# an unreachable or dying server is exit 2 with nothing left behind.

load helpers
load diff-helpers

RB_CONVERT="$top_builddir/utils/rb-convert"
RB_DELTA="$top_builddir/utils/rb-delta"

setup () {
  T="$BATS_TEST_TMPDIR"
  truncate -s 16M "$T/disk.raw"
  dd if=/dev/urandom of="$T/disk.raw" bs=1M count=3 seek=2 conv=notrunc status=none
  dd if=/dev/urandom of="$T/disk.raw" bs=4k count=5 seek=3000 conv=notrunc status=none
}

teardown () {
  stop_servers
  stop_rblock
}

@test "rb-convert from nbdkit file, qemu-nbd and nbdkit ./rblock.so equals converting the file" {
  "$RB_CONVERT" "$T/disk.raw" "$T/from-file.qcow2"
  serve F file "$T/disk.raw"
  "$RB_CONVERT" "$NBD_URI" "$T/a.qcow2"
  qemu-img convert -O qcow2 "$T/disk.raw" "$T/q.qcow2"
  serve_qemu Q "$T/q.qcow2" qcow2
  "$RB_CONVERT" "$NBD_URI" "$T/b.qcow2"
  start_rblock "$T/from-file.qcow2" -r
  "$RB_CONVERT" "$URI" "$T/c.qcow2"
  for out in a b c; do
    qemu_check_clean "$T/$out.qcow2"
    qemu-img compare "$T/$out.qcow2" "$T/disk.raw"
    [ "$(qemu-img map --output=json "$T/$out.qcow2" | jq -c '[.[] | select(.data)] | map([.start, .length])')" = \
      "$(qemu-img map --output=json "$T/from-file.qcow2" | jq -c '[.[] | select(.data)] | map([.start, .length])')" ]
  done
}

@test "rb-convert honours block status: from sparse-random only about the data is read" {
  local log="$T/log" data read
  serve S --filter=log sparse-random 512M seed=99 logfile="$log"
  data=$(nbdinfo --map "$NBD_URI" | awk '$3 % 2 == 0 { d += $2 } END { print d }')
  "$RB_CONVERT" "$NBD_URI" "$T/s.qcow2"
  read=$(grep -o ' Read id=[0-9]* offset=0x[0-9a-f]* count=0x[0-9a-f]*' "$log" | sed 's/.*count=//' |
         while read -r h; do echo $((h)); done | awk '{ s += $1 } END { print s + 0 }')
  echo "data $data, read $read"
  [ "$data" -gt 0 ] && [ "$read" -ge "$data" ] && [ "$read" -le $((data + 16 * 1048576)) ]
  qemu_check_clean "$T/s.qcow2"
  nbdcopy "$NBD_URI" "$T/s.raw"
  qemu-img compare "$T/s.qcow2" "$T/s.raw"
}

@test "rb-delta with NEW a live export (nbdkit file and the plugin): the incremental backup reads as NEW" {
  cp "$T/disk.raw" "$T/new.raw"
  dd if=/dev/urandom of="$T/new.raw" bs=4k count=2 seek=100 conv=notrunc status=none
  serve N file "$T/new.raw"
  "$RB_DELTA" "$T/disk.raw" "$NBD_URI" "$T/d.qcow2"
  qemu_check_clean "$T/d.qcow2"
  qemu-img compare "$T/d.qcow2" "$T/new.raw"
  [ "$(qemu-img map --output=json "$T/d.qcow2" | jq '[.[] | select(.depth == 0 and .data)] | length')" = 1 ]
  # The live disk a qcow2 served by rblock, the base a qcow2 too.
  qemu-img convert -O qcow2 "$T/new.raw" "$T/live.qcow2"
  qemu-img convert -O qcow2 "$T/disk.raw" "$T/base.qcow2"
  start_rblock "$T/live.qcow2" -r
  "$RB_DELTA" "$T/base.qcow2" "$URI" "$T/e.qcow2"
  qemu-img compare "$T/e.qcow2" "$T/new.raw"
  qemu_check_clean "$T/e.qcow2"
}

@test "an unreachable server or a missing export: one line naming the URI, exit 2, nothing made" {
  run "$RB_CONVERT" "nbd+unix:///?socket=$T/nobody.sock" "$T/o.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == "rb-convert: nbd+unix:///?socket=$T/nobody.sock"* ]]
  [ ! -e "$T/o.qcow2" ]
  serve_qemu Q "$T/disk.raw" raw       # qemu-nbd serves only its one export
  run "$RB_DELTA" "$T/disk.raw" "nbd+unix:///nosuchexport?socket=$T/Q.sock" "$T/d.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"nosuchexport"* ]]
  [ ! -e "$T/d.qcow2" ]
  [ -z "$(ls -A "$T" | grep '\.tmp\.' || true)" ]
}

@test "a server killed mid-copy: exit 2, no output left" {
  serve S sparse-random 4G seed=5 percent=50 --filter=delay rdelay=20ms
  pidf="$T/S.pid"
  "$RB_CONVERT" "$NBD_URI" "$T/o.qcow2" 2>"$T/err" &
  cpid=$!
  sleep 1
  kill -9 "$(cat "$pidf")"
  wait "$cpid" && st=0 || st=$?
  cat "$T/err"
  [ "$st" -eq 2 ]
  [ "$(wc -l < "$T/err")" -eq 1 ]
  grep -q "nbd+unix" "$T/err"
  [ ! -e "$T/o.qcow2" ]
  [ -z "$(ls -A "$T" | grep '\.tmp\.' || true)" ]
}
