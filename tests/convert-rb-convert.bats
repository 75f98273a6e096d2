#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-convert: raw files and qcow2 chains to qcow2 (and raw), judged by qemu-img check,
# compare, info and map, and read back through the plugin.

load helpers

RB_CONVERT="$top_builddir/utils/rb-convert"

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# A source with random data, a long zero run written as zeros, holes, and a ragged tail.
make_source () {
  truncate -s 40M "$T/src.raw"
  dd if=/dev/urandom of="$T/src.raw" bs=1M count=3 seek=1 conv=notrunc status=none
  dd if=/dev/zero of="$T/src.raw" bs=1M count=4 seek=8 conv=notrunc status=none
  dd if=/dev/urandom of="$T/src.raw" bs=1000 count=9 seek=20001 conv=notrunc status=none
  yes rblock | head -c 3M | dd of="$T/src.raw" bs=1M seek=30 conv=notrunc status=none
  printf 'ragged tail' >> "$T/src.raw"
}

# check_output OUT: clean, identical to the source, zero regions unallocated.
check_output () {
  qemu_check_clean "$1"
  run qemu-img compare "$T/src.raw" "$1"
  [ "$status" -eq 0 ] || { echo "$output"; return 1; }
  # The written-zero run (8M..12M) and the holes are not allocated.
  [ "$(qemu-img map --output=json "$1" | jq '[.[] | select(.data and .start < 12582912 and .start + .length > 8388608)] | length')" = 0 ]
}

@test "rb-convert: default options give a qcow2 v3, 64K clusters, identical and leak-free" {
  make_source
  "$RB_CONVERT" "$T/src.raw" "$T/out.qcow2"
  check_output "$T/out.qcow2"
  info=$(qemu-img info --output=json "$T/out.qcow2")
  [ "$(echo "$info" | jq '."cluster-size"')" = 65536 ]
  [ "$(echo "$info" | jq -r '."format-specific".data.compat')" = 1.1 ]
  [ "$(echo "$info" | jq '."format-specific".data."refcount-bits"')" = 16 ]
}

@test "rb-convert: every cluster size from 512 to 2M" {
  make_source
  for cs in 512 4K 64K 2M; do
    rm -f "$T/out.qcow2"
    "$RB_CONVERT" -c $cs "$T/src.raw" "$T/out.qcow2"
    check_output "$T/out.qcow2"
    want=$(( $(echo $cs | sed 's/K/*1024/; s/M/*1048576/') ))
    [ "$(qemu-img info --output=json "$T/out.qcow2" | jq '."cluster-size"')" = "$want" ]
  done
}

@test "rb-convert: compat 0.10 and refcount bits 1..64 as asked" {
  make_source
  "$RB_CONVERT" --compat 0.10 "$T/src.raw" "$T/v2.qcow2"
  check_output "$T/v2.qcow2"
  [ "$(qemu-img info --output=json "$T/v2.qcow2" | jq -r '."format-specific".data.compat')" = 0.10 ]
  for rb in 1 2 4 8 32 64; do
    rm -f "$T/r.qcow2"
    "$RB_CONVERT" --refcount-bits $rb "$T/src.raw" "$T/r.qcow2"
    check_output "$T/r.qcow2"
    [ "$(qemu-img info --output=json "$T/r.qcow2" | jq '."format-specific".data."refcount-bits"')" = $rb ]
  done
}

@test "rb-convert: zlib and zstd compressed outputs, compression type recorded, smaller" {
  make_source
  "$RB_CONVERT" "$T/src.raw" "$T/plain.qcow2"
  for ct in zlib zstd; do
    rm -f "$T/c.qcow2"
    "$RB_CONVERT" -z $ct "$T/src.raw" "$T/c.qcow2"
    check_output "$T/c.qcow2"
    [ "$(qemu-img info --output=json "$T/c.qcow2" | jq -r '."format-specific".data."compression-type"')" = $ct ]
    qemu-img check "$T/c.qcow2" | grep -q 'compressed clusters'
    [ "$(stat -c %s "$T/c.qcow2")" -lt "$(stat -c %s "$T/plain.qcow2")" ]
  done
}

@test "rb-convert: a qcow2 chain is flattened; -O raw writes the guest view" {
  head -c 8M /dev/urandom > "$T/base.raw"
  qemu-img create -q -f qcow2 -b base.raw -F raw "$T/top.qcow2" 12M
  qemu-io -c 'write -P 5 1M 1M' -c 'write -z 3M 1M' -c 'write -P 6 10M 64k' "$T/top.qcow2" >/dev/null
  "$RB_CONVERT" "$T/top.qcow2" "$T/flat.qcow2"
  qemu_check_clean "$T/flat.qcow2"
  qemu-img compare "$T/top.qcow2" "$T/flat.qcow2"
  [ "$(qemu-img info --output=json "$T/flat.qcow2" | jq -r '."backing-filename" // "none"')" = none ]
  "$RB_CONVERT" -O raw "$T/top.qcow2" "$T/flat.raw"
  qemu-img convert -O raw "$T/top.qcow2" "$T/want.raw"
  cmp "$T/flat.raw" "$T/want.raw"
  # Sparse: the zero regions take no space.
  [ "$(du -k "$T/flat.raw" | cut -f1)" -lt 10000 ]
}

@test "rb-convert: the output served by nbdkit ./rblock.so reads back identically" {
  make_source
  "$RB_CONVERT" -c 4K "$T/src.raw" "$T/out.qcow2"
  start_rblock "$T/out.qcow2" -r
  nbdcopy "$URI" "$T/back.raw"
  stop_rblock
  cmp -n "$(stat -c %s "$T/src.raw")" "$T/back.raw" "$T/src.raw"
}

@test "rb-convert: an existing output is refused without --force and replaced with it" {
  make_source
  echo keep > "$T/out.qcow2"
  run "$RB_CONVERT" "$T/src.raw" "$T/out.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == "rb-convert: "*"already exists"* ]]
  [ "$(cat "$T/out.qcow2")" = keep ]
  "$RB_CONVERT" --force "$T/src.raw" "$T/out.qcow2"
  check_output "$T/out.qcow2"
}

@test "rb-convert: refuses to write over its own source" {
  make_source
  sum=$(md5sum < "$T/src.raw")
  run "$RB_CONVERT" --force "$T/src.raw" "$T/src.raw"
  [ "$status" -eq 2 ]
  [[ "$output" == *"refusing to overwrite an input"* ]]
  [ "$(md5sum < "$T/src.raw")" = "$sum" ]
}

@test "rb-convert: a missing or unreadable source is a one-line error, exit 2, nothing left" {
  run "$RB_CONVERT" "$T/nosuch.raw" "$T/out.qcow2"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "rb-convert: "*"nosuch.raw"* ]]
  [ ! -e "$T/out.qcow2" ]
  [ -z "$(ls -A "$T" | grep tmp || true)" ]
  qemu-img create -q -f qcow2 "$T/bad.qcow2" 1M
  printf '\x00\x00\x00\x09' | dd of="$T/bad.qcow2" bs=1 seek=4 conv=notrunc status=none
  run "$RB_CONVERT" "$T/bad.qcow2" "$T/out.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"unsupported qcow2 version 9"* ]]
  [ ! -e "$T/out.qcow2" ]
}

@test "rb-convert: a full disk gives exit 2 and leaves no output behind" {
  mkdir -p "$T/full"
  mount -t tmpfs -o size=2M tmpfs "$T/full" || { echo "mounting a tmpfs needs root (CI runs as root)"; false; }
  head -c 8M /dev/urandom > "$T/big.raw"
  run "$RB_CONVERT" "$T/big.raw" "$T/full/out.qcow2"
  umount_rc=0
  ls -A "$T/full" > "$T/left"
  umount "$T/full" || umount_rc=$?
  [ "$status" -eq 2 ]
  [[ "$output" == *"No space left on device"* ]]
  [ ! -s "$T/left" ]
}

@test "rb-convert: usage errors exit 1 with the reason" {
  run "$RB_CONVERT" -c 3000 a b
  [ "$status" -eq 1 ]
  [[ "$output" == *"--cluster-size"* ]]
  run "$RB_CONVERT" --compat 2 a b
  [ "$status" -eq 1 ]
  run "$RB_CONVERT" -z lz4 a b
  [ "$status" -eq 1 ]
  run "$RB_CONVERT" onlyone
  [ "$status" -eq 1 ]
  run "$RB_CONVERT" --help
  [ "$status" -eq 0 ]
  [[ "$output" == *examples* ]]
  run "$RB_CONVERT" --version
  [[ "$output" == "rb-convert "* ]]
}

@test "rb-convert: a block device source is sized by BLKGETSIZE64 (loop device)" {
  head -c 6M /dev/urandom > "$T/dev.img"
  dev=$(losetup --find --show "$T/dev.img" 2>/dev/null) || skip "no loop device can be made here (needs root and /dev/loop*)"
  run "$RB_CONVERT" "$dev" "$T/dev.qcow2"
  losetup -d "$dev"
  [ "$status" -eq 0 ]
  qemu_check_clean "$T/dev.qcow2"
  qemu-img compare "$T/dev.img" "$T/dev.qcow2"
}

@test "rb-convert: a read error (EIO) names the offset, exit 2, nothing left (NBD source with nbdkit's error filter)" {
  head -c 4M /dev/urandom > "$T/e.raw"
  nbdkit -U "$T/e.sock" -P "$T/e.pid" --filter=error file "$T/e.raw" error-pread=EIO error-pread-rate=1
  wait_until "$RB_WAIT" "nbdkit's socket" test -S "$T/e.sock"
  run "$RB_CONVERT" "nbd+unix:///?socket=$T/e.sock" "$T/out.qcow2"
  kill "$(cat "$T/e.pid")"
  [ "$status" -eq 2 ]
  [[ "$output" == "rb-convert: "*"read error at offset "[0-9]*": Input/output error" ]]
  [ ! -e "$T/out.qcow2" ]
  [ -z "$(ls -A "$T" | grep '\.tmp\.' || true)" ]
}

@test "rb-convert: -p shows bytes, rate and ETA on a terminal, done/total lines when not a terminal" {
  local size
  make_source
  size=$(stat -c %s "$T/src.raw")
  run script -qec "$RB_CONVERT -p $T/src.raw $T/p.qcow2" /dev/null
  [ "$status" -eq 0 ]
  [[ "$output" == *"100.0%"*"MiB"*"/s"*"ETA"* ]]
  [[ "$output" != *"$size/$size"* ]]
  qemu-img compare "$T/src.raw" "$T/p.qcow2"
  run "$RB_CONVERT" -p "$T/src.raw" "$T/q.qcow2"
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "0/$size" ] && [ "${lines[-1]}" = "$size/$size" ]
  qemu-img compare "$T/src.raw" "$T/q.qcow2"
}

@test "rb-convert -O raw onto an NBD export: the export then reads exactly as the qcow2 (old data cleared)" {
  head -c 8M /dev/urandom > "$T/old.raw"
  qemu-img create -q -f qcow2 "$T/img.qcow2" 8M
  qemu-io -c 'write -P 7 1M 2M' -c 'write -P 9 6M 4k' "$T/img.qcow2" >/dev/null
  cp "$T/old.raw" "$T/export.raw"
  nbdkit -U "$T/x.sock" -P "$T/x.pid" file "$T/export.raw"
  wait_until "$RB_WAIT" "nbdkit's socket" test -S "$T/x.sock"
  run "$RB_CONVERT" -O raw "$T/img.qcow2" "nbd+unix:///?socket=$T/x.sock"
  kill "$(cat "$T/x.pid")"
  [ "$status" -eq 0 ] || { echo "$output"; false; }
  qemu-img convert -O raw "$T/img.qcow2" "$T/want.raw"
  cmp "$T/export.raw" "$T/want.raw"
  run "$RB_CONVERT" "$T/img.qcow2" "nbd+unix:///?socket=$T/x.sock"
  [ "$status" -eq 1 ]
  [[ "$output" == *"needs -O raw"* ]]
}
