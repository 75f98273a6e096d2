#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# dir=DIRECTORY: every image of a folder is an export named by its file name, opened by its
# first client and closed (flushed, unlocked) by its last.

load helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  D="$T/images"
  mkdir "$D"
}

teardown () {
  stop_rblock
}

# uri NAME: the export NAME of the server started by start_nbdkit.
uri () {
  echo "nbd+unix:///$1?socket=$SOCK"
}

# wait_unlocked IMAGE: bounded wait until qemu-img info (with locking) opens IMAGE: the
# server closes an export just after its last client has gone.
wait_unlocked () {
  local img=$1
  wait_until "$RB_WAIT" "qemu-img info to open $img" eval 'qemu-img info "$img" > /dev/null 2>&1' ||
    qemu-img info "$img"
}

@test "dir=: every image in the folder is an export by file name (nbdinfo --list); raw ones read-only; others not listed" {
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$D/a.qcow2" 8M
  qemu-io -c 'write -P 1 0 1M' "$D/a.qcow2" > /dev/null
  qemu-img create -q -f qcow2 "$D/b.qcow2" 16M
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 "$D/top.qcow2"
  head -c 3M /dev/urandom > "$D/c.raw"
  mkdir "$D/subdir"
  mkfifo "$D/fifo"
  ln -s c.raw "$D/link.raw"
  start_nbdkit "$RBLOCK_SO" dir="$D"
  nbdinfo --list --json "$URI" > "$T/list.json"
  [ "$(jq -r '[.exports[]."export-name"] | sort | join(" ")' "$T/list.json")" = \
    "a.qcow2 b.qcow2 c.raw link.raw top.qcow2" ]
  [ "$(jq -r '.exports[] | select(."export-name" == "c.raw") | .is_read_only' "$T/list.json")" = true ]
  [ "$(jq -r '.exports[] | select(."export-name" == "a.qcow2") | .is_read_only' "$T/list.json")" = false ]
  [ "$(jq -r '.exports[] | select(."export-name" == "top.qcow2") | ."export-size"' "$T/list.json")" = 16777216 ]
  for name in a.qcow2 top.qcow2 c.raw link.raw; do
    nbdcopy "$(uri "$name")" "$T/got.raw"
    qemu-img convert -U -O raw "$D/$name" "$T/want.raw"
    cmp "$T/got.raw" "$T/want.raw"
  done
  nbdsh -u "$(uri c.raw)" -c 'assert h.is_read_only()' -c 'assert h.can_multi_conn()'
  [ "$(nbdinfo --json "$(uri top.qcow2)" | jq -r '.exports[0].description')" = \
    "qcow2 v3 (compat 1.1), virtual size 16777216 bytes, cluster size 65536; backing: $D/b.qcow2 (qcow2)" ]
}

@test "three images served at once, written concurrently by clients of different exports (one with multi-conn): each checks clean and equals its mirror" {
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$D/a.qcow2" 16M
  qemu-img create -q -f qcow2 "$D/b.qcow2" 24M
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=131072 "$D/c.qcow2" 16M
  head -c 24M /dev/urandom > "$T/b.mirror"
  start_nbdkit "$RBLOCK_SO" dir="$D"
  local args_a=() args_c=() o
  gen_ops 11 300 $((16 << 20)) 4096 > "$T/ops.a"
  gen_ops 12 300 $((16 << 20)) 131072 > "$T/ops.c"
  while read -r o; do args_a+=(-c "$o"); done < "$T/ops.a"
  while read -r o; do args_c+=(-c "$o"); done < "$T/ops.c"
  qemu-io -f raw "${args_a[@]}" "$(uri a.qcow2)" > "$T/a.out" 2>&1 & pa=$!
  qemu-io -f raw "${args_c[@]}" "$(uri c.qcow2)" > "$T/c.out" 2>&1 & pc=$!
  nbdcopy --connections=4 "$T/b.mirror" "$(uri b.qcow2)" & pb=$!   # multi-conn on one export
  wait $pa; wait $pc; wait $pb
  ! grep -i -E 'error|failed' "$T/a.out" "$T/c.out"
  for x in a c; do
    qemu-img create -q -f raw "$T/$x.mirror" 16M
    args=(); while read -r o; do args+=(-c "$o"); done < "$T/ops.$x"
    qemu-io -f raw "${args[@]}" "$T/$x.mirror" > /dev/null
  done
  for x in a b c; do
    nbdcopy "$(uri $x.qcow2)" "$T/$x.served"
    cmp "$T/$x.served" "$T/$x.mirror"
  done
  stop_rblock
  for x in a b c; do
    qemu_check_clean "$D/$x.qcow2"
    qemu-img compare "$D/$x.qcow2" "$T/$x.mirror"
  done
}

@test "an image is opened and locked by its first client and closed by its last: qemu-img info (with locking) opens it then, bitmaps stored" {
  qemu-img create -q -f qcow2 "$D/a.qcow2" 16M
  qemu-img bitmap --add "$D/a.qcow2" b0
  qemu-img create -q -f qcow2 "$D/other.qcow2" 16M
  start_nbdkit "$RBLOCK_SO" dir="$D"
  # No client yet: nothing is open.
  qemu-img info "$D/a.qcow2" > /dev/null
  # While two clients are connected QEMU's write lock is held; after one leaves, still.
  URI2="$(uri a.qcow2)" IMG="$D/a.qcow2" nbdsh -u "$(uri a.qcow2)" -c '
import os, subprocess
h2 = nbd.NBD()
h2.connect_uri(os.environ["URI2"])
h.pwrite(b"\x07" * 65536, 1 << 20)
def info():
    return subprocess.run(["qemu-img", "info", os.environ["IMG"]], capture_output=True, text=True)
r = info()
assert r.returncode != 0 and "\"write\" lock" in r.stderr, r.stderr
h2.shutdown()
r = info()
assert r.returncode != 0 and "\"write\" lock" in r.stderr, r.stderr
'
  # The last client has gone: the image is closed (the server still runs).
  wait_unlocked "$D/a.qcow2"
  kill -0 "$(cat "$PIDFILE")"
  qemu_check_clean "$D/a.qcow2"
  qemu-img info --output=json "$D/a.qcow2" |
    jq -e '."format-specific".data.bitmaps[0] | .name == "b0" and (.flags | index("in-use") | not)' > /dev/null
  qemu-io -c 'read -P 7 1M 64k' "$D/a.qcow2" | grep -qv 'verification failed'
  # Served again after QEMU has had it.
  nbdsh -u "$(uri a.qcow2)" -c 'assert h.pread(4, 1 << 20) == b"\x07" * 4'
  stop_rblock
}

@test "an image added to the folder while the server runs is listed and served" {
  qemu-img create -q -f qcow2 "$D/first.qcow2" 1M
  start_nbdkit "$RBLOCK_SO" dir="$D"
  [ "$(nbdinfo --list --json "$URI" | jq '.exports | length')" = 1 ]
  qemu-img create -q -f qcow2 "$D/late.qcow2" 4M
  qemu-io -c 'write -P 9 0 64k' "$D/late.qcow2" > /dev/null
  nbdinfo --list --json "$URI" | jq -e '[.exports[]."export-name"] | index("late.qcow2")' > /dev/null
  nbdsh -u "$(uri late.qcow2)" -c 'assert h.pread(65536, 0) == b"\x09" * 65536' -c 'h.pwrite(b"late", 1 << 20)'
  wait_unlocked "$D/late.qcow2"
  qemu_check_clean "$D/late.qcow2"
}

@test "unknown export names are refused with a clear message; the default export and paths too" {
  qemu-img create -q -f qcow2 "$D/a.qcow2" 1M
  mkdir "$D/sub"
  start_nbdkit -v --log=stderr "$RBLOCK_SO" dir="$D"   # errors on stderr, not syslog
  for name in nosuch.qcow2 sub ""; do
    run nbdsh -u "$(uri "$name")" -c 'pass'
    [ "$status" -ne 0 ]
  done
  grep -q "no image \"nosuch.qcow2\" in the folder (nbdinfo --list shows them)" "$T/nbdkit.err"
  grep -q "no image \"sub\" in the folder" "$T/nbdkit.err"
  grep -q 'the default export "" is not served: name an image' "$T/nbdkit.err"
  # A served image still works after the refusals.
  nbdsh -u "$(uri a.qcow2)" -c 'h.pread(512, 0)'
}

@test "dir= with -r: every export read-only, no write lock, nothing written" {
  qemu-img create -q -f qcow2 "$D/a.qcow2" 4M
  qemu-img create -q -f qcow2 "$D/b.qcow2" 4M
  md5sum "$D"/*.qcow2 > "$T/sums"
  start_nbdkit -r "$RBLOCK_SO" dir="$D"
  IMG="$D/a.qcow2" nbdsh -u "$(uri a.qcow2)" -c '
import os, subprocess
assert h.is_read_only()
r = subprocess.run(["qemu-img", "info", os.environ["IMG"]], capture_output=True, text=True)
assert r.returncode == 0, r.stderr'
  nbdsh -u "$(uri b.qcow2)" -c 'assert h.is_read_only()'
  stop_rblock
  md5sum -c --quiet "$T/sums"
}

@test "dir= refuses file= with it, snapshot=, and a path that is not a folder, in one line" {
  qemu-img create -q -f qcow2 "$D/a.qcow2" 1M
  for p in "file=$D/a.qcow2" snapshot=s1; do
    run nbdkit -U "$T/x.sock" "$RBLOCK_SO" dir="$D" "$p" --run true
    [ "$status" -ne 0 ]
    [ "$(grep -c error <<< "$output")" -eq 1 ] || { echo "$output"; false; }
  done
  run nbdkit -U "$T/x.sock" "$RBLOCK_SO" dir="$D/a.qcow2" --run true
  [ "$status" -ne 0 ]
  [[ "$output" == *"not a directory"* ]]
}

# rpc JSON: one request to the embedded JSON-RPC socket, the reply on stdout.
rpc () {
  printf '%s' "$1" | timeout 10 nc -N -U "$T/rpc.sock"
}

@test "dir= with rpc=: each request names its export; writes only where an NBD client may write; unknown names refused" {
  qemu-img create -q -f qcow2 "$D/a.qcow2" 16M
  qemu-io -c 'write -P 1 0 64k' "$D/a.qcow2" > /dev/null
  qemu-img create -q -f qcow2 "$D/b.qcow2" 32M
  qemu-io -c 'write -P 2 0 64k' "$D/b.qcow2" > /dev/null
  cp "$D/b.qcow2" "$T/b.copy"
  start_nbdkit "$RBLOCK_SO" dir="$D" rpc="unix:$T/rpc.sock" rpc-writable=true
  wait_until "$RB_WAIT" "the RPC socket" test -S "$T/rpc.sock"
  read='{"method":"read","params":{"offset":0,"length":4},"id":9,"export":"@"}'
  [ "$(rpc "${read/@/a.qcow2}" | jq -r .result.data | base64 -d | od -An -tx1 | tr -d ' ')" = 01010101 ]
  [ "$(rpc "${read/@/b.qcow2}" | jq -r .result.data | base64 -d | od -An -tx1 | tr -d ' ')" = 02020202 ]
  [ "$(rpc '{"method":"info","id":1,"export":"b.qcow2"}' | jq .result.virtual_size)" = 33554432 ]
  [ "$(rpc '{"method":"info","id":1,"export":"a.qcow2"}' | jq .result.virtual_size)" = 16777216 ]
  # The image a request opened is closed with it: QEMU may open it at once.
  qemu-img info "$D/b.qcow2" > /dev/null
  [[ "$(rpc '{"method":"read","params":{"offset":0,"length":4},"id":2}' | jq -r .error.message)" == *'default export "" is not served'* ]]
  [[ "$(rpc '{"method":"read","params":{"offset":0,"length":4},"id":3,"export":"nosuch"}' | jq -r .error.message)" == *'no image "nosuch"'* ]]
  write='{"method":"write","params":{"offset":65536,"data":"UlBD"},"id":4,"export":"@"}'
  # No NBD client: read-only, the write is refused.
  [ "$(rpc "${write/@/a.qcow2}" | jq .error.data.errno)" = 30 ]
  # While an NBD client that may write holds a.qcow2, the RPC writes it; b stays read-only.
  W="${write/@/a.qcow2}" WB="${write/@/b.qcow2}" S="$T/rpc.sock" nbdsh -u "$(uri a.qcow2)" -c '
import json, os, subprocess
assert not h.is_read_only()
def rpc(req):
    return json.loads(subprocess.run(["nc", "-N", "-U", os.environ["S"]], input=req,
                                     capture_output=True, text=True, timeout=10).stdout)
r = rpc(os.environ["W"])
assert "result" in r, r
assert h.pread(3, 65536) == b"RPC"
r = rpc(os.environ["WB"])
assert r["error"]["data"]["errno"] == 30, r
'
  wait_unlocked "$D/a.qcow2"
  qemu_check_clean "$D/a.qcow2"
  qemu-img convert -O raw "$D/a.qcow2" "$T/a.raw"
  [ "$(dd if="$T/a.raw" bs=1 skip=65536 count=3 status=none)" = RPC ]
  cmp "$D/b.qcow2" "$T/b.copy"
}
