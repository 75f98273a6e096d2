#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Images made by qemu-img and qemu-io, read through nbdkit ./rblock.so: the bytes equal
# qemu-img convert -O raw, the nbdinfo --map data/zero runs equal qemu-img map's.

load helpers

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# fill IMAGE CLUSTER_SIZE: varied writes: aligned, unaligned, straddling, zeroes.
fill () {
  local cs=$2
  qemu-io -c "write -P 0x11 0 $((cs * 3))" \
          -c "write -P 0x22 $((cs * 5 + 100)) 3000" \
          -c "write -P 0x33 $((cs * 9 - 700)) 1400" \
          -c "write -P 0x44 $((2 << 20)) $((cs * 2 + 512))" \
          -c "write -z $((cs * 12)) $((cs * 2))" \
          -c "write -P 0x55 $((3 << 20)) 4096" \
          -c "write -z $((3 << 20)) 512" \
          "$1" >/dev/null
}

serve_and_compare () {   # image
  start_rblock "$1" -r
  assert_served_equals_qemu "$1"
  stop_rblock
}

@test "every cluster size from 512 B to 2 MiB, compat 0.10 and 1.1, reads as QEMU reads it" {
  for cs in 512 4096 65536 2097152; do
    for compat in 0.10 1.1; do
      rm -f "$T/m.qcow2"
      size=$(( cs * 16 > (8 << 20) ? cs * 16 : (8 << 20) ))
      qemu-img create -q -f qcow2 -o cluster_size=$cs,compat=$compat "$T/m.qcow2" $size
      fill "$T/m.qcow2" "$cs"
      serve_and_compare "$T/m.qcow2"
    done
  done
}

@test "refcount_bits 1, 16 and 64 images read as QEMU reads them" {
  for rb in 1 16 64; do
    rm -f "$T/r.qcow2"
    qemu-img create -q -f qcow2 -o refcount_bits=$rb "$T/r.qcow2" 8M
    fill "$T/r.qcow2" 65536
    serve_and_compare "$T/r.qcow2"
  done
}

@test "zlib and zstd compressed images (qemu-img convert -c) read as QEMU reads them" {
  head -c 3M /dev/urandom > "$T/src.raw"
  head -c 2M /dev/zero >> "$T/src.raw"
  yes rblock | head -c 3M >> "$T/src.raw"
  for ct in zlib zstd; do
    rm -f "$T/c.qcow2"
    qemu-img convert -c -O qcow2 -o compression_type=$ct "$T/src.raw" "$T/c.qcow2"
    qemu-img map --output=json "$T/c.qcow2" | grep -q '"compressed": true' ||
      qemu-img check "$T/c.qcow2" | grep -q 'compressed clusters'
    serve_and_compare "$T/c.qcow2"
    nbdcopy "$URI" - 2>/dev/null | cmp - "$T/src.raw" 2>/dev/null || true
    start_rblock "$T/c.qcow2" -r
    nbdcopy "$URI" "$T/back.raw"
    stop_rblock
    cmp "$T/back.raw" "$T/src.raw"
  done
}

@test "extended L2 entries with partial subcluster writes read as QEMU reads them" {
  for cs in 65536 2097152; do
    rm -f "$T/e.qcow2"
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs "$T/e.qcow2" 16M
    sc=$((cs / 32))
    qemu-io -c "write -P 0x61 0 $sc" -c "write -P 0x62 $((sc * 5 + 17)) 100" \
            -c "write -z $((sc * 7)) $((sc * 3))" -c "write -P 0x63 $((cs + sc * 31)) $((sc + 9))" \
            -c "write -P 0x64 $((4 << 20)) $((cs * 2))" "$T/e.qcow2" >/dev/null
    serve_and_compare "$T/e.qcow2"
  done
}

@test "extended L2 over a backing file: unallocated subclusters show the backing data" {
  head -c 4M /dev/urandom > "$T/base.raw"
  qemu-img create -q -f qcow2 -o extended_l2=on -b base.raw -F raw "$T/e.qcow2" 4M
  qemu-io -c 'write -P 0x71 4096 2048' -c 'write -z 65536 4096' -c 'write -P 0x72 200000 10' "$T/e.qcow2" >/dev/null
  serve_and_compare "$T/e.qcow2"
}

@test "zero clusters (qemu-io write -z) read as zeros and map as zero" {
  qemu-img create -q -f qcow2 "$T/z.qcow2" 8M
  qemu-io -c 'write -P 0x7a 0 4M' -c 'write -z 1M 1M' -c 'write -z -u 3M 512k' "$T/z.qcow2" >/dev/null
  qemu-img map --output=json "$T/z.qcow2" | grep -q '"zero": true, "data": false'
  serve_and_compare "$T/z.qcow2"
}

@test "a 3-deep chain of raw and qcow2 files with relative names, served from another folder" {
  mkdir -p "$T/imgs/sub" "$T/elsewhere"
  head -c 6M /dev/urandom > "$T/imgs/base.raw"
  qemu-img create -q -f qcow2 -b base.raw -F raw "$T/imgs/mid.qcow2" 6M
  qemu-io -c 'write -P 0x81 1M 1M' -c 'write -z 3M 64k' "$T/imgs/mid.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -b ../mid.qcow2 -F qcow2 "$T/imgs/sub/top.qcow2" 6M
  qemu-io -c 'write -P 0x82 1536k 64k' -c 'write -P 0x83 5M 4096' "$T/imgs/sub/top.qcow2" >/dev/null
  cd "$T/elsewhere"
  serve_and_compare "$T/imgs/sub/top.qcow2"
}

@test "a backing file smaller than the overlay reads as zeros past its end" {
  head -c 1M /dev/urandom > "$T/small.raw"
  qemu-img create -q -f qcow2 -b small.raw -F raw "$T/big.qcow2" 4M
  qemu-io -c 'write -P 0x91 3M 4096' "$T/big.qcow2" >/dev/null
  serve_and_compare "$T/big.qcow2"
  start_rblock "$T/big.qcow2" -r
  nbdcopy "$URI" "$T/got.raw"
  cmp -n 1048576 "$T/got.raw" "$T/small.raw"
  cmp -i 1048576:0 -n 1048576 "$T/got.raw" /dev/zero
}

@test "the seed's tip: Hello, world! written by QEMU at guest cluster 3 is read at 196608" {
  qemu-img create -q -f qcow2 "$T/h.qcow2" 64M
  printf 'Hello, world!' > "$T/hello"
  qemu-io -c "write -s $T/hello $((3 * 65536)) 13" "$T/h.qcow2" >/dev/null
  start_rblock "$T/h.qcow2" -r
  run nbdsh -u "$URI" -c 'import sys; sys.stdout.write(h.pread(13, 196608).decode())'
  [ "$status" -eq 0 ]
  [ "$output" = "Hello, world!" ]
}

@test "a raw file as file= is refused at start-up with a clear message" {
  head -c 1M /dev/zero > "$T/disk.raw"
  run nbdkit -U "$T/x.sock" "$RBLOCK_SO" file="$T/disk.raw" --run true
  [ "$status" -ne 0 ]
  [[ "$output" == *"not a qcow2 image"* ]]
}

@test "the plugin shows its parameters in --help and --dump-plugin" {
  run nbdkit "$RBLOCK_SO" --help
  [[ "$output" == *"file=<FILENAME>"* ]]
  [[ "$output" == *"rpc="* ]]
  run nbdkit "$RBLOCK_SO" --dump-plugin
  [[ "$output" == *"thread_model=parallel"* ]]
  [[ "$output" == *"has_extents=1"* ]]
}

@test "nbdinfo shows multi-conn, extents, FUA, fast zero and the cluster size as preferred block size" {
  qemu-img create -q -f qcow2 -o cluster_size=131072 "$T/i.qcow2" 8M
  start_rblock "$T/i.qcow2"
  run nbdinfo "$URI"
  [[ "$output" == *"can_multi_conn: true"* ]]
  [[ "$output" == *"base:allocation"* ]]
  [[ "$output" == *"can_fua: true"* ]]
  [[ "$output" == *"can_fast_zero: true"* ]]
  [[ "$output" == *"block_size_preferred: 131072"* ]]
  [[ "$output" == *"is_read_only: false"* ]]
}
