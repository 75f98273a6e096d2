#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# One write of 1 cluster up to 32 MiB at once, for every refcount width: the data reads back
# (through the engine and through qemu-img), qemu-img check is clean, the image is not corrupt.

load helpers

MT="$top_builddir/tests/mt-model"

setup () {
  T="$BATS_TEST_TMPDIR"
  head -c 32M /dev/urandom > "$T/data"
}

# one_write_sizes CLUSTER_SIZE REFCOUNT_BITS: into one new image, one write each of 1 cluster,
# 64K, 1M, 2M, 8M and 32M (every other one at an unaligned offset), each its own rb_pwrite
# into space never allocated before; then judge the image with qemu-img.
one_write_sizes () {
  local cs=$1 bits=$2 size off M=$((1 << 20))
  qemu-img create -q -f qcow2 -o "cluster_size=$cs,refcount_bits=$bits" "$T/img.qcow2" 49M
  truncate -s 49M "$T/want.raw"
  for w in "$cs 0" "65536 $((2 * 65536 + 1000))" "$M $M" "$((2 * M)) $((2 * M))" \
           "$((8 * M)) $((4 * M + 1000))" "$((32 * M)) $((16 * M))"; do
    read -r size off <<< "$w"
    head -c "$size" "$T/data" > "$T/chunk"
    run "$MT" --one-write "$T/chunk" --offset "$off" "$T/img.qcow2"
    [ "$status" -eq 0 ] || { echo "$output"; return 1; }
    dd if="$T/chunk" of="$T/want.raw" bs=1M oflag=seek_bytes seek="$off" conv=notrunc status=none
  done
  qemu_check_clean "$T/img.qcow2"
  qemu-img info --output=json "$T/img.qcow2" | jq -e '."format-specific".data.corrupt == false' >/dev/null
  qemu-img convert -O raw "$T/img.qcow2" "$T/got.raw"
  cmp "$T/got.raw" "$T/want.raw"
}

@test "4K clusters, refcount_bits=1: writes of 1 cluster to 32 MiB at once" {
  one_write_sizes 4096 1
}

@test "4K clusters, refcount_bits=2: writes of 1 cluster to 32 MiB at once" {
  one_write_sizes 4096 2
}

@test "4K clusters, refcount_bits=4: writes of 1 cluster to 32 MiB at once" {
  one_write_sizes 4096 4
}

@test "4K clusters, refcount_bits=8: writes of 1 cluster to 32 MiB at once" {
  one_write_sizes 4096 8
}

@test "4K clusters, refcount_bits=16: writes of 1 cluster to 32 MiB at once" {
  one_write_sizes 4096 16
}

@test "4K clusters, refcount_bits=32: writes of 1 cluster to 32 MiB at once" {
  one_write_sizes 4096 32
}

@test "4K clusters, refcount_bits=64: writes of 1 cluster to 32 MiB at once (not marked corrupt)" {
  one_write_sizes 4096 64
}

@test "512-byte clusters, refcount_bits=64 (64 clusters per refcount block): writes up to 32 MiB" {
  one_write_sizes 512 64
}

@test "64K clusters, refcount_bits=64: writes up to 32 MiB at once" {
  one_write_sizes 65536 64
}
