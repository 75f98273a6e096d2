#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Colliding writers over the format matrix: threads write, zero and trim interleaved bytes of the
# same clusters and subclusters (tests/mt-model.c); every byte equals the model, qemu-img check is
# clean and qemu-img's raw view equals the model too.  MT_MODEL_SEED=N repeats a run,
# MT_MODEL_SCALE=P runs P% of the requests (the TSan pass of CI uses less).

load helpers
load model-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  SEED=${MT_MODEL_SEED:-$(( (RANDOM << 15) | RANDOM ))}
  SCALE=${MT_MODEL_SCALE:-100}
}

# model NAME OPS [mt-model options]: 4 threads x OPS requests (scaled) on $T/NAME.qcow2, then
# qemu-img judges: check clean, not marked corrupt, raw view equal to the model.
model () {
  local img="$T/$1.qcow2" ops=$(( $2 * SCALE / 100 > 0 ? $2 * SCALE / 100 : 1 ))
  shift 2
  qemu-img convert -U -O raw "$img" "$T/start.raw"
  run "$MT" --seed "$SEED" --ops "$ops" --jitter --initial "$T/start.raw" \
    --expect "$T/expect.raw" "$@" "$img"
  echo "$output"
  if [ "$status" -ne 0 ]; then
    echo "same images and requests again (in the build tree):" \
      "make check TESTS=engine-model.bats MT_MODEL_SEED=$SEED MT_MODEL_SCALE=$SCALE"
    return 1
  fi
  qemu_check_clean "$img"
  qemu-img info --output=json "$img" | jq -e '."format-specific".data.corrupt != true' >/dev/null
  qemu-img convert -O raw "$img" "$T/end.raw"
  cmp "$T/end.raw" "$T/expect.raw"
  rm -f "$T/end.raw" "$T/expect.raw"
}

# with_snapshot NAME: take an internal snapshot now (clusters become shared: writes must copy);
# snapshot_intact NAME: it still reads as $T/start.raw.
with_snapshot () {
  qemu-img snapshot -c before "$T/$1.qcow2"
}
snapshot_intact () {
  qemu-img convert -U -l snapshot.name=before -O raw "$T/$1.qcow2" "$T/snap.raw"
  cmp "$T/snap.raw" "$T/start.raw"
}

@test "64K clusters, compat 1.1: colliding writers lose no byte" {
  new_image a 16M cluster_size=64k
  model a 2000
}

@test "512-byte clusters: colliding writers lose no byte, writes span many L2 and refcount blocks" {
  new_image a 4M cluster_size=512
  model a 1500
}

@test "4K clusters: colliding writers lose no byte" {
  new_image a 8M cluster_size=4k
  model a 2000
}

@test "2M clusters: colliding writers lose no byte" {
  new_image a 32M cluster_size=2M
  model a 300
}

@test "4K clusters with every refcount width (1 to 64 bits): the model holds, check clean" {
  for bits in 1 2 4 8 16 32 64; do
    new_image "rc$bits" 6M "cluster_size=4k,refcount_bits=$bits"
    model "rc$bits" 700
  done
}

@test "512-byte clusters with 64-bit and 1-bit refcounts: large writes across refcount blocks" {
  # 64 clusters per refcount block at 64 bits: 4 MiB writes cross 128 of them.
  new_image rc64 8M cluster_size=512,refcount_bits=64
  model rc64 800 --big-max 4M
  new_image rc1 6M cluster_size=512,refcount_bits=1
  model rc1 800 --big-max 4M
}

@test "4K clusters, refcount_bits=64: multi-megabyte writes across refcount blocks" {
  # 512 clusters (2 MiB) per refcount block.
  new_image a 32M cluster_size=4k,refcount_bits=64
  model a 600 --big-max 8M
}

@test "compat 0.10 (64K, 4K and 512-byte clusters): colliding writers lose no byte" {
  for cs in 64k 4k 512; do
    new_image "v2-$cs" 6M "compat=0.10,cluster_size=$cs"
    model "v2-$cs" 800
  done
}

@test "extended L2, 64K clusters: subcluster read-modify-writes lose no concurrent write" {
  new_image a 16M cluster_size=64k,extended_l2=on
  model a 2000
}

@test "extended L2, 16K and 32K clusters: subcluster read-modify-writes lose no concurrent write" {
  new_image x16 4M cluster_size=16k,extended_l2=on
  model x16 1500
  new_image x32 6M cluster_size=32k,extended_l2=on
  model x32 1500
}

@test "extended L2, 2M clusters (64K subclusters): no lost write" {
  new_image a 32M cluster_size=2M,extended_l2=on
  model a 300
}

@test "extended L2 with 1-bit and 64-bit refcounts: no lost write, check clean" {
  new_image rc1 8M cluster_size=32k,extended_l2=on,refcount_bits=1
  model rc1 1000
  new_image rc64 6M cluster_size=16k,extended_l2=on,refcount_bits=64
  model rc64 1000
}

# models_over_backing BACKING FORMAT SIZE OPTIONS...: for each OPTIONS, a new overlay of SIZE over
# BACKING gets the model run; the backing file never changes.
models_over_backing () {
  local backing=$1 fmt=$2 size=$3 sum opts
  shift 3
  sum=$(md5sum < "$T/$backing")
  for opts in "$@"; do
    rm -f "$T/top.qcow2"
    new_overlay top "$size" "$opts" "$backing" "$fmt"
    model top 700
  done
  [ "$(md5sum < "$T/$backing")" = "$sum" ]
}

@test "qcow2 backing file: writers over backing data lose no byte, backing untouched" {
  "$MT" --fill-raw "$T/base.raw" --size 10M --seed "$SEED"
  qemu-img convert -q -f raw -O qcow2 -o cluster_size=16k "$T/base.raw" "$T/base.qcow2"
  models_over_backing base.qcow2 qcow2 12M \
    cluster_size=64k cluster_size=512 compat=0.10 cluster_size=32k,extended_l2=on
}

@test "raw backing file: writers over backing data lose no byte, backing untouched" {
  "$MT" --fill-raw "$T/base.raw" --size 8M --seed "$SEED"
  models_over_backing base.raw raw 10M cluster_size=4k,refcount_bits=8 compat=0.10,cluster_size=4k \
    cluster_size=64k,extended_l2=on cluster_size=16k,extended_l2=on,refcount_bits=2
}

@test "internal snapshot: shared clusters are copied, the snapshot keeps its bytes" {
  for opts in cluster_size=64k compat=0.10,cluster_size=4k cluster_size=512,refcount_bits=64 \
              cluster_size=32k,extended_l2=on; do
    rm -f "$T/s.qcow2"
    new_image s 6M "$opts"
    with_snapshot s
    model s 700
    snapshot_intact s
  done
}

@test "compressed clusters (64K, 4K compat 0.10, 512 B, extended L2): rewrites lose no byte" {
  for opts in cluster_size=64k compat=0.10,cluster_size=4k cluster_size=512 \
              cluster_size=64k,extended_l2=on; do
    rm -f "$T/c.qcow2"
    new_image c 6M "$opts" -c
    model c 700
  done
}

@test "a disk whose size is not a multiple of the cluster size: the tail cluster too" {
  new_image a $((10 * 1024 * 1024 + 1536)) cluster_size=64k
  model a 800
  new_image x $((6 * 1024 * 1024 + 4608)) cluster_size=32k,extended_l2=on
  model x 800
}

@test "a metadata cache of 4 tables: evictions under colliding writers lose nothing" {
  new_image a 4M cluster_size=512
  model a 800 --cache-size 2048
  new_image x 6M cluster_size=16k,extended_l2=on
  model x 800 --cache-size 65536
}

@test "8 threads without meeting points: no lost write" {
  new_image a 8M cluster_size=64k,extended_l2=on
  model a 600 --threads 8 --free-run
}
