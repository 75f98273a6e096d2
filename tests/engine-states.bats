#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Image states the engine must handle: dirty (lazy refcounts), corrupt bit, QEMU's locks.

load helpers

RB_TOOL="$top_builddir/tests/rb-tool"

setup () {
  T="$BATS_TEST_TMPDIR"
}

# A lazy-refcounts image left dirty by a QEMU crash (qemu-io abort).
make_dirty () {
  qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4096 "$T/d.qcow2" 16M
  qemu-io -c 'write -P 5 0 1M' -c 'flush' -c 'write -P 6 3M 2M' -c 'flush' -c abort "$T/d.qcow2" >/dev/null 2>&1 || true
  qemu-img info "$T/d.qcow2" | grep -q 'cleanly shut down: no'
  run qemu-img check "$T/d.qcow2"
  [ "$status" -ne 0 ]          # refcounts lag behind: that is what dirty means
}

@test "a dirty image opened writable is repaired: refcounts rebuilt, dirty bit cleared, data kept" {
  make_dirty
  "$RB_TOOL" write "$T/d.qcow2" $((5 << 20)) 4096 1
  ! qemu-img info "$T/d.qcow2" | grep -q 'cleanly shut down: no'
  run qemu-img check "$T/d.qcow2"
  [[ "$output" == *"No errors were found"* ]]
  qemu-io -c 'read -P 5 0 1M' -c 'read -P 6 3M 2M' -c 'read -P 1 5M 4096' "$T/d.qcow2" > "$T/out"
  ! grep -q 'verification failed' "$T/out"
}

@test "a dirty image opened read-only reads its data and is left as it is" {
  make_dirty
  sum=$(md5sum < "$T/d.qcow2")
  "$RB_TOOL" cat "$T/d.qcow2" > "$T/got.raw"
  qemu-img convert -U -O raw "$T/d.qcow2" "$T/want.raw"
  cmp "$T/got.raw" "$T/want.raw"
  [ "$(md5sum < "$T/d.qcow2")" = "$sum" ]
}

@test "an image with the corrupt bit is served read-only: writes fail with EROFS" {
  qemu-img create -q -f qcow2 "$T/c.qcow2" 4M
  qemu-io -c 'write -P 3 0 64k' "$T/c.qcow2" >/dev/null
  # Set incompatible bit 1 (corrupt) in byte 79 of the header.
  printf '\x02' | dd of="$T/c.qcow2" bs=1 seek=79 conv=notrunc status=none
  sum=$(md5sum < "$T/c.qcow2")
  run "$RB_TOOL" write "$T/c.qcow2" 0 512 9
  [ "$status" -eq 2 ]
  [[ "$output" == *"read-only"* ]]
  [ "$(md5sum < "$T/c.qcow2")" = "$sum" ]
  "$RB_TOOL" cat "$T/c.qcow2" | head -c 65536 | cmp - <(head -c 65536 /dev/zero | tr '\0' '\3')
}

@test "an image QEMU holds open for writing is refused with a clear message" {
  qemu-img create -q -f qcow2 "$T/l.qcow2" 4M
  qemu-io -c 'sleep 20000' "$T/l.qcow2" &
  pid=$!
  # Wait (without taking locks that could make qemu-io fail) until QEMU holds
  # its write lock (byte 101, in /proc/locks).
  wait_until "$RB_WAIT" "qemu-io's write lock (byte 101) in /proc/locks" holds_write_lock "$T/l.qcow2"
  kill -0 "$pid"
  run "$RB_TOOL" write "$T/l.qcow2" 0 512 1
  kill "$pid"; wait "$pid" || true
  [ "$status" -eq 2 ]
  [[ "$output" == *"in use by another process"* ]]
}

@test "while rblock writes an image, qemu-img refuses to open it (same lock bytes)" {
  qemu-img create -q -f qcow2 "$T/w.qcow2" 8M
  mkdir -p "$T/d"
  qemu-img convert -O raw "$T/w.qcow2" "$T/d/mirror"
  "$RB_TOOL" random "$T/w.qcow2" "$T/d" 1 100000000 &
  pid=$!
  # Probing with qemu-img info until it is refused would race: a probe holding its shared
  # lock at the moment rb-tool opens makes rb-tool give up.  /proc/locks takes no lock.
  wait_until "$RB_WAIT" "rb-tool's write lock (byte 101) in /proc/locks" holds_write_lock "$T/w.qcow2"
  kill -0 "$pid"
  run qemu-img info "$T/w.qcow2"
  kill -9 "$pid"; wait "$pid" || true
  [ "$status" -ne 0 ]
  [[ "$output" == *'Failed to get shared "write" lock'* ]]
}

@test "an unknown incompatible feature bit is refused, naming the bit" {
  qemu-img create -q -f qcow2 "$T/u.qcow2" 4M
  printf '\x20' | dd of="$T/u.qcow2" bs=1 seek=79 conv=notrunc status=none
  run "$RB_TOOL" cat "$T/u.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"unsupported incompatible feature"*"bit 5"* ]]
}

@test "a raw file is refused: rblock serves qcow2 images" {
  head -c 1M /dev/zero > "$T/r.img"
  run "$RB_TOOL" cat "$T/r.img"
  [ "$status" -eq 2 ]
  [[ "$output" == *"not a qcow2 image"* ]]
}

@test "images created by rb_create pass qemu-img check for every cluster size and refcount width" {
  for cs in 512 4096 65536 2097152; do
    for rb in 1 16 64; do
      rm -f "$T/n.qcow2"
      "$RB_TOOL" create "$T/n.qcow2" $((64 << 20)) $cs 3 $rb
      run qemu-img check "$T/n.qcow2"
      [[ "$output" == *"No errors were found"* ]] || { echo "$cs/$rb: $output"; false; }
      qemu-img info --output=json "$T/n.qcow2" > "$T/info.json"
      [ "$(jq '."cluster-size"' "$T/info.json")" = "$cs" ]
      [ "$(jq '."format-specific".data."refcount-bits"' "$T/info.json")" = "$rb" ]
    done
  done
  rm -f "$T/n.qcow2"
  "$RB_TOOL" create "$T/n.qcow2" $((64 << 20)) 65536 2 16
  qemu-img info "$T/n.qcow2" | grep -q 'compat: 0.10'
  qemu-img check "$T/n.qcow2"
}

@test "a write that would land on metadata is refused, the image marked corrupt, metadata intact" {
  qemu-img create -q -f qcow2 "$T/o.qcow2" 4M
  qemu-io -c 'write -P 1 0 64k' "$T/o.qcow2" >/dev/null
  l1=$(od -An -tu8 --endian=big -j 40 -N 8 "$T/o.qcow2" | tr -d ' ')
  rt=$(od -An -tu8 --endian=big -j 48 -N 8 "$T/o.qcow2" | tr -d ' ')
  l2=$(( $(od -An -tu8 --endian=big -j "$l1" -N 8 "$T/o.qcow2" | tr -d ' ') & 0x00fffffffffffe00 ))
  # Point guest cluster 0 at the refcount table (copied flag set: "owned").
  printf '%016x' $(( rt | (1 << 63) )) | xxd -r -p | dd of="$T/o.qcow2" bs=1 seek="$l2" conv=notrunc status=none
  before=$(dd if="$T/o.qcow2" bs=65536 skip=$((rt / 65536)) count=1 status=none | md5sum)
  run "$RB_TOOL" write "$T/o.qcow2" 0 512 9
  [ "$status" -eq 2 ]
  [[ "$output" == *"corrupt image"*"would overwrite metadata"* ]]
  [ "$(dd if="$T/o.qcow2" bs=65536 skip=$((rt / 65536)) count=1 status=none | md5sum)" = "$before" ]
  qemu-img info "$T/o.qcow2" | grep -q 'corrupt: true'
}

@test "an internal snapshot is served read-only by name or id with its own contents" {
  qemu-img create -q -f qcow2 "$T/s.qcow2" 4M
  qemu-io -c 'write -P 1 0 1M' "$T/s.qcow2" >/dev/null
  qemu-img snapshot -c first "$T/s.qcow2"
  qemu-io -c 'write -P 2 0 2M' "$T/s.qcow2" >/dev/null
  qemu-img convert -O raw -l snapshot.name=first "$T/s.qcow2" "$T/first.raw"
  "$RB_TOOL" cat "$T/s.qcow2@first" > "$T/got.raw"
  cmp "$T/got.raw" "$T/first.raw"
  "$RB_TOOL" cat "$T/s.qcow2@1" | cmp - "$T/first.raw"
  run "$RB_TOOL" cat "$T/s.qcow2@nosuch"
  [ "$status" -eq 2 ]
  [[ "$output" == *'no internal snapshot with id or name "nosuch"'* ]]
}
