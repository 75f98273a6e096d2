#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# JSON-RPC a client cannot exhaust (rb-rpc): bounded memory for unread replies, bounded batches,
# signals obeyed, idle connections give way, allocation failures are errors, not crashes.

load helpers
load rpc-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/r.qcow2"
  qemu-img create -q -f qcow2 "$IMG" 64M
  qemu-io -c 'write -P 0x61 0 4M' "$IMG" >/dev/null
  RSOCK="$T/rpc.sock"
  CLIENTS=()
}

teardown () {
  local p i
  for p in "${CLIENTS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "${RPID:-}" ]; then
    kill "$RPID" 2>/dev/null
    wait_until "$RB_WAIT" "rb-rpc to exit" process_gone "$RPID" || true
    kill -9 "$RPID" 2>/dev/null
    wait "$RPID" 2>/dev/null
  fi
  true
}

# flood N: a client pipelining N reads of 4 MiB that never reads a reply (output in $T/flood.$k).
flood () {
  local k=${#CLIENTS[@]}
  "${RPC_CLIENT[@]}" flood "unix:$RSOCK" "$1" 4194304 >"$T/flood.$k" 2>&1 &
  CLIENTS+=($!)
  wait_for_line "$T/flood.$k" "^sent"
}

@test "limits: clients pipelining 4 MiB reads they never read: rb-rpc stops reading them, its memory stays bounded, others are served" {
  rss_as_released
  start_rpc
  rss0=$(vmrss "$RPID")
  flood 100
  flood 100
  read_bytes=$(rpc_settled)
  rss=$(vmrss "$RPID")
  echo "# rb-rpc VmRSS ${rss0} KiB at start, ${rss} KiB with 2 x 100 unread 4 MiB replies asked; ${read_bytes} bytes read for them" >&3
  # It answered a few and then stopped reading those connections (200 reads asked).
  [ "$read_bytes" -lt $((20 * 4194304)) ]
  [ "$rss" -lt $((rss0 + 100 * 1024)) ]
  # Another client is served at once, with correct data.
  got=$(rpc '{"method":"read","params":{"offset":0,"length":16},"id":7}' | jq -r .result.data | base64 -d)
  [ "$got" = aaaaaaaaaaaaaaaa ]
  kill -0 "$RPID"
}

@test "limits: over --max-memory the longest idle flooding connections are closed and the rest is served" {
  rss_as_released
  start_rpc --max-memory 8M
  for i in 1 2 3 4; do flood 50; done
  # Past the 1 s grace of the flooders (a rule, not a race), a new request makes
  # room by closing the longest idle of them.
  sleep 1.2
  for i in $(seq 50); do
    out=$(rpc '{"method":"read","params":{"offset":0,"length":4194304},"id":8}' | jq -r .result.length)
    [ "$out" = 4194304 ] && break
  done
  [ "$out" = 4194304 ]
  wait_until "$RB_WAIT" "two flooding connections closed" \
    eval 'closed=$(grep -l closed "$T"/flood.* | wc -l); [ "$closed" -ge 2 ]' || true
  echo "# $closed of 4 flooding connections closed to stay near 8 MiB; rb-rpc VmRSS $(vmrss "$RPID") KiB" >&3
  [ "$closed" -ge 2 ]
  [ "$(vmrss "$RPID")" -lt $((100 * 1024)) ]
}

@test "limits: a batch of 1024 reads of 4 MiB stops running requests past 16 MiB of reply: the rest get -32002, every id answered" {
  start_rpc
  run timeout 120 "${RPC_CLIENT[@]}" batch "unix:$RSOCK" 1024 4194304
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq .replies)" = 1024 ]
  [ "$(echo "$output" | jq .ids)" = true ]
  results=$(echo "$output" | jq .results)
  [ "$results" -ge 3 ]
  [ "$results" -le 4 ]
  [ "$(echo "$output" | jq '.errors."-32002"')" = $((1024 - results)) ]
  [ "$(echo "$output" | jq .bytes)" -lt $((24 << 20)) ]
}

@test "limits: SIGTERM during a batch of 1024 large reads stops rb-rpc within a bounded wait, the image intact" {
  start_rpc
  "${RPC_CLIENT[@]}" batch-start "unix:$RSOCK" 1024 4194304 >"$T/batch.out" 2>&1 &
  CLIENTS+=($!)
  # The reply starts while the batch is still being answered: the server is in it.
  wait_for_line "$T/batch.out" "first byte"
  kill -TERM "$RPID"
  wait_until "$RB_WAIT" "rb-rpc to exit on SIGTERM" process_gone "$RPID" || true
  ! kill -0 "$RPID" 2>/dev/null
  wait "$RPID"
  RPID=
  qemu_check_clean "$IMG"
}

# idle_client: a client that only ever sends spaces (output in $T/idle.$k).
idle_client () {
  local k=${#CLIENTS[@]}
  "${RPC_CLIENT[@]}" idle "unix:$RSOCK" >"$T/idle.$k" 2>&1 &
  CLIENTS+=($!)
  wait_for_line "$T/idle.$k" connected
}

@test "limits: at --max-connections the longest idle connection (whitespace only) gives way to a new client, and is told why" {
  start_rpc --max-connections 3
  idle_client; idle_client; idle_client
  # Bounded: once the idle ones are past the 1 s grace, a new client is served.
  wait_until "$RB_WAIT" "a new client to be served" \
    eval 'out=$(rpc '"'"'{"method":"get_version","id":5}'"'"'); [[ "$out" == *'"'"'"id":5'"'"'* ]]' || true
  [ "$(echo "$out" | jq .id)" = 5 ]
  [ "$(echo "$out" | jq -r .result.name)" = rblock ]
  wait_for_line "$T/idle.0" closed
  grep -q '"code":-32002' "$T/idle.0"
  grep -q 'longest idle' "$T/idle.0"
}

@test "limits: whitespace does not keep a connection open past --idle-timeout" {
  start_rpc --idle-timeout 2
  idle_client
  wait_for_line "$T/idle.0" closed
  [ "$(rpc '{"method":"get_version","id":6}' | jq .id)" = 6 ]
}

# alloc_limit BYTES: allocations over BYTES fail in rb-rpc (ASan's own limit in a sanitized build).
alloc_limit () {
  if ldd "$RB_RPC" | grep -q libasan; then
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1:max_allocation_size_mb=$(($1 >> 20))"
  else
    export LD_PRELOAD="$top_builddir/tests/.libs/rpcshim.so" RPCSHIM_ALLOC_MAX=$1
  fi
}

@test "limits: when allocations fail (over 3 MiB) a large read is a -32603 error reply, never a crash, and the server goes on" {
  alloc_limit $((3 << 20))
  start_rpc
  unset LD_PRELOAD
  for len in 4194304 3000000 2200000 2000000; do
    out=$(rpc "{\"method\":\"read\",\"params\":{\"offset\":0,\"length\":$len},\"id\":$len}")
    echo "$len: ${out:0:200}"
    [ "$(echo "$out" | jq .error.code)" = -32603 ]
    [[ "$(echo "$out" | jq -r .error.message)" == *"out of memory"* ]]
  done
  [ "$(rpc '{"method":"read","params":{"offset":0,"length":65536},"id":1}' | jq -r .result.data | base64 -d | tr -d a | wc -c)" = 0 ]
  kill -0 "$RPID"
}
