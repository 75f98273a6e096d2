#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# NBD and JSON-RPC on one image: the plugin's embedded server (rpc=, rpc-writable=).

load helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/r.qcow2"
  qemu-img create -q -f qcow2 "$IMG" 16M
  RSOCK="$T/rpc.sock"
}

teardown () {
  stop_rblock
}

rpc () {
  printf '%s' "$1" | timeout 10 nc -N -U "$RSOCK"
}

@test "plugin + JSON-RPC at once: written over NBD, read over the embedded socket; stats count NBD" {
  start_rblock "$IMG" rpc="unix:$RSOCK" rpc-writable=true
  wait_until "$RB_WAIT" "the RPC socket" test -S "$RSOCK"
  nbdsh -u "$URI" -c 'h.pwrite(b"written over NBD", 7 * 65536 + 5)'
  got=$(rpc '{"jsonrpc":"2.0","method":"read","params":{"offset":458757,"length":16},"id":1}' | jq -r .result.data | base64 -d)
  [ "$got" = "written over NBD" ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"stats","id":2}' | jq .result.engine.writes)" -ge 1 ]
  rpc '{"jsonrpc":"2.0","method":"write","params":{"offset":0,"data":"UlBD"},"id":3}' | jq -e .result >/dev/null
  [ "$(nbdsh -u "$URI" -c 'import sys; sys.stdout.write(h.pread(3, 0).decode())')" = RPC ]
  stop_rblock
  qemu_check_clean "$IMG"
}
