#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# JSON-RPC snapshots, snapshot_create and resize (issue 19) against qemu-img: lists equal,
# snapshots QEMU applies, sizes qemu-img reports; refused on read-only servers; a snapshot
# taken by the plugin while an NBD client writes is one of the disks the client wrote; a resize
# of a served image with dirty bitmaps goes on tracking in the resized bitmaps.

load helpers
load chain-helpers
load bitmap-helpers

RB_RPC="$top_builddir/rpc/rb-rpc"

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/r.qcow2"
  qemu-img create -q -f qcow2 "$IMG" 16M
  qemu-io -c 'write -P 0x41 128k 64k' -c 'write -z 1M 64k' -c 'write -P 0x42 5M 4k' "$IMG" >/dev/null
  RSOCK="$T/rpc.sock"
}

teardown () {
  [ -n "${RPID:-}" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null
  stop_rblock
  true
}

start_rpc () {   # [options]
  "$RB_RPC" -l "unix:$RSOCK" "$@" "$IMG" 2>"$T/rpc.err" &
  RPID=$!
  wait_until "$RB_WAIT" "rb-rpc's socket" eval '[ -S "$RSOCK" ] || process_gone "$RPID"' &&
    [ -S "$RSOCK" ] && return 0
  cat "$T/rpc.err"; return 1
}

stop_rpc () {
  kill "$RPID" && wait "$RPID" 2>/dev/null; RPID=
}

rpc () {
  printf '%s' "$1" | timeout 10 nc -N -U "$RSOCK"
}

@test "rpc snapshots lists what qemu-img lists, all of them (more than info's 64)" {
  local i
  for i in $(seq 70); do qemu-img snapshot -c "s$i" "$IMG"; done
  start_rpc
  out=$(rpc '{"jsonrpc":"2.0","method":"snapshots","id":1}')
  [ "$(echo "$out" | jq -c '[.result[] | [.id, .name, .date_sec, .date_nsec, .vm_state_size]]')" = \
    "$(qemu-img info -U --output=json "$IMG" | jq -c '[.snapshots[] | [.id, .name, .["date-sec"], .["date-nsec"], .["vm-state-size"]]]')" ]
  [ "$(echo "$out" | jq '.result | length')" = 70 ]
  [ "$(echo "$out" | jq '.result[0].disk_size')" = $((16 << 20)) ]
}

@test "rpc snapshot_create and resize change the image as rb-snapshot and rb-resize do" {
  start_rpc --writable
  qemu-img convert -U -O raw "$IMG" "$T/then.raw"
  out=$(rpc '{"jsonrpc":"2.0","method":"snapshot_create","params":{"name":"nightly"},"id":1}')
  [ "$(echo "$out" | jq -r .result.name)" = nightly ]
  [ "$(echo "$out" | jq -r .result.id)" = 1 ]
  out=$(rpc '{"jsonrpc":"2.0","method":"snapshot_create","params":{"name":"nightly"},"id":2}')
  [ "$(echo "$out" | jq .error.code)" = -32000 ]
  [ "$(echo "$out" | jq .error.data.errno)" = 17 ]            # EEXIST
  out=$(rpc '{"jsonrpc":"2.0","method":"write","params":{"offset":131072,"data":"'"$(head -c 4096 /dev/zero | tr '\0' 'x' | base64 -w0)"'"},"id":3}')
  [ "$(echo "$out" | jq .result.length)" = 4096 ]
  out=$(rpc '{"jsonrpc":"2.0","method":"resize","params":{"size":33554432},"id":4}')
  [ "$(echo "$out" | jq .result.size)" = 33554432 ]
  out=$(rpc '{"jsonrpc":"2.0","method":"resize","params":{"size":1048576},"id":5}')
  [ "$(echo "$out" | jq .error.code)" = -32000 ]
  out=$(rpc '{"jsonrpc":"2.0","method":"resize","params":{"size":"big"},"id":6}')
  [ "$(echo "$out" | jq .error.code)" = -32602 ]
  out=$(rpc '{"jsonrpc":"2.0","method":"snapshot_create","params":{},"id":7}')
  [ "$(echo "$out" | jq .error.code)" = -32602 ]
  stop_rpc
  qemu_check_clean "$IMG"
  [ "$(qemu-img info --output=json "$IMG" | jq '.["virtual-size"]')" = 33554432 ]
  [ "$(qemu-img info --output=json "$IMG" | jq -r '.snapshots[0].name')" = nightly ]
  qemu-img snapshot -a nightly "$IMG"
  qemu-img compare "$T/then.raw" "$IMG"
}

@test "rpc snapshot_create and resize are refused by a read-only server, image untouched" {
  cp "$IMG" "$T/before"
  start_rpc
  out=$(rpc '{"jsonrpc":"2.0","method":"snapshot_create","params":{"name":"x"},"id":1}')
  [ "$(echo "$out" | jq .error.data.errno)" = 30 ]            # EROFS
  out=$(rpc '{"jsonrpc":"2.0","method":"resize","params":{"size":33554432},"id":2}')
  [ "$(echo "$out" | jq .error.data.errno)" = 30 ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"list_methods","id":3}' |
       jq -c '[.result[] | select(.name == "snapshot_create" or .name == "resize") | .available]')" = '[false,false]' ]
  stop_rpc
  cmp "$IMG" "$T/before"
}

@test "the plugin's snapshot_create while an NBD client writes: the snapshot is one of its disks" {
  start_rblock "$IMG" rpc="unix:$RSOCK" rpc-writable=true
  # The client writes 8 blocks, flushing after each; the snapshot lands between two.
  nbdsh -u "$URI" -c '
import time
for i in range(8):
    h.pwrite(bytes([0x60 + i]) * 65536, i * 65536)
    h.flush()
    if i == 3:
        open("'"$T"'/half", "w").close()
        while not __import__("os").path.exists("'"$T"'/snapped"):
            time.sleep(0.01)
'&
  npid=$!
  wait_until "$RB_WAIT" "the client's first writes" eval '[ -e "$T/half" ]'
  out=$(rpc '{"jsonrpc":"2.0","method":"snapshot_create","params":{"name":"live"},"id":1}')
  touch "$T/snapped"
  wait "$npid"
  [ "$(echo "$out" | jq -r .result.name)" = live ]
  stop_rblock
  qemu_check_clean "$IMG"
  qemu-img convert -l snapshot.name=live -O raw "$IMG" "$T/live.raw"
  for i in 0 1 2 3; do
    cmp -n 65536 <(head -c 65536 /dev/zero | tr '\0' "\\$(printf '%03o' $((0x60 + i)))") \
      <(dd if="$T/live.raw" bs=65536 skip=$i count=1 status=none)
  done
  # Blocks 4..7 were written after the snapshot: it still holds the old bytes there.
  qemu-img convert -O raw "$IMG" "$T/now.raw"
  qemu-img snapshot -a live "$IMG"
  qemu-img compare "$T/live.raw" "$IMG"
  ! cmp -s "$T/live.raw" "$T/now.raw"
}

@test "the plugin's resize with persistent bitmaps: writes before and after land in the resized bitmaps, as QEMU's twin" {
  qemu-img bitmap --add "$IMG" on
  qemu-img bitmap --add -g 4096 "$IMG" off
  qemu-io -c 'write -P 1 0 4k' -c 'write -P 2 16773120 4k' "$IMG" >/dev/null
  qemu-img bitmap --disable "$IMG" off
  cp "$IMG" "$T/twin.qcow2"
  start_rblock "$IMG" rpc="unix:$RSOCK" rpc-writable=true
  nbdsh -u "$URI" -c 'h.pwrite(b"\x09" * 4096, 8 << 20)'
  out=$(rpc '{"jsonrpc":"2.0","method":"resize","params":{"size":41943040},"id":1}')
  [ "$(echo "$out" | jq .result.size)" = 41943040 ] || { echo "$out"; false; }
  nbdsh -u "$URI" -c 'assert h.get_size() == 40 << 20' -c 'h.pwrite(b"\x0a" * 4096, 30 << 20)'
  rpc_dirty "$RSOCK" on > "$T/got"
  printf '%s\n' "0 65536" "8388608 65536" "16711680 65536" "31457280 65536" | diff - "$T/got"
  out=$(rpc '{"jsonrpc":"2.0","method":"resize","params":{"size":25165824,"shrink":true},"id":2}')
  [ "$(echo "$out" | jq .result.size)" = 25165824 ] || { echo "$out"; false; }
  nbdsh -u "$URI" -c 'h.pwrite(b"\x0b" * 4096, 20 << 20)'
  rpc_dirty "$RSOCK" on > "$T/got"
  printf '%s\n' "0 65536" "8388608 65536" "16711680 65536" "20971520 65536" | diff - "$T/got"
  stop_rblock
  qemu-io -c 'write -P 9 8M 4k' "$T/twin.qcow2" >/dev/null
  qemu-img resize -q "$T/twin.qcow2" 40M
  qemu-io -c 'write -P 10 30M 4k' "$T/twin.qcow2" >/dev/null
  qemu-img resize -q --shrink "$T/twin.qcow2" 24M
  qemu-io -c 'write -P 11 20M 4k' "$T/twin.qcow2" >/dev/null
  qemu_check_clean "$IMG"
  qemu-img compare -q "$IMG" "$T/twin.qcow2"
  [ "$(bitmap_names "$IMG")" = "$(printf '%s\n' "on 65536 auto" "off 4096 ")" ]
  same_bitmaps "$IMG" "$T/twin.qcow2"
}
