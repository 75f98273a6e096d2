#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Randomised write/zero/trim/flush workloads on the engine, mirrored on a raw model;
# qemu-img compare and qemu-img check are the judges.

RB_TOOL="$top_builddir/tests/rb-tool"

# run_workload NAME SEED NOPS: image $T/NAME.qcow2 already created.
run_workload () {
  local img="$T/$1.qcow2" dir="$T/$1.d"
  mkdir -p "$dir"
  qemu-img convert -U -O raw "$img" "$dir/mirror"
  run "$RB_TOOL" random "$img" "$dir" "$2" "$3"
  [ "$status" -eq 0 ] || { echo "$output"; return 1; }
  run qemu-img check "$img"
  [ "$status" -eq 0 ] || { echo "$output"; return 1; }
  [[ "$output" == *"No errors were found"* ]] || { echo "$output"; return 1; }
  run qemu-img compare "$img" "$dir/mirror"
  [ "$status" -eq 0 ] || { echo "$output"; return 1; }
}

matrix_case () {   # name size qemu-img-options
  qemu-img create -q -f qcow2 -o "$3" "$T/$1.qcow2" "$2"
  run_workload "$1" 1 600
  run_workload "$1" 2 600
}

setup () {
  T="$BATS_TEST_TMPDIR"
}

@test "random I/O on 64K clusters, compat 1.1 matches the model and checks clean" {
  matrix_case c64k 48M cluster_size=65536,compat=1.1
}

@test "random I/O on 512-byte clusters grows the refcount table and stays clean" {
  matrix_case c512 8M cluster_size=512,compat=1.1
}

@test "random I/O on 4K clusters, compat 0.10 matches the model" {
  matrix_case c4k-v2 16M cluster_size=4096,compat=0.10
}

@test "random I/O on 2M clusters matches the model" {
  matrix_case c2m 64M cluster_size=2M,compat=1.1
}

@test "random I/O with refcount_bits=1 matches the model" {
  matrix_case rc1 32M refcount_bits=1
}

@test "random I/O with refcount_bits=64 matches the model" {
  matrix_case rc64 32M refcount_bits=64
}

@test "random I/O with 512-byte clusters and refcount_bits=1 crosses many refcount blocks" {
  matrix_case c512-rc1 4M cluster_size=512,refcount_bits=1
}

@test "random I/O with extended L2 entries (subclusters) matches the model" {
  matrix_case extl2 32M cluster_size=65536,extended_l2=on
}

@test "random I/O with extended L2 and 16K clusters matches the model" {
  matrix_case extl2-16k 8M cluster_size=16384,extended_l2=on
}

@test "random I/O over a qcow2+raw backing chain matches the model, backing untouched" {
  head -c 24M /dev/urandom > "$T/base.raw"
  sum=$(md5sum < "$T/base.raw")
  qemu-img create -q -f qcow2 -b base.raw -F raw "$T/mid.qcow2" 32M
  qemu-io -c 'write -P 7 1M 3M' -c 'write -z 8M 1M' "$T/mid.qcow2" >/dev/null
  msum=$(md5sum < "$T/mid.qcow2")
  for opts in compat=1.1 compat=0.10 extended_l2=on,cluster_size=16384 cluster_size=512; do
    rm -f "$T/top.qcow2"
    qemu-img create -q -f qcow2 -o "$opts" -b mid.qcow2 -F qcow2 "$T/top.qcow2" 40M
    run_workload top 3 500
  done
  [ "$(md5sum < "$T/base.raw")" = "$sum" ]
  [ "$(md5sum < "$T/mid.qcow2")" = "$msum" ]
}

@test "random I/O on zlib and zstd compressed images copies compressed clusters on write" {
  head -c 8M /dev/urandom > "$T/src.raw"
  head -c 8M /dev/zero >> "$T/src.raw"
  qemu-io -f raw -c 'write -P 3 9M 2M' "$T/src.raw" >/dev/null
  for ct in zlib zstd; do
    rm -f "$T/comp.qcow2"
    qemu-img convert -c -O qcow2 -o compression_type=$ct "$T/src.raw" "$T/comp.qcow2"
    qemu-img info "$T/comp.qcow2" | grep -q "compression type: $ct"
    run_workload comp 4 500
  done
}

@test "writes never touch an internal snapshot: qemu-img snapshot -a restores it exactly" {
  qemu-img create -q -f qcow2 "$T/snap.qcow2" 16M
  qemu-io -c 'write -P 1 0 8M' -c 'write -P 2 12M 1M' "$T/snap.qcow2" >/dev/null
  qemu-img snapshot -c before "$T/snap.qcow2"
  qemu-img convert -O raw "$T/snap.qcow2" "$T/before.raw"
  run_workload snap 5 800
  ! qemu-img compare -q "$T/snap.qcow2" "$T/before.raw"
  qemu-img snapshot -a before "$T/snap.qcow2"
  qemu-img compare "$T/snap.qcow2" "$T/before.raw"
  run qemu-img check "$T/snap.qcow2"
  [[ "$output" == *"No errors were found"* ]]
}
