#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Colliding NBD clients over the format matrix: 4 connections to one nbdkit (multi-conn), 32
# requests in flight each, write, zero, trim, flush, FUA and read interleaved bytes of the same
# clusters and subclusters (tests/plugin-model.py); every byte read equals the model, and after
# the server stops qemu-img check is clean, the image is not marked corrupt and qemu-img's raw
# view equals the model.  PLUGIN_MODEL_SEED=N repeats a run, PLUGIN_MODEL_SCALE=P runs P% of
# the requests.

load helpers
load model-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  SEED=${PLUGIN_MODEL_SEED:-$(( (RANDOM << 15) | RANDOM ))}
  SCALE=${PLUGIN_MODEL_SCALE:-100}
}

teardown () {
  stop_rblock
}

# plugin_model ARGS...: the driver, with the system python (it has python3-libnbd).
plugin_model () { /usr/bin/python3 "$top_srcdir/tests/plugin-model.py" "$@"; }

# geometry IMAGE [discard-ignored]: the driver's options for IMAGE (from qemu-img info): its
# cluster and subcluster size, what a trim does (lib/zero.c rb_trim: zeros the whole clusters it
# covers; nothing on compat 0.10 over a backing file or with discard=ignore) and whether a fast
# zero is refused (compat 0.10 over a backing file).
geometry () {
  local info cs sc v2_backing
  info=$(qemu-img info -U --output=json "$1")
  cs=$(jq '."cluster-size"' <<< "$info")
  sc=$cs
  if [ "$(jq '."format-specific".data."extended-l2" // false' <<< "$info")" = true ]; then
    sc=$((cs / 32))
  fi
  v2_backing=$(jq '."format-specific".data.compat == "0.10" and has("backing-filename")' <<< "$info")
  echo --cluster-size "$cs" --subcluster-size "$sc" \
    --trim "$([ "$v2_backing" = true ] || [ "${2:-}" = discard-ignored ] && echo none || echo clusters)" \
    --fast-zero "$([ "$v2_backing" = true ] && echo refused || echo yes)"
}

# drive NAME MODE URI DRIVER-OPTIONS...: the driver against URI serving $T/NAME.qcow2, which
# must read as $T/NAME.start now; the model goes to $T/NAME.expect.  On failure: what repeats it.
drive () {
  local name=$1 mode=$2 uri=$3
  shift 3
  if ! plugin_model "$mode" "$uri" "$T/$name.start" "$T/$name.expect" --seed "$SEED" \
       --wait "$RB_WAIT" "$@" > "$T/$name.out" 2>&1; then
    cat "$T/$name.out"
    echo "same images and requests again (in the build tree):" \
      "make check TESTS=plugin-model.bats PLUGIN_MODEL_SEED=$SEED PLUGIN_MODEL_SCALE=$SCALE"
    echo "nbdkit's stderr:"; tail -20 "$T/nbdkit.err"
    return 1
  fi
  cat "$T/$name.out"
}

# judge NAME: after the server stopped, qemu-img's verdict on $T/NAME.qcow2: check clean, not
# marked corrupt, raw view equal to the model.
judge () {
  local img="$T/$1.qcow2"
  qemu_check_clean "$img"
  qemu-img info --output=json "$img" | jq -e '."format-specific".data.corrupt != true' > /dev/null
  qemu-img convert -O raw "$img" "$T/$1.end"
  cmp "$T/$1.end" "$T/$1.expect"
  rm -f "$T/$1.end" "$T/$1.expect"
}

# scaled OPS: OPS requests per connection, scaled by PLUGIN_MODEL_SCALE (at least 1).
scaled () {
  local n=$(( $1 * SCALE / 100 ))
  echo $(( n > 0 ? n : 1 ))
}

# model NAME OPS [PLUGIN-PARAMETERS...] [-- DRIVER-OPTIONS...]: serve $T/NAME.qcow2, 4
# connections x OPS requests (scaled), stop the server, judge.
model () {
  local name=$1 ops=$2 params=() ignored="" geo
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    [ "$1" != discard=ignore ] || ignored=discard-ignored
    params+=("$1")
    shift
  done
  [ $# -eq 0 ] || shift
  geo=$(geometry "$T/$name.qcow2" $ignored)
  qemu-img convert -U -O raw "$T/$name.qcow2" "$T/$name.start"
  start_rblock "$T/$name.qcow2" "${params[@]}"
  # shellcheck disable=SC2086  # geo is a list of options
  drive "$name" run "$URI" --ops "$(scaled "$ops")" $geo "$@"
  stop_rblock
  judge "$name"
}

# fresh NAME SIZE QEMU-IMG-OPTIONS OPS [PLUGIN-PARAMETERS...] [-- DRIVER-OPTIONS...]: a new
# image with known data, then model.
fresh () {
  new_image "$1" "$2" "$3"
  local name=$1 ops=$4
  shift 4
  model "$name" "$ops" "$@"
}

@test "64K clusters, compat 1.1: colliding clients lose no byte" {
  fresh a 16M cluster_size=64k 1500
}

@test "512-byte clusters, refcount_bits=1: colliding clients lose no byte across many L2 tables" {
  fresh a 4M cluster_size=512,refcount_bits=1 1500
}

@test "4K clusters, refcount_bits=64: writes up to 4 MiB across refcount blocks lose no byte" {
  # 512 clusters (2 MiB) per refcount block.
  fresh a 16M cluster_size=4k,refcount_bits=64 1200 -- --big-max 4194304
}

@test "2M clusters: colliding clients lose no byte" {
  fresh a 32M cluster_size=2M 500
}

@test "compat 0.10, 64K and 4K clusters: colliding clients lose no byte" {
  fresh v64 8M compat=0.10,cluster_size=64k 1000
  fresh v4 4M compat=0.10,cluster_size=4k 1000
}

@test "extended L2, 64K clusters: subcluster read-modify-writes lose no concurrent write" {
  fresh a 16M cluster_size=64k,extended_l2=on 1500
}

@test "extended L2, 16K and 2M clusters (512-byte and 64K subclusters): no lost write" {
  fresh x16 4M cluster_size=16k,extended_l2=on 1000
  fresh x2m 32M cluster_size=2M,extended_l2=on 500
}

@test "issue 13's pattern over NBD: 64 pairs of zero(512, k*64K) and pwrite(k*64K+1024) in flight, 1000 rounds, extended L2" {
  new_image p 8M cluster_size=64k,extended_l2=on
  qemu-img convert -U -O raw "$T/p.qcow2" "$T/p.start"
  start_rblock "$T/p.qcow2"
  # shellcheck disable=SC2046
  drive p pairs "$URI" --rounds "$(scaled 1000)" $(geometry "$T/p.qcow2")
  stop_rblock
  judge p
}

@test "qcow2 backing file (extended L2 and compat 0.10 overlays): backing data kept, backing untouched" {
  "$MT" --fill-raw "$T/base.raw" --size 10M --seed "$((SEED + 1))"
  qemu-img convert -q -f raw -O qcow2 -o cluster_size=16k "$T/base.raw" "$T/base.qcow2"
  local sum
  sum=$(md5sum < "$T/base.qcow2")
  new_overlay x 12M cluster_size=32k,extended_l2=on "$T/base.qcow2" qcow2
  model x 1000
  # compat 0.10 over a backing file: a trim does nothing, a fast zero is refused.
  new_overlay v2 12M compat=0.10,cluster_size=64k "$T/base.qcow2" qcow2
  model v2 1000
  [ "$(md5sum < "$T/base.qcow2")" = "$sum" ]
}

@test "raw backing file (64K clusters, refcount_bits=16): backing data kept, backing untouched" {
  "$MT" --fill-raw "$T/base.raw" --size 8M --seed "$((SEED + 1))"
  local sum
  sum=$(md5sum < "$T/base.raw")
  new_overlay r 10M cluster_size=64k "$T/base.raw" raw
  model r 1200
  [ "$(md5sum < "$T/base.raw")" = "$sum" ]
}

@test "internal snapshot taken before the run: shared clusters are copied, the snapshot keeps its bytes" {
  for opts in cluster_size=64k cluster_size=32k,extended_l2=on; do
    rm -f "$T/s.qcow2"
    new_image s 6M "$opts"
    qemu-img snapshot -c before "$T/s.qcow2"
    model s 1000
    qemu-img convert -l snapshot.name=before -O raw "$T/s.qcow2" "$T/snap.raw"
    cmp "$T/snap.raw" "$T/s.start"
  done
}

@test "compressed images and a metadata cache of two tables: rewrites and evictions lose no byte" {
  new_image c4 6M cluster_size=4k -c
  model c4 800 metadata-cache=8K
  new_image cx 6M cluster_size=32k,extended_l2=on -c
  model cx 800 metadata-cache=64K
}

@test "detect-zeroes=unmap discard=unmap: all-zero writes become zeros that may free, no byte lost" {
  fresh a 8M cluster_size=64k,extended_l2=on 1200 detect-zeroes=unmap discard=unmap
}

@test "cache=none discard=ignore: no byte lost, trims do nothing" {
  fresh a 8M cluster_size=4k 1200 cache=none discard=ignore
}

@test "dir=: two images served at once, 4 connections each, both equal their models" {
  mkdir "$T/d"
  new_image a 6M cluster_size=4k
  new_image b 8M cluster_size=128k,extended_l2=on
  local x geo_a geo_b pa pb
  for x in a b; do
    mv "$T/$x.qcow2" "$T/d/$x.qcow2"
    qemu-img convert -U -O raw "$T/d/$x.qcow2" "$T/$x.start"
  done
  geo_a=$(geometry "$T/d/a.qcow2")
  geo_b=$(geometry "$T/d/b.qcow2")
  start_nbdkit "$RBLOCK_SO" dir="$T/d"
  # shellcheck disable=SC2086
  drive a run "nbd+unix:///a.qcow2?socket=$SOCK" --ops "$(scaled 1000)" $geo_a & pa=$!
  # shellcheck disable=SC2086
  drive b run "nbd+unix:///b.qcow2?socket=$SOCK" --ops "$(scaled 1000)" $geo_b & pb=$!
  wait "$pa"
  wait "$pb"
  stop_rblock
  for x in a b; do
    mv "$T/d/$x.qcow2" "$T/$x.qcow2"
    judge "$x"
  done
}
