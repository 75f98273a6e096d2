#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# NBD and JSON-RPC on one image: the plugin's embedded server (rpc=, rpc-writable=, limits, access).

load helpers
load rpc-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/r.qcow2"
  qemu-img create -q -f qcow2 "$IMG" 16M
  RSOCK="$T/rpc.sock"
  CLIENTS=()
}

teardown () {
  local p
  for p in "${CLIENTS[@]}"; do kill "$p" 2>/dev/null; done
  [ -e "$T/arm" ] && touch "$T/go"
  stop_rblock
}

@test "plugin + JSON-RPC at once: written over NBD, read over the embedded socket; stats count NBD" {
  start_rblock "$IMG" rpc="unix:$RSOCK" rpc-writable=true
  wait_for_socket "$RSOCK"
  nbdsh -u "$URI" -c 'h.pwrite(b"written over NBD", 7 * 65536 + 5)'
  got=$(rpc '{"jsonrpc":"2.0","method":"read","params":{"offset":458757,"length":16},"id":1}' | jq -r .result.data | base64 -d)
  [ "$got" = "written over NBD" ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"stats","id":2}' | jq .result.engine.writes)" -ge 1 ]
  rpc '{"jsonrpc":"2.0","method":"write","params":{"offset":0,"data":"UlBD"},"id":3}' | jq -e .result >/dev/null
  [ "$(nbdsh -u "$URI" -c 'import sys; sys.stdout.write(h.pread(3, 0).decode())')" = RPC ]
  stop_rblock
  qemu_check_clean "$IMG"
}

@test "plugin + JSON-RPC: clients pipelining 4 MiB reads they never read: nbdkit's memory stays bounded, NBD and other RPC clients are served" {
  qemu-io -c 'write -P 0x62 0 4M' "$IMG" >/dev/null
  start_rblock "$IMG" rpc="unix:$RSOCK"
  wait_for_socket "$RSOCK"
  pid=$(cat "$PIDFILE")
  rss0=$(vmrss "$pid")
  for k in 0 1; do
    "${RPC_CLIENT[@]}" flood "unix:$RSOCK" 100 4194304 >"$T/flood.$k" 2>&1 &
    CLIENTS+=($!)
    wait_for_line "$T/flood.$k" "^sent"
  done
  read_bytes=$(rpc_settled)
  rss=$(vmrss "$pid")
  echo "# nbdkit VmRSS ${rss0} KiB at start, ${rss} KiB with 2 x 100 unread 4 MiB replies asked; ${read_bytes} bytes read for them" >&3
  [ "$read_bytes" -lt $((20 * 4194304)) ]
  [ "$rss" -lt $((rss0 + 100 * 1024)) ]
  [ "$(timeout 30 env PATH="/usr/bin:$PATH" nbdsh -u "$URI" -c 'import sys; sys.stdout.write(h.pread(4, 4096).decode())')" = bbbb ]
  [ "$(rpc '{"method":"read","params":{"offset":0,"length":3},"id":2}' | jq -r .result.data)" = YmJi ]
}

@test "plugin + JSON-RPC: a check runs beside NBD I/O: reads and writes complete while the check waits in the middle, and it is clean" {
  # 2 GiB, 64 KiB clusters: an L2 table per 512 MiB; data under four of them.
  qemu-img create -q -f qcow2 "$IMG" 2G
  qemu-io -c 'write -P 0x61 0 64k' -c 'write -P 0x62 600M 64k' -c 'write -P 0x63 1100M 64k' \
          -c 'write -P 0x64 1700M 64k' "$IMG" >/dev/null
  l1=$(od -An -tu8 --endian=big -j 40 -N 8 "$IMG" | tr -d ' ')
  last_l2=$(( $(od -An -tu8 --endian=big -j $((l1 + 3 * 8)) -N 8 "$IMG" | tr -d ' ') & 0x00fffffffffffe00 ))
  # The shim holds the check's read of the last L2 table until the test says go.
  LD_PRELOAD="$top_builddir/tests/.libs/rpcshim.so" RPCSHIM_PAUSE_AT=$last_l2 RPCSHIM_DIR="$T" \
    start_rblock "$IMG" rpc="unix:$RSOCK" rpc-writable=true
  wait_for_socket "$RSOCK"
  # A client that may write has been here (the plugin has write access now): an
  # overwrite in place, nothing allocated.
  nbdsh -u "$URI" -c 'h.pwrite(b"\x61" * 512, 0)'
  touch "$T/arm"
  rpc '{"method":"check","id":1}' >"$T/check.out" &
  CLIENTS+=($!)
  wait_until "$RB_WAIT" "the check to pause" test -e "$T/paused"
  [ -e "$T/paused" ]
  # The check is in the middle of its walk: NBD reads and an allocating write go on.
  run timeout 30 env PATH="/usr/bin:$PATH" nbdsh -u "$URI" -c '
assert h.pread(65536, 0) == b"\x61" * 65536
assert h.pread(65536, 600 << 20) == b"\x62" * 65536
h.pwrite(b"\x65" * 65536, 1000 << 20)
h.flush()
assert h.pread(65536, 1000 << 20) == b"\x65" * 65536'
  touch "$T/go"
  [ "$status" -eq 0 ]
  wait_for_line "$T/check.out" result
  [ "$(jq .result.corruptions "$T/check.out")" = 0 ]
  [ "$(jq .result.leaks "$T/check.out")" = 0 ]
  # It walked again after the write: it counts the new cluster.
  [ "$(jq .result.allocated_clusters "$T/check.out")" = 5 ]
  stop_rblock
  qemu_check_clean "$IMG"
  [ "$(qemu-io -c 'read -P 0x65 1000M 64k' "$IMG" | grep -c 'read 65536')" = 1 ]
}

@test "plugin + JSON-RPC: check {exclusive} (pauses guest I/O) is refused on a read-only RPC socket, allowed on a writable one" {
  qemu-io -c 'write -P 0x61 0 64k' "$IMG" >/dev/null
  start_rblock "$IMG" rpc="unix:$RSOCK"
  wait_for_socket "$RSOCK"
  out=$(rpc '{"method":"check","params":{"exclusive":true},"id":1}')
  [ "$(echo "$out" | jq .error.code)" = -32602 ]
  [[ "$(echo "$out" | jq -r .error.message)" == *"pauses guest I/O"* ]]
  [ "$(rpc '{"method":"check","id":2}' | jq .result.corruptions)" = 0 ]
  stop_rblock
  start_rblock "$IMG" rpc="unix:$RSOCK" rpc-writable=true
  wait_for_socket "$RSOCK"
  # Writable once an NBD client that may write has connected.
  nbdsh -u "$URI" -c 'h.pwrite(b"\x62" * 65536, 65536)'
  [ "$(rpc '{"method":"check","params":{"exclusive":true},"id":3}' | jq .result.allocated_clusters)" = 2 ]
}

@test "plugin + JSON-RPC: stats asked while an NBD client writes and reads count every request exactly" {
  start_rblock "$IMG" rpc="unix:$RSOCK"
  wait_for_socket "$RSOCK"
  timeout 60 env PATH="/usr/bin:$PATH" nbdsh -u "$URI" -c '
for i in range(400):
    h.pwrite(bytes([i % 256]) * 4096, (i * 37 % 4096) * 4096)
    h.pread(4096, (i * 37 % 4096) * 4096)' &
  nbd=$!
  last=0
  while kill -0 "$nbd" 2>/dev/null; do
    w=$(rpc '{"method":"stats","id":1}' | jq .result.engine.writes)
    [ "$w" -ge "$last" ]
    last=$w
  done
  wait "$nbd"
  out=$(rpc '{"method":"stats","id":2}')
  [ "$(echo "$out" | jq .result.engine.writes)" = 400 ]
  [ "$(echo "$out" | jq .result.engine.reads)" = 400 ]
  [ "$(echo "$out" | jq .result.engine.write_bytes)" = $((400 * 4096)) ]
  stop_rblock
  qemu_check_clean "$IMG"
}

@test "plugin + JSON-RPC access: rpc=unix: is mode 0600, rpc=tcp: off loopback needs rpc-listen-any=true, rpc-token-file= is enforced" {
  umask 000
  start_rblock "$IMG" rpc="unix:$RSOCK"
  umask 022
  wait_for_socket "$RSOCK"
  [ "$(stat -c %a "$RSOCK")" = 600 ]
  stop_rblock
  port=$(shuf -i 20000-60000 -n 1)
  run start_rblock "$IMG" rpc="tcp:0.0.0.0:$port"
  [ "$status" -ne 0 ]
  grep -q "rpc: tcp:0.0.0.0:$port: 0.0.0.0 is not a loopback address" "$T/nbdkit.err"
  printf 'tok-%s\n' "$RANDOM$RANDOM" >"$T/token"
  start_rblock "$IMG" rpc="tcp:0.0.0.0:$port" rpc-listen-any=true rpc-token-file="$T/token"
  wait_until "$RB_WAIT" "the RPC listener on port $port" eval 'nc -z 127.0.0.1 "$port" 2>/dev/null'
  [ "$(echo '{"method":"get_version","id":42}' | nc -N 127.0.0.1 "$port" | jq .error.code)" = -32001 ]
  [ "$(echo '{"method":"get_version","token":"'"$(cat "$T/token")"'","id":42}' | nc -N 127.0.0.1 "$port" | jq -r .result.name)" = rblock ]
}
