#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# JSON-RPC access control (rb-rpc): a private Unix socket by default, TCP only on loopback unless
# asked, a shared secret on every request.

load helpers
load rpc-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/r.qcow2"
  qemu-img create -q -f qcow2 "$IMG" 16M
  qemu-io -c 'write -P 0x41 0 64k' "$IMG" >/dev/null
  RSOCK="$T/rpc.sock"
  printf 's3cret-%s\n' "$RANDOM$RANDOM" >"$T/token"
  chmod 600 "$T/token"
  TOKEN=$(head -1 "$T/token")
}

teardown () {
  [ -n "${RPID:-}" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null
  true
}

# free_port: a TCP port nothing listens on now.
free_port () {
  local p
  for p in $(shuf -i 20000-60000 -n 50); do
    nc -z 127.0.0.1 "$p" 2>/dev/null || { echo "$p"; return 0; }
  done
  return 1
}

@test "access: without --listen rb-rpc serves a mode 0600 Unix socket in \$XDG_RUNTIME_DIR (whatever the umask), not TCP" {
  mkdir -m 700 "$T/run"
  (umask 000; XDG_RUNTIME_DIR="$T/run" exec "$RB_RPC" "$IMG" 2>"$T/rpc.err") &
  RPID=$!
  wait_for_socket "$T/run/rb-rpc.sock"
  [ "$(stat -c %a "$T/run/rb-rpc.sock")" = 600 ]
  [ "$(stat -c %u "$T/run/rb-rpc.sock")" = "$(id -u)" ]
  wait_for_line "$T/rpc.err" "listening on unix:$T/run/rb-rpc.sock"
  [ "$(rpc '{"method":"get_version","id":1}' "$T/run/rb-rpc.sock" | jq .id)" = 1 ]
  # No TCP listener of its own.
  ! ss -ltnp | grep -q "pid=$RPID,"
  # An explicit socket is mode 0600 too.
  (umask 000; exec "$RB_RPC" -l "unix:$T/b.sock" "$IMG" 2>/dev/null) &
  pid2=$!
  wait_for_socket "$T/b.sock"
  [ "$(stat -c %a "$T/b.sock")" = 600 ]
  kill "$pid2"; wait "$pid2" || true
}

@test "access: TCP on an address that is not loopback is refused without --listen-any; with it, served" {
  port=$(free_port)
  run timeout 20 "$RB_RPC" -l "tcp:0.0.0.0:$port" "$IMG"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "rb-rpc: tcp:0.0.0.0:$port: 0.0.0.0 is not a loopback address"*"--listen-any"* ]]
  ! nc -z 127.0.0.1 "$port" 2>/dev/null
  # Loopback by name or number needs nothing.
  "$RB_RPC" -l "tcp:localhost:$port" "$IMG" 2>"$T/rpc.err" &
  RPID=$!
  wait_until "$RB_WAIT" "rb-rpc on port $port" eval 'nc -z 127.0.0.1 "$port" 2>/dev/null'
  [ "$(echo '{"method":"get_version","id":42}' | nc -N 127.0.0.1 "$port" | jq .id)" = 42 ]
  kill "$RPID"; wait "$RPID" || true; RPID=
  "$RB_RPC" -l "tcp:0.0.0.0:$port" --listen-any "$IMG" 2>"$T/rpc.err" &
  RPID=$!
  wait_until "$RB_WAIT" "rb-rpc on port $port" eval 'nc -z 127.0.0.1 "$port" 2>/dev/null'
  [ "$(echo '{"method":"get_version","id":43}' | nc -N 127.0.0.1 "$port" | jq .id)" = 43 ]
}

# code REPLY-LINE: the error code, or "ok" for a result.
code () {
  jq -r 'if has("result") then "ok" else .error.code end'
}

@test "access: with --token-file every request needs the token: none or a wrong one is -32001, the right one (member or auth) runs" {
  start_rpc --token-file "$T/token" --writable
  [ "$(rpc '{"method":"get_version","id":1}' | code)" = -32001 ]
  [[ "$(rpc '{"method":"get_version","id":1}' | jq -r .error.message)" == *"token"* ]]
  [ "$(rpc '{"method":"read","params":{"offset":0,"length":4},"token":"wrong","id":2}' | code)" = -32001 ]
  [ "$(rpc '{"method":"read","params":{"offset":0,"length":4},"token":"'"${TOKEN}x"'","id":2}' | code)" = -32001 ]
  [ "$(rpc '{"method":"read","params":{"offset":0,"length":4},"token":"'"${TOKEN:0:5}"'","id":2}' | code)" = -32001 ]
  [ "$(rpc '{"method":"read","params":{"offset":0,"length":4},"token":42,"id":2}' | code)" = -32001 ]
  [ "$(rpc '{"method":"read","params":{"offset":0,"length":4},"token":"'"$TOKEN"'","id":3}' | jq -r .result.data)" = QUFBQQ== ]
  # Nothing is told without the token: not even which methods exist.
  [ "$(rpc '{"method":"nosuch","id":4}' | code)" = -32001 ]
  # auth first: the rest of that connection needs no token; a wrong auth changes nothing.
  out=$(rpc '{"method":"auth","params":{"token":"nope"},"id":5}{"method":"get_version","id":6}')
  [ "$(echo "$out" | code | tr '\n' ' ')" = "-32001 -32001 " ]
  out=$(rpc '{"method":"auth","params":{"token":"'"$TOKEN"'"},"id":5}{"method":"get_version","id":6}{"method":"nosuch","id":7}')
  [ "$(echo "$out" | code | tr '\n' ' ')" = "ok ok -32601 " ]
  # ... on that connection only.
  [ "$(rpc '{"method":"get_version","id":8}' | code)" = -32001 ]
}

@test "access: the token on batch members: each member is judged alone, an auth member opens the ones after it" {
  start_rpc --token-file "$T/token"
  out=$(rpc '[{"method":"get_version","token":"'"$TOKEN"'","id":1},{"method":"get_version","id":2},{"method":"get_version","token":"x","id":3},{"method":"info","token":"'"$TOKEN"'","id":4}]')
  [ "$(echo "$out" | jq -c '[.[] | if has("result") then "ok" else .error.code end]')" = '["ok",-32001,-32001,"ok"]' ]
  [ "$(echo "$out" | jq -c '[.[].id]')" = '[1,2,3,4]' ]
  out=$(rpc '[{"method":"get_version","id":1},{"method":"auth","params":{"token":"'"$TOKEN"'"},"id":2},{"method":"get_version","id":3}]')
  [ "$(echo "$out" | jq -c '[.[] | if has("result") then "ok" else .error.code end]')" = '[-32001,"ok","ok"]' ]
}

@test "access: a notification without the token is not run (a write does not happen)" {
  start_rpc --token-file "$T/token" --writable
  [ -z "$(rpc '{"method":"write","params":{"offset":0,"data":"WFhYWA=="}}')" ]
  [ -z "$(rpc '{"method":"write","params":{"offset":0,"data":"WFhYWA=="},"token":"bad"}')" ]
  [ -z "$(rpc '{"method":"write","params":{"offset":8,"data":"WVlZWQ=="},"token":"'"$TOKEN"'"}')" ]
  stop_rpc
  qemu_check_clean "$IMG"
  qemu-img convert -O raw "$IMG" "$T/g.raw"
  [ "$(head -c 12 "$T/g.raw")" = AAAAAAAAYYYY ]
}

@test "access: token files that cannot serve are one-line errors at start" {
  run timeout 20 "$RB_RPC" -l "unix:$RSOCK" --token-file "$T/nosuch" "$IMG"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == *"token file $T/nosuch: No such file or directory"* ]]
  : >"$T/empty"
  run timeout 20 "$RB_RPC" -l "unix:$RSOCK" --token-file "$T/empty" "$IMG"
  [ "$status" -eq 2 ]
  [[ "$output" == *"token file $T/empty is empty"* ]]
  printf 'two\nlines\n' >"$T/two"
  run timeout 20 "$RB_RPC" -l "unix:$RSOCK" --token-file "$T/two" "$IMG"
  [ "$status" -eq 2 ]
  [[ "$output" == *"control character"* ]]
  run timeout 20 "$RB_RPC" -l "unix:$RSOCK" --token-file "$T" "$IMG"
  [ "$status" -eq 2 ]
  [[ "$output" == *"not a regular file"* ]]
  [ ! -e "$RSOCK" ]
}
