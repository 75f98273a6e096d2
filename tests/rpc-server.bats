#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# JSON-RPC 2.0 (rb-rpc and the plugin's embedded server): every method against values computed
# independently (qemu-img, the image file itself), the spec's error codes for bad input, limits.

load helpers
load rpc-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/r.qcow2"
  qemu-img create -q -f qcow2 "$IMG" 16M
  qemu-io -c 'write -P 0x41 131072 65536' -c 'write -z 1M 64k' -c 'write -P 0x42 5M 4096' "$IMG" >/dev/null
  RSOCK="$T/rpc.sock"
}

teardown () {
  [ -n "${RPID:-}" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null
  [ -n "${RPID2:-}" ] && kill "$RPID2" 2>/dev/null && wait "$RPID2" 2>/dev/null
  stop_rblock
  true
}

@test "rpc: get_version, with and without the jsonrpc member (the seed's request)" {
  start_rpc
  [ "$(rpc '{"jsonrpc":"2.0","method":"get_version","id":1}' | jq -r .result.name)" = rblock ]
  out=$(rpc '{"method":"get_version","id":42}')
  [ "$(echo "$out" | jq .id)" = 42 ]
  [ "$(echo "$out" | jq -r .result.version)" = "$("$RB_RPC" --version | cut -d' ' -f2)" ]
}

@test "rpc: read_guest_cluster 2 (the seed's command) equals the guest bytes from qemu-img convert" {
  start_rpc
  qemu-img convert -O raw "$IMG" "$T/g.raw"
  got=$(rpc '{"jsonrpc":"2.0","method":"read_guest_cluster","params":{"cluster":2},"id":1}' | jq -r .result.data | base64 -d | md5sum)
  [ "$got" = "$(dd if="$T/g.raw" bs=65536 skip=2 count=1 status=none | md5sum)" ]
  got=$(rpc '{"jsonrpc":"2.0","method":"read","params":{"offset":5242000,"length":3000,"encoding":"hex"},"id":2}' | jq -r .result.data)
  [ "$got" = "$(dd if="$T/g.raw" bs=1 skip=5242000 count=3000 status=none | xxd -p | tr -d '\n')" ]
}

@test "rpc: lookup follows the L1 and L2 tables exactly as the file holds them" {
  start_rpc
  out=$(rpc '{"jsonrpc":"2.0","method":"lookup","params":{"offset":131172},"id":1}' | jq -c .result)
  l1=$(od -An -tu8 --endian=big -j 40 -N 8 "$IMG" | tr -d ' ')
  l2=$(( $(od -An -tu8 --endian=big -j "$l1" -N 8 "$IMG" | tr -d ' ') & 0x00fffffffffffe00 ))
  host=$(( $(od -An -tu8 --endian=big -j $((l2 + 2 * 8)) -N 8 "$IMG" | tr -d ' ') & 0x00fffffffffffe00 ))
  [ "$(echo "$out" | jq .guest_cluster)" = 2 ]
  [ "$(echo "$out" | jq .l1_index)" = 0 ]
  [ "$(echo "$out" | jq .l2_index)" = 2 ]
  [ "$(echo "$out" | jq .l2_table_offset)" = "$l2" ]
  [ "$(echo "$out" | jq .host_cluster_offset)" = "$host" ]
  [ "$(echo "$out" | jq .host_offset)" = $((host + 100)) ]
  [ "$(echo "$out" | jq -r .type)" = data ]
  [ "$(echo "$out" | jq .refcount)" = 1 ]
  [ "$(echo "$out" | jq .refcount_block_index)" = $((host / 65536)) ]
  [ "$(qemu-img map --output=json "$IMG" | jq '.[] | select(.start == 131072) | .offset')" = "$host" ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"lookup","params":{"offset":1048576},"id":1}' | jq -r .result.type)" = zero ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"lookup","params":{"offset":8388608},"id":1}' | jq -r .result.type)" = unallocated ]
}

@test "rpc: map agrees with qemu-img map, info with qemu-img info, check with qemu-img check" {
  start_rpc
  diff <(rpc '{"jsonrpc":"2.0","method":"map","id":1}' |
         jq -r '.result[] | "\(.start) \(.length) \(if .data then "data" else "zero" end)"' | merge_runs) \
       <(qemu_map_classes "$IMG")
  info=$(rpc '{"jsonrpc":"2.0","method":"info","id":1}' | jq -c .result)
  q=$(qemu-img info -U --output=json "$IMG")
  [ "$(echo "$info" | jq .virtual_size)" = "$(echo "$q" | jq '."virtual-size"')" ]
  [ "$(echo "$info" | jq .cluster_size)" = "$(echo "$q" | jq '."cluster-size"')" ]
  [ "$(echo "$info" | jq .refcount_bits)" = "$(echo "$q" | jq '."format-specific".data."refcount-bits"')" ]
  [ "$(echo "$info" | jq -r .compat)" = "$(echo "$q" | jq -r '."format-specific".data.compat')" ]
  echo "$info" | jq -e '.header_extensions[] | select(.name == "feature name table")' >/dev/null
  out=$(rpc '{"jsonrpc":"2.0","method":"check","id":1}' | jq -c .result)
  [ "$(echo "$out" | jq .corruptions)" = 0 ]
  [ "$(echo "$out" | jq .leaks)" = 0 ]
  [ "$(echo "$out" | jq .allocated_clusters)" = "$(qemu-img check -U --output=json "$IMG" | jq '."allocated-clusters"')" ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"list_methods","id":1}' | jq '[.result[].name] | length')" -ge 11 ]
}

@test "rpc: info names the backing chain and the snapshots" {
  qemu-img snapshot -c snap1 "$IMG"
  head -c 1M /dev/zero > "$T/b.raw"
  qemu-img create -q -f qcow2 -b r.qcow2 -F qcow2 "$T/top.qcow2"
  IMG="$T/top.qcow2" start_rpc
  info=$(rpc '{"jsonrpc":"2.0","method":"info","id":1}' | jq -c .result)
  kill "$RPID"; wait "$RPID" || true; RPID=
  [ "$(echo "$info" | jq -r .backing_file)" = r.qcow2 ]
  [ "$(echo "$info" | jq -r '.backing_chain[0].format')" = qcow2 ]
  IMG="$T/r.qcow2" start_rpc
  [ "$(rpc '{"jsonrpc":"2.0","method":"info","id":1}' | jq -r '.result.snapshots[0].name')" = snap1 ]
}

@test "rpc: write and flush only with --writable; the write is in the image afterwards" {
  start_rpc
  out=$(rpc '{"jsonrpc":"2.0","method":"write","params":{"offset":0,"data":"SGVsbG8="},"id":1}')
  [ "$(echo "$out" | jq .error.code)" = -32000 ]
  [ "$(echo "$out" | jq .error.data.errno)" = 30 ]
  kill "$RPID"; wait "$RPID" || true; RPID=
  start_rpc --writable
  [ "$(rpc '{"jsonrpc":"2.0","method":"write","params":{"offset":196608,"data":"SGVsbG8sIHdvcmxkIQ=="},"id":1}' | jq .result.length)" = 13 ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"flush","id":2}' | jq .result)" = true ]
  kill "$RPID"; wait "$RPID" || true; RPID=
  qemu_check_clean "$IMG"
  qemu-img convert -O raw "$IMG" "$T/w.raw"
  [ "$(dd if="$T/w.raw" bs=1 skip=196608 count=13 status=none)" = "Hello, world!" ]
}

@test "rpc: batches, notifications, ids of every type echoed, streams of texts" {
  start_rpc
  out=$(rpc '[{"jsonrpc":"2.0","method":"get_version","id":"a"},{"jsonrpc":"2.0","method":"get_version"},{"jsonrpc":"2.0","method":"get_version","id":null},{"jsonrpc":"2.0","method":"get_version","id":7}]')
  [ "$(echo "$out" | jq -c '[.[].id]')" = '["a",null,7]' ]
  [ -z "$(rpc '{"jsonrpc":"2.0","method":"get_version"}')" ]
  [ -z "$(rpc '[{"jsonrpc":"2.0","method":"get_version"},{"jsonrpc":"2.0","method":"nosuch"}]')" ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"get_version","id":1}{"jsonrpc":"2.0","method":"get_version","id":2}' | jq -s -c '[.[].id]')" = '[1,2]' ]
  [ "$(rpc $'{"jsonrpc":"2.0",\n"method":"get_version",\n"id":3}\n' | jq .id)" = 3 ]
}

# json-c's lenient parser takes some ids that are no JSON numbers, and echoing their text made
# replies no JSON ({"id":0029e} came back as "id":0029: found by fuzz-rpc).
@test "rpc: ids that are no JSON numbers (NaN, Infinity, 1., 0029e) are invalid (-32600, id null); JSON numbers are echoed as sent" {
  start_rpc
  local id out
  for id in NaN Infinity -Infinity 1. 0029e; do
    out=$(rpc "{\"jsonrpc\":\"2.0\",\"method\":\"get_version\",\"id\":$id}")
    echo "id $id: $out"
    python3 -c 'import json, sys
def bad(c): sys.exit("not JSON: " + c)
o = json.loads(sys.argv[1], parse_constant=bad)
assert o["error"]["code"] == -32600 and o["id"] is None, o' "$out"
  done
  for id in 1.50 1e5 -7 0 2.5E-3; do
    out=$(rpc "{\"jsonrpc\":\"2.0\",\"method\":\"get_version\",\"id\":$id}")
    echo "id $id: $out"
    [[ "$out" == *"\"id\":$id}"* ]]
    [ "$(echo "$out" | jq -r .result.version)" != null ]
  done
}

# bad TEXT CODE: the reply's error code is CODE.
bad () {
  local out
  out=$(rpc "$1")
  [ "$(echo "$out" | head -1 | jq '(if type == "array" then .[0] else . end).error.code')" = "$2" ] ||
    { echo "input: $1"; echo "reply: $out"; return 1; }
}

@test "rpc: a map of more than 100000 runs is refused (-32602, bounded memory); a shorter range answers" {
  # 512-byte clusters, every other one data: 200004 runs on the whole disk.
  python3 -c 'import sys; f = open(sys.argv[1], "wb"); [f.write(b"\x01" * 512 + b"\x00" * 512) for _ in range(100002)]' "$T/alt.raw"
  qemu-img convert -S 512 -O qcow2 -o cluster_size=512 "$T/alt.raw" "$T/alt.qcow2"
  IMG="$T/alt.qcow2"
  start_rpc
  out=$(rpc '{"jsonrpc":"2.0","method":"map","id":1}')
  [ "$(echo "$out" | jq .error.code)" = -32602 ]
  echo "$out" | jq -r .error.message | grep -q 'too many extents'
  [ "$(rpc '{"jsonrpc":"2.0","method":"map","params":{"offset":1024,"length":102400},"id":2}' | jq '.result | length')" = 200 ]
  [ "$(rpc '{"jsonrpc":"2.0","method":"map","params":{"offset":1024,"length":102400},"id":3}' | jq '[.result[] | select(.data)] | length')" = 100 ]
}

@test "rpc: 31 bad inputs get the spec's exact error codes, and the server keeps serving" {
  start_rpc
  bad '{bad json' -32700
  bad '"just a string"' -32600
  bad '42' -32600
  bad '[]' -32600
  bad '[1]' -32600
  bad '{"jsonrpc":"1.0","method":"get_version","id":1}' -32600
  bad '{"jsonrpc":2.0,"method":"get_version","id":1}' -32600
  bad '{"jsonrpc":"2.0","id":1}' -32600
  bad '{"jsonrpc":"2.0","method":5,"id":1}' -32600
  bad '{"jsonrpc":"2.0","method":"get_version","id":{"a":1}}' -32600
  bad '{"jsonrpc":"2.0","method":"get_version","params":"x","id":1}' -32600
  bad '{"jsonrpc":"2.0","method":"nosuch","id":1}' -32601
  bad '{"jsonrpc":"2.0","method":"read","params":[0,10],"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"length":10},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"offset":"0","length":10},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"offset":0.5,"length":10},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"offset":-1,"length":10},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"offset":99999999999999999999,"length":10},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"offset":16777210,"length":10},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"offset":0,"length":4194305},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"offset":0,"length":1,"encoding":"rot13"},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read","params":{"offset":0,"length":1,"bogus":1},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"read_guest_cluster","params":{"cluster":256},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"lookup","params":{"offset":16777216},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"map","params":{"offset":0,"length":16777217},"id":1}' -32602
  bad '{"jsonrpc":"2.0","method":"flush","id":1}' -32000
  # Deep nesting; more objects or members than json-c should hold for one request.
  bad "$(printf '%.0s[' $(seq 40))" -32700
  bad "[$(printf '{},%.0s' $(seq 5000)){}]" -32600
  bad "{\"method\":\"get_version\",\"id\":1,\"pad\":[$(printf '1,%.0s' $(seq 20000))1]}" -32600
  # Duplicate keys: the last one wins (documented): this is a valid read of 1 byte.
  [ "$(rpc '{"jsonrpc":"2.0","method":"read","params":{"offset":0,"length":99999999,"length":1},"id":1}' | jq .result.length)" = 1 ]
  # Half a request, then close; then the server still answers.
  printf '{"jsonrpc":"2.0","method":' | timeout 5 nc -N -U "$RSOCK" || true
  [ "$(rpc '{"jsonrpc":"2.0","method":"get_version","id":9}' | jq .id)" = 9 ]
}

@test "rpc: a request over 1 MiB is refused (-32600) and the server keeps serving" {
  start_rpc
  big=$(head -c 1100000 /dev/zero | tr '\0' 'a')
  out=$(printf '{"jsonrpc":"2.0","method":"get_version","id":1,"pad":"%s"}' "$big" | timeout 10 nc -N -U "$RSOCK")
  [ "$(echo "$out" | jq .error.code)" = -32600 ]
  [[ "$(echo "$out" | jq -r .error.message)" == *"1 MiB"* ]]
  [ "$(rpc '{"jsonrpc":"2.0","method":"get_version","id":2}' | jq .id)" = 2 ]
}

@test "rpc: connections silent for --idle-timeout are closed; then a new connection is served" {
  start_rpc --max-connections 3 --idle-timeout 2
  pids=()
  t0=$EPOCHREALTIME
  for i in 1 2 3; do
    "${RPC_CLIENT[@]}" silent "unix:$RSOCK" >"$T/silent.$i" & pids+=($!)
  done
  for i in 1 2 3; do wait_for_line "$T/silent.$i" closed; done
  # Closed by the server, and not before --idle-timeout had passed.
  awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b - a >= 2) }'
  [ "$(rpc '{"jsonrpc":"2.0","method":"get_version","id":2}' | jq .id)" = 2 ]
  kill "${pids[@]}" 2>/dev/null || true
}

@test "rpc: replies are valid UTF-8 JSON: invalid UTF-8 is a parse error, a long non-ASCII method name is not cut inside a character" {
  start_rpc
  long="a$(printf '\xc3\xa9%.0s' $(seq 150))"
  printf '{"jsonrpc":"2.0","method":"get\xff\xfeversion","id":1}\n{"method":"%s","id":2}\n{"method":"get_version","id":"\xc3\xa9t\xc3\xa9"}\n' "$long" |
    "${RPC_CLIENT[@]}" send "unix:$RSOCK" >"$T/out.bin"
  "${RPC_CLIENT[@]}" check-utf8 <"$T/out.bin" >"$T/out.json"
  cat "$T/out.json"
  [ "$(jq -s length "$T/out.json")" = 3 ]
  [ "$(jq -s '.[0].error.code' "$T/out.json")" = -32700 ]
  [[ "$(jq -s -r '.[0].error.message' "$T/out.json")" == *"utf-8"* ]]
  [ "$(jq -s '.[1].error.code' "$T/out.json")" = -32601 ]
  [[ "$(jq -s -r '.[1].error.message' "$T/out.json")" == "Method not found: a"$'\xc3\xa9'* ]]
  [ "$(jq -s -r '.[2].id' "$T/out.json")" = $'\xc3\xa9t\xc3\xa9' ]
}

@test "rpc: names from the image that are not UTF-8 (snapshot, backing file) come back as valid UTF-8 JSON" {
  qemu-img create -q -f qcow2 "$T/b"$'\xff'".qcow2" 16M
  qemu-img create -q -f qcow2 -b "b"$'\xff'".qcow2" -F qcow2 "$IMG"
  qemu-img snapshot -c "snap"$'\xfe' "$IMG"
  start_rpc
  printf '{"method":"info","id":1}' | "${RPC_CLIENT[@]}" send "unix:$RSOCK" >"$T/out.bin"
  "${RPC_CLIENT[@]}" check-utf8 <"$T/out.bin" >"$T/out.json"
  [ "$(jq -r .result.backing_file "$T/out.json")" = "b"$'\xef\xbf\xbd'".qcow2" ]
  [ "$(jq -r '.result.snapshots[0].name' "$T/out.json")" = "snap"$'\xef\xbf\xbd' ]
}

@test "rpc: the Unix listener replaces only a stale socket: a file or a live server at the path is refused" {
  echo "precious" >"$T/file.sock"
  run timeout 20 "$RB_RPC" -l "unix:$T/file.sock" "$IMG"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "rb-rpc: "*"file.sock exists and is not a socket"* ]]
  [ "$(cat "$T/file.sock")" = precious ]
  start_rpc
  run timeout 20 "$RB_RPC" -l "unix:$RSOCK" "$IMG"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == *"a server is already listening on $RSOCK"* ]]
  [ "$(rpc '{"method":"get_version","id":1}' | jq .id)" = 1 ]
  # A socket whose server died (kill -9 leaves it) is stale: replaced.
  kill -9 "$RPID"; wait "$RPID" || true; RPID=
  [ -S "$RSOCK" ]
  start_rpc
  [ "$(rpc '{"method":"get_version","id":3}' | jq .id)" = 3 ]
  # A clean stop removes the socket it made.
  stop_rpc
  [ ! -e "$RSOCK" ]
}

@test "rpc: bad command lines and addresses are one-line errors" {
  run "$RB_RPC" -l tcp:nohost "$IMG"
  [ "$status" -eq 2 ]
  [[ "$output" == "rb-rpc: "*"tcp:nohost"* ]]
  run "$RB_RPC" -l ftp:x "$IMG"
  [ "$status" -eq 2 ]
  run "$RB_RPC" "$T/nosuch.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"nosuch.qcow2"* ]]
  run "$RB_RPC" --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"read_guest_cluster"* ]]
}

@test "rpc: the seed's exact command over TCP on loopback (echo -n ... | nc localhost PORT | jq)" {
  for port in $(shuf -i 20000-60000 -n 20); do
    "$RB_RPC" -l "tcp:127.0.0.1:$port" "$IMG" 2>"$T/rpc.err" &
    RPID=$!
    # Listening, or gone (the port was taken): try the next port only then.
    wait_until "$RB_WAIT" "rb-rpc on port $port" eval 'nc -z 127.0.0.1 "$port" 2>/dev/null || process_gone "$RPID"'
    nc -z 127.0.0.1 "$port" 2>/dev/null && break
    kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null; RPID=
  done
  [ -n "$RPID" ]
  out=$(echo -n '{"jsonrpc":"2.0","method":"read_guest_cluster","params":{"cluster":2},"id":1}' | nc -N localhost "$port" | jq -r .result.data | base64 -d | md5sum)
  [ "$out" = "$(head -c 65536 /dev/zero | tr '\0' 'A' | md5sum)" ]   # guest cluster 2 holds 0x41
  [ "$(echo '{"method":"get_version","id":42}' | nc -N localhost "$port" | jq .id)" = 42 ]
}

@test "rpc: stats and check asked while 4 threads write and read: counters only grow and add up, checks beside the writes are clean" {
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/s.qcow2" 256M
  run "$top_builddir/tests/rpc-stats" "$T/s.qcow2" 4 3000
  echo "$output"
  [ "$status" -eq 0 ]
  echo "# $output" >&3
  [[ "$output" == *" reads=12000 writes=12000 "* ]]
  qemu_check_clean "$T/s.qcow2"
}
