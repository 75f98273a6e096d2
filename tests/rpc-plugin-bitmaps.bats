#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# What changed, asked live: nbdkit 1.32 cannot offer qemu:dirty-bitmap meta contexts, so the
# plugin's JSON-RPC bitmap_map answers instead; it must equal QEMU's meta-context answer
# (qemu-nbd -B + nbdinfo --map) once the plugin stopped.  (rpc-plugin*: left out of the ASan
# run, see .ci/run; rb-rpc's bitmap methods run sanitized in bitmaps-rpc.bats.)

load helpers
load bitmap-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/r.qcow2"
  RSOCK="$T/rpc.sock"
}

teardown () {
  stop_rblock
}

@test "plugin: bitmap_map during four connections of writes equals qemu:dirty-bitmap after the stop" {
  qemu-img create -q -f qcow2 "$IMG" 64M
  qemu-img bitmap --add -g 4K "$IMG" b4k
  qemu-img bitmap --add -g 2M "$IMG" b2m
  qemu-io -c 'write 60M 1M' "$IMG" >/dev/null
  qemu-img convert -O raw "$IMG" "$T/mirror.raw"
  for b in b4k b2m; do qemu_map "$IMG" "$b" > "$T/before.$b"; done
  start_rblock "$IMG" rpc="unix:$RSOCK"
  wait_until "$RB_WAIT" "the RPC socket" test -S "$RSOCK"
  [ "$(rpc_call "$RSOCK" bitmaps | jq -c '[.result[] | .live]')" = "[false,false]" ]
  bitmap_io workload "$URI" "$T/mirror.raw" 9 60 4 "$T/ranges"
  [ "$(rpc_call "$RSOCK" bitmaps | jq -c '[.result[] | .live]')" = "[true,true]" ]
  for b in b4k b2m; do rpc_dirty "$RSOCK" "$b" > "$T/live.$b"; done
  stop_rblock
  qemu_check_clean "$IMG"
  qemu-img compare -q "$T/mirror.raw" "$IMG"
  for b in b4k b2m; do
    qemu_dirty "$IMG" "$b" | diff - "$T/live.$b"
  done
  assert_bitmap_holds "$IMG" b4k 4096 "$T/before.b4k" "$T/ranges"
  assert_bitmap_holds "$IMG" b2m 2097152 "$T/before.b2m" "$T/ranges"
}
