#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# The JSON-RPC methods bitmaps and bitmap_map (rb-rpc): the live bits while rb-rpc writes the
# image equal what QEMU's qemu:dirty-bitmap meta context reports after the clean stop; the
# stored bits of an image served read-only equal it at once; bad requests get clear errors.

load helpers
load bitmap-helpers

bats_require_minimum_version 1.5.0

RB_RPC="$top_builddir/rpc/rb-rpc"

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/r.qcow2"
  RSOCK="$T/rpc.sock"
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$IMG" 32M
  qemu-img bitmap --add -g 512 "$IMG" fine
  qemu-img bitmap --add -g 1M "$IMG" coarse
  qemu-img bitmap --add --disable "$IMG" off
  qemu-io -c 'write -P 1 5000 7000' -c 'write 31M 1M' "$IMG" >/dev/null
  qemu-img bitmap --enable "$IMG" off
  qemu-io -c 'write -P 2 9M 4k' "$IMG" >/dev/null
  qemu-img bitmap --disable "$IMG" off
}

teardown () {
  stop_rpc
}

start_rpc () {   # [options]
  rm -f "$RSOCK"
  "$RB_RPC" -l "unix:$RSOCK" "$@" "$IMG" 2>"$T/rpc.err" &
  RPID=$!
  wait_until "$RB_WAIT" "rb-rpc's socket" eval '[ -S "$RSOCK" ] || process_gone "$RPID"' &&
    [ -S "$RSOCK" ] && return 0
  cat "$T/rpc.err"; return 1
}

stop_rpc () {
  [ -n "${RPID:-}" ] || return 0
  kill "$RPID" 2>/dev/null || true
  wait "$RPID" 2>/dev/null || true
  RPID=
}

# rpc_write OFFSET LENGTH: write LENGTH bytes of 0x5a through the JSON-RPC write method.
rpc_write () {
  rpc_call "$RSOCK" write "{\"offset\":$1,\"data\":\"$(head -c "$2" /dev/zero | tr '\0' Z | base64 -w0)\"}" |
    jq -e .result >/dev/null
  echo "$1 $2" >> "$T/ranges"
}

@test "bitmap_map while rb-rpc writes: the live bits equal QEMU's answer after the stop" {
  for b in fine coarse off; do qemu_map "$IMG" "$b" > "$T/before.$b"; done
  start_rpc --writable
  rpc_write 0 1
  rpc_write 1048575 3
  rpc_write 20000000 70000
  rpc_write $((32 * 1024 * 1024 - 10)) 10
  for b in fine coarse off; do rpc_dirty "$RSOCK" "$b" > "$T/live.$b"; done
  # A window of the live map is the same map clipped.
  rpc_dirty "$RSOCK" fine 4096 $((20 << 20)) > "$T/window"
  awk '{ s = $1; e = $1 + $2; if (s < 4096) s = 4096; if (e > 4096 + 20971520) e = 4096 + 20971520;
         if (e > s) print s, e - s }' "$T/live.fine" | diff - "$T/window"
  out=$(rpc_call "$RSOCK" bitmaps)
  echo "$out"
  [ "$(echo "$out" | jq -c '.result[0] | [.name, .flags, .live]')" = '["fine",["in-use","auto"],true]' ]
  [ "$(echo "$out" | jq -c '.result[2] | [.name, .flags, .live]')" = '["off",[],false]' ]
  [ "$(echo "$out" | jq '.result[1].count')" = "$(awk '{ n += $2 } END { print n }' "$T/live.coarse")" ]
  stop_rpc
  qemu_check_clean "$IMG"
  for b in fine coarse off; do
    qemu_dirty "$IMG" "$b" | diff - "$T/live.$b"
  done
  assert_bitmap_holds "$IMG" fine 512 "$T/before.fine" "$T/ranges"
  assert_bitmap_holds "$IMG" coarse 1048576 "$T/before.coarse" "$T/ranges"
  qemu_map "$IMG" off | diff "$T/before.off" -
}

@test "bitmap_map on an image served read-only: the stored bits, as qemu-nbd -B reports them" {
  start_rpc
  for b in fine coarse off; do
    diff <(qemu_dirty "$IMG" "$b") <(rpc_dirty "$RSOCK" "$b")
  done
  [ "$(rpc_call "$RSOCK" bitmaps | jq -c '[.result[] | .count]')" = "[$((4096 + 7680 + (1 << 20))),$((3 << 20)),4096]" ]
}

@test "bitmap_map errors: missing or wrong name, a bitmap in use, a range past the end" {
  qemu-io -c 'write 0 4k' -c abort "$IMG" >/dev/null 2>&1 || true     # leaves them all in use
  qemu-img check -q -r leaks "$IMG" >/dev/null 2>&1 || true
  qemu-img bitmap --add "$IMG" fresh
  start_rpc
  [ "$(rpc_call "$RSOCK" bitmap_map '{}' | jq .error.code)" = -32602 ]
  [ "$(rpc_call "$RSOCK" bitmap_map '{"name":7}' | jq .error.code)" = -32602 ]
  [ "$(rpc_call "$RSOCK" bitmap_map '{"name":"off","colour":1}' | jq .error.code)" = -32602 ]
  [ "$(rpc_call "$RSOCK" bitmap_map '{"name":"off","offset":33554433}' | jq .error.code)" = -32602 ]
  out=$(rpc_call "$RSOCK" bitmap_map '{"name":"nosuch"}')
  [ "$(echo "$out" | jq -c '[.error.code, .error.data.errno]')" = "[-32000,2]" ]
  [[ "$(echo "$out" | jq -r .error.message)" == *"no bitmap named 'nosuch'"* ]]
  out=$(rpc_call "$RSOCK" bitmap_map '{"name":"fine"}')
  [ "$(echo "$out" | jq -c '[.error.code, .error.data.errno]')" = "[-32000,16]" ]
  [[ "$(echo "$out" | jq -r .error.message)" == *"'fine' is in use"* ]]
  [ "$(rpc_call "$RSOCK" bitmaps | jq -c '.result[0] | [.flags, has("count")]')" = '[["in-use","auto"],false]' ]
  [ "$(rpc_call "$RSOCK" bitmap_map '{"name":"fresh","offset":0,"length":0}' | jq -c .result)" = "[]" ]
  [ "$(rpc_call "$RSOCK" bitmap_map '{"name":"fresh"}' | jq -c .result)" = '[{"start":0,"length":33554432,"dirty":false}]' ]
}
