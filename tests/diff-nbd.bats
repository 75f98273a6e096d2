#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-diff on NBD URIs (issue 9): nbdkit file/memory/sparse-random, qemu-nbd and the rblock plugin
# as servers; results identical to the same files; block status honoured; a dying server is exit 2.

load helpers
load diff-helpers

bats_require_minimum_version 1.5.0

setup () {
  T="$BATS_TEST_TMPDIR"
  truncate -s 6M "$T/a"
  dd if=/dev/urandom of="$T/a" bs=1M count=2 seek=1 conv=notrunc status=none
  dd if=/dev/urandom of="$T/a" bs=4096 count=5 seek=1200 conv=notrunc status=none
  cp --sparse=always "$T/a" "$T/b"
  poke "$T/b" 0
  scribble "$T/b" $((1048576 - 100)) 300
  poke "$T/b" $((4800 * 1024 + 7))
  dd if=/dev/urandom of="$T/b" bs=512 count=3 seek=9000 conv=notrunc status=none
}

teardown () {
  stop_servers
  stop_rblock
}

@test "rb-diff: nbdkit file exports give the same JSON as the files, either side or both" {
  local want
  want=$("$RB_DIFF" --json "$T/a" "$T/b") || true
  [ -n "$want" ]
  serve A file "$T/a"; local ua=$NBD_URI
  serve B file "$T/b"; local ub=$NBD_URI
  for chunk in 65536 4194304; do
    run "$RB_DIFF" --json --chunk-size $chunk "$ua" "$ub"
    [ "$status" -eq 1 ] && [ "$output" = "$want" ]
    run "$RB_DIFF" --json --chunk-size $chunk "$T/a" "$ub"
    [ "$status" -eq 1 ] && [ "$output" = "$want" ]
    run "$RB_DIFF" --json --chunk-size $chunk "$ua" "$T/b"
    [ "$status" -eq 1 ] && [ "$output" = "$want" ]
  done
  [ "$(echo "$want" | json_ranges)" = "$(oracle_ranges "$T/a" "$T/b")" ]
  run "$RB_DIFF" --count "$ua" "$ua"
  [ "$status" -eq 0 ] && [ "$output" = 0 ]
}

@test "rb-diff: qemu-nbd serving a qcow2 and the rblock plugin compare like the raw files" {
  qemu-img convert -f raw -O qcow2 "$T/b" "$T/b.qcow2"
  serve_qemu Q "$T/b.qcow2" qcow2
  run "$RB_DIFF" --json "$T/a" "$NBD_URI"
  [ "$status" -eq 1 ]
  [ "$(echo "$output" | json_ranges)" = "$(oracle_ranges "$T/a" "$T/b")" ]
  start_rblock "$T/b.qcow2" -r
  run "$RB_DIFF" --json "$URI" "$T/a"
  [ "$status" -eq 1 ]
  [ "$(echo "$output" | json_ranges)" = "$(oracle_ranges "$T/b" "$T/a")" ]
}

@test "rb-diff: nbdkit memory of another size: the tail counts as changed, as with files" {
  serve M memory 7M
  truncate -s 7M "$T/zero7"
  run "$RB_DIFF" --json "$T/a" "$NBD_URI"
  [ "$status" -eq 1 ]
  [ "$(echo "$output" | json_ranges)" = "$(oracle_ranges "$T/a" "$T/zero7")" ]
  [ "$(echo "$output" | jq .size_b)" = 7340032 ]
}

@test "rb-diff: block status is honoured: against sparse-random only the data is read" {
  local log="$T/log" data read
  serve S --filter=log sparse-random 1G seed=4242 logfile="$log"
  data=$(nbdinfo --map "$NBD_URI" | awk '$3 % 2 == 0 { d += $2 } END { print d }')
  [ "$data" -gt 0 ] && [ "$data" -lt $((64 * 1048576)) ]
  run "$RB_DIFF" --count "$NBD_URI" "$NBD_URI"
  [ "$status" -eq 0 ] && [ "$output" = 0 ]
  # Bytes read by every Read request the server logged (both connections).
  read=0
  while read -r c; do read=$((read + c)); done < <(grep -o ' Read id=[0-9]* offset=0x[0-9a-f]* count=0x[0-9a-f]*' "$log" |
    sed 's/.*count=//' | while read -r h; do echo $((h)); done)
  echo "data $data, read $read"
  [ "$read" -ge $((2 * data)) ] && [ "$read" -le $((2 * data + 2 * 1048576)) ]
}

@test "rb-diff: an unreachable server or a missing export is one line naming the URI, exit 2" {
  run --separate-stderr "$RB_DIFF" "$T/a" "nbd+unix:///?socket=$T/nothing.sock"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == "rb-diff: nbd+unix:///?socket=$T/nothing.sock: "* ]]
  serve E --filter=exportname file "$T/a" exportname=disk exportname-strict=true
  run "$RB_DIFF" --count "$T/a" "nbd+unix:///disk?socket=$T/E.sock"
  [ "$status" -eq 0 ] && [ "$output" = 0 ]
  run --separate-stderr "$RB_DIFF" "$T/a" "nbd+unix:///nosuchexport?socket=$T/E.sock"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == "rb-diff: nbd+unix:///nosuchexport?socket=$T/E.sock: "* ]]
}

@test "rb-diff: a server killed mid-run gives exit 2, one line naming the URI, no ranges printed" {
  truncate -s 64M "$T/big"
  dd if=/dev/urandom of="$T/big" bs=1M count=64 conv=notrunc status=none
  serve D --filter=log --filter=delay file "$T/big" rdelay=50ms logfile="$T/D.log"
  local pid
  pid=$(cat "$T/D.pid")
  "$RB_DIFF" --chunk-size 65536 "$T/big" "$NBD_URI" > "$T/out" 2> "$T/err" &
  local diff_pid=$! i
  # Let it get going, then kill the server (by its pid).
  wait_until "$RB_WAIT" "20 reads in the server's log" eval '[ "$(grep -c " Read " "$T/D.log")" -ge 20 ]'
  kill -9 "$pid"
  local rc=0
  wait_until "$RB_WAIT" "rb-diff to exit" process_gone "$diff_pid" ||
    { kill -9 $diff_pid; echo "rb-diff hung; its stderr:"; cat "$T/err"; return 1; }
  wait $diff_pid || rc=$?
  cat "$T/err"
  [ "$rc" -eq 2 ]
  [ "$(wc -l < "$T/err")" -eq 1 ]
  grep -q "^rb-diff: nbd+unix:///?socket=$T/D.sock: " "$T/err"
  [ ! -s "$T/out" ]
}

@test "rb-diff: a read error from the server (EIO) is exit 2 with one line naming the URI" {
  serve X --filter=error file "$T/b" error-pread=EIO error-pread-rate=1
  run --separate-stderr "$RB_DIFF" "$T/a" "$NBD_URI"
  [ "$status" -eq 2 ] && [ -z "$output" ] && [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == "rb-diff: $NBD_URI: "*"Input/output error"* ]]
}
