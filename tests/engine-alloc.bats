#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# The allocation path: large writes across refcount-block ranges, allocation failures that are
# never "corruption", and zeros that come from the file system (only the guest's bytes are
# written; reused clusters holding old data read as zeros around a partial write).

load helpers

RB_TOOL="$top_builddir/tests/rb-tool"

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# not_corrupt IMAGE: qemu-img check clean and the corrupt bit clear.
not_corrupt () {
  qemu_check_clean "$1"
  [ "$(qemu-img info --output=json "$1" | jq '."format-specific".data.corrupt')" = false ]
}

# qemu_io_reads -c CMD... IMAGE: qemu-io (read-only) runs the reads; every pattern matches.
qemu_io_reads () {
  local out
  out=$(qemu-io -r "$@" 2>&1) || { echo "$out"; return 1; }
  if [[ "$out" == *"Pattern verification failed"* || "$out" == *"failed"* ]]; then
    echo "$out"; return 1
  fi
}

# append_stale IMAGE KIB: KIB KiB of 0x5a after the image's clusters: free clusters holding
# old data (refcount 0, inside the file), as a trimmed and flushed image has them.
append_stale () {
  head -c $(($2 * 1024)) /dev/zero | tr '\0' '\132' >> "$1"
}

@test "one 2 MiB write on a refcount_bits=64, 4K-cluster image succeeds and is not corruption (issue 13)" {
  qemu-img create -q -f qcow2 -o refcount_bits=64,cluster_size=4k "$T/r.qcow2" 64M
  "$RB_TOOL" write "$T/r.qcow2" $((1 << 20)) $((2 << 20)) 0x3c
  not_corrupt "$T/r.qcow2"
  qemu_io_reads -c 'read -P 0x3c 1M 2M' -c 'read -P 0 0 1M' -c 'read -P 0 3M 61M' "$T/r.qcow2"
  # Only the refcount blocks it needs: 512 data clusters need 2 blocks of 512 entries, not 64.
  [ "$(stat -c %s "$T/r.qcow2")" -lt $(( (2 << 20) + 64 * 4096 )) ]
}

@test "writes of 32 MiB at once through the plugin, over many refcount ranges, on 512-byte clusters with 64-bit refcounts" {
  qemu-img create -q -f qcow2 -o refcount_bits=64,cluster_size=512 "$T/r.qcow2" 80M
  head -c 32M /dev/urandom > "$T/data"
  start_rblock "$T/r.qcow2"
  nbdsh -u "$URI" -c "h.pwrite(open('$T/data', 'rb').read(), 7 * 1024 * 1024)" -c 'h.flush()'
  stop_rblock
  not_corrupt "$T/r.qcow2"
  qemu-img convert -O raw "$T/r.qcow2" "$T/out.raw"
  cmp <(head -c 32M "$T/data") <(tail -c +$((7 * 1024 * 1024 + 1)) "$T/out.raw" | head -c 32M)
  [ "$(head -c 7M "$T/out.raw" | tr -d '\0' | wc -c)" -eq 0 ]
}

@test "an allocation that fails (ENOSPC making a refcount block) is an error, never corruption; the next write works" {
  qemu-img create -q -f qcow2 -o refcount_bits=64,cluster_size=4k "$T/r.qcow2" 64M
  RBLOCK_FAULT=refblock_alloc:ENOSPC:once run "$RB_TOOL" write "$T/r.qcow2" $((1 << 20)) $((2 << 20)) 0x3c
  [ "$status" -eq 2 ]
  [[ "$output" == *"injected fault at refblock_alloc"* ]]
  run qemu-img check "$T/r.qcow2"
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ]
  [[ "$output" != *ERROR* ]]
  [ "$(qemu-img info --output=json "$T/r.qcow2" | jq '."format-specific".data.corrupt')" = false ]
  "$RB_TOOL" write "$T/r.qcow2" $((1 << 20)) $((2 << 20)) 0x3c
  qemu_io_reads -c 'read -P 0x3c 1M 2M' "$T/r.qcow2"
}

@test "allocating 4K writes into an empty image write only the guest's bytes: the file gets 4K per cluster, not 64K" {
  qemu-img create -q -f qcow2 "$T/e.qcow2" 1G
  start_rblock "$T/e.qcow2"
  nbdsh -u "$URI" -c '
for k in range(200):
    h.pwrite(bytes([k % 255 + 1]) * 4096, k * 3 * 65536 + 8192)
h.flush()'
  stop_rblock
  not_corrupt "$T/e.qcow2"
  for k in 0 77 199; do
    off=$((k * 3 * 65536))
    qemu_io_reads -c "read -P 0 $off 8k" -c "read -P $((k % 255 + 1)) $((off + 8192)) 4k" \
      -c "read -P 0 $((off + 12288)) 52k" "$T/e.qcow2"
  done
  # 200 clusters: 200 x 4 KiB of data plus metadata, where whole clusters would be 12.5 MiB.
  blocks=$(( $(stat -c '%b * %B' "$T/e.qcow2") ))
  echo "allocated: $blocks bytes"
  [ "$blocks" -lt $(( 3 << 20 )) ]
}

# reuse_case [RBLOCK_FAULT setting]: old data in free clusters; partial writes that reuse them
# read as zeros everywhere else in their clusters (64K clusters, so partial writes copy-on-write
# nothing: zeros must come from zeroing).
reuse_case () {
  local img=$1 fault=${2:-}
  qemu-img create -q -f qcow2 "$img" 64M
  append_stale "$img" 1024
  stale_end=$(stat -c %s "$img")
  # One session (a clean close cuts free clusters off the end of the file).
  RBLOCK_FAULT="$fault" start_rblock "$img"
  nbdsh -u "$URI" -c "h.pwrite(b'\x77' * 3000, 5 * 65536 + 10000)" \
    -c "h.pwrite(b'\x78' * 1000, 9 * 65536 + 65000)" -c 'h.flush()'
  stop_rblock
  not_corrupt "$img"
  # Reused: the data clusters lie inside the stale area, not past it.
  off=$(qemu-img map --output=json "$img" | jq '[.[] | select(.data) | .offset] | max')
  [ "$off" -lt "$stale_end" ]
  qemu_io_reads -c "read -P 0 $((5 * 65536)) 10000" -c "read -P 0x77 $((5 * 65536 + 10000)) 3000" \
    -c "read -P 0 $((5 * 65536 + 13000)) $((65536 - 13000))" \
    -c "read -P 0 $((9 * 65536)) 65000" -c "read -P 0x78 $((9 * 65536 + 65000)) 536" \
    -c "read -P 0x78 $((10 * 65536)) 464" -c "read -P 0 $((10 * 65536 + 464)) $((65536 - 464))" \
    "$img"
}

@test "a reused cluster that held old data reads as zeros around a partial write (fallocate ZERO_RANGE)" {
  reuse_case "$T/z.qcow2"
}

@test "the same where the file system zeroes by punching holes only (tmpfs)" {
  [ -d /dev/shm ] && [ -w /dev/shm ] || skip "no writable /dev/shm (tmpfs) on this machine"
  d=$(mktemp -d /dev/shm/rblock-test.XXXXXX)
  reuse_case "$d/z.qcow2"
  rm -rf "$d"
}

@test "the same where the file system supports neither (RBLOCK_FAULT=data_zero:EOPNOTSUPP): zeros are written" {
  reuse_case "$T/z.qcow2" data_zero:EOPNOTSUPP:always
}

@test "ENOSPC or EIO from the zeroing fails the write cleanly: no corruption, no stale data exposed" {
  for e in ENOSPC EIO; do
    img="$T/f-$e.qcow2"
    qemu-img create -q -f qcow2 "$img" 64M
    append_stale "$img" 1024
    RBLOCK_FAULT=data_zero:$e:always run "$RB_TOOL" write "$img" $((5 * 65536 + 10000)) 3000 0x77
    [ "$status" -eq 2 ]
    [[ "$output" == *"injected fault at data_zero"* ]]
    run qemu-img check "$img"
    [ "$status" -eq 0 ] || [ "$status" -eq 3 ]
    [[ "$output" != *ERROR* ]]
    # The write did not happen: the cluster still reads as zeros (unallocated).
    qemu_io_reads -c "read -P 0 $((5 * 65536)) 64k" "$img"
  done
}

@test "a zero over a backing file's zeros in a new cluster past the end of the file leaves a valid image" {
  truncate -s 1M "$T/b1.raw"
  qemu-img create -q -f qcow2 -o cluster_size=4k -b "$T/b1.raw" -F raw "$T/t1.qcow2" 2M
  "$RB_TOOL" zero "$T/t1.qcow2" 100 50
  not_corrupt "$T/t1.qcow2"
  "$RB_TOOL" cat "$T/t1.qcow2" | cmp - <(head -c 2M /dev/zero)
}

# syncs_and_durable TRACE: "FDATASYNCS DURABLE_WRITES" in an strace -e fdatasync,pwritev2 log.
syncs_and_durable () {
  echo "$(grep -c '^[0-9]* *fdatasync(' "$1") $(grep -c '^[0-9]* *pwritev2(' "$1")"
}

# A new refcount block (and its table entry) is made durable by itself (pwritev2 RWF_DSYNC):
# a whole-file fdatasync there flushed all the guest data written so far while every
# allocating writer waited (sequential writes into an empty image stalled every 2 GiB of
# 64 KiB clusters).  Nor does each L2 table written at a flush sync before the next one.
@test "a sequential write creating 32 refcount blocks syncs no more than a 512-byte write" {
  command -v strace > /dev/null || { echo "strace is needed (.ci/packages lists it)"; return 1; }
  qemu-img create -q -f qcow2 -o cluster_size=512 "$T/small.qcow2" 8M
  qemu-img create -q -f qcow2 -o cluster_size=512 "$T/big.qcow2" 8M
  strace -qq -e trace=fdatasync,pwritev2 -o "$T/small.trace" "$RB_TOOL" write "$T/small.qcow2" 0 512 0x5a
  strace -qq -e trace=fdatasync,pwritev2 -o "$T/big.trace" "$RB_TOOL" write "$T/big.qcow2" 0 $((4 << 20)) 0x5a
  read -r s0 d0 <<< "$(syncs_and_durable "$T/small.trace")"
  read -r s1 d1 <<< "$(syncs_and_durable "$T/big.trace")"
  echo "512 B: $s0 fdatasyncs, $d0 durable writes; 4 MiB: $s1 fdatasyncs, $d1 durable writes"
  [ "$s1" -le "$s0" ]
  [ "$d1" -ge 64 ]             # 32 blocks of 256 clusters and their table entries
  not_corrupt "$T/big.qcow2"
  qemu_io_reads -c "read -P 0x5a 0 4M" -c "read -P 0 4M 4M" "$T/big.qcow2"
}

@test "without RWF_DSYNC (old kernel) the refcount blocks are written and fdatasynced" {
  command -v strace > /dev/null || { echo "strace is needed (.ci/packages lists it)"; return 1; }
  qemu-img create -q -f qcow2 -o cluster_size=512 "$T/img.qcow2" 8M
  RB_NO_DSYNC=1 strace -qq -E LD_PRELOAD="$top_builddir/tests/.libs/crashshim.so" \
    -e trace=fdatasync -o "$T/trace" "$RB_TOOL" write "$T/img.qcow2" 0 $((4 << 20)) 0x3c
  n=$(grep -c '^[0-9]* *fdatasync(' "$T/trace")
  echo "$n fdatasyncs"
  [ "$n" -ge 32 ]
  not_corrupt "$T/img.qcow2"
  qemu_io_reads -c "read -P 0x3c 0 4M" -c "read -P 0 4M 4M" "$T/img.qcow2"
}
