# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers of the JSON-RPC suites: rb-rpc on a Unix socket, one-shot requests, the byte-exact client.

RB_RPC="$top_builddir/rpc/rb-rpc"
RPC_CLIENT=(python3 "$top_srcdir/tests/rpc-client.py")

# start_rpc [options]: rb-rpc on $RSOCK serving $IMG; RPID is its pid.
start_rpc () {
  "$RB_RPC" -l "unix:$RSOCK" "$@" "$IMG" 2>"$BATS_TEST_TMPDIR/rpc.err" &
  RPID=$!
  wait_until "$RB_WAIT" "rb-rpc on $RSOCK" eval 'socket_serves "$RSOCK" || process_gone "$RPID"' &&
    socket_serves "$RSOCK" && return 0
  cat "$BATS_TEST_TMPDIR/rpc.err"; return 1
}

# stop_rpc: SIGTERM rb-rpc and wait for it (its exit status is returned).
stop_rpc () {
  [ -n "${RPID:-}" ] || return 0
  kill "$RPID" 2>/dev/null
  local rc=0
  wait "$RPID" || rc=$?
  RPID=
  return $rc
}

# socket_serves PATH: a server listens on the Unix socket at PATH.
socket_serves () {
  [ -S "$1" ] && nc -z -U "$1" 2>/dev/null
}

# wait_for_socket PATH: bounded wait until a server listens on the socket at PATH.
wait_for_socket () {
  wait_until "$RB_WAIT" "a server on $1" socket_serves "$1"
}

# wait_for_line FILE TEXT [SECONDS]: bounded wait until FILE holds TEXT.
wait_for_line () {
  wait_until "${3:-$RB_WAIT}" "'$2' in $1" grep -q -- "$2" "$1" ||
    { cat "$1" 2>/dev/null; return 1; }
}

# rpc TEXT [SOCKET]: send TEXT on a new connection, print every reply line.
rpc () {
  printf '%s' "$1" | timeout 30 nc -N -U "${2:-$RSOCK}"
}

# rss_as_released: in a sanitized build, freed memory is really released (ASan's
# quarantine would hold up to 256 MiB of it), so VmRSS measures rb-rpc's own use.
rss_as_released () {
  if ldd "$RB_RPC" | grep -q libasan; then
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=1"
  fi
}

# vmrss PID: resident memory in KiB.
vmrss () {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# rpc_settled: bounded wait until the server's count of bytes read stops moving
# (3 equal answers 0.3 s apart); prints it.
rpc_settled () {
  local last=-1 same=0 v i
  for i in $(seq 200); do
    v=$(rpc '{"method":"stats","id":1}' "${1:-$RSOCK}" | jq .result.rpc.read_bytes)
    if [ "$v" = "$last" ]; then same=$((same + 1)); else same=0; fi
    last=$v
    [ "$same" -ge 3 ] && { echo "$v"; return 0; }
    sleep 0.3
  done
  echo "the server kept reading: $v"; return 1
}
