#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-measure against qemu-img measure, and against what rb-convert and rb-create really write.

bats_require_minimum_version 1.5.0
load helpers
load tools-helpers

# The matrix, built once for the suite, in $M; $T is the test's folder.
setup_file () { matrix_setup_file; }
setup () { matrix_setup; }

# What may differ from qemu-img measure, and why: qemu-img's "required" is the
# fully allocated image's metadata (every L2 table of the disk, and refcount
# blocks for every cluster) plus the data; rb-measure's is rb-convert's layout,
# which has only the L2 tables the data needs and refcount blocks for the file
# it writes.  So rb-measure's figure is never above qemu-img's, and at most one
# cluster per L2 table of the disk below it.  "fully-allocated" is the same
# layout in both: equal.  "bitmaps" is 0:
# rb-convert copies no bitmaps (qemu-img's is what convert --bitmaps adds).
# check_measure IMAGE [-o OPTS]: compare, then convert and check the output fits.
check_measure () {
  local img=$1; shift
  local q rb cs l2 slack out
  q=$(cd "$M" && qemu-img measure -O qcow2 --output=json "$@" "$img")
  rb=$(cd "$M" && "$RB_MEASURE" --output=json "$@" "$img")
  [ "$(echo "$rb" | jq '."fully-allocated"')" = "$(echo "$q" | jq '."fully-allocated"')" ] ||
    { echo "$img $*: fully-allocated rb $rb qemu $q"; return 1; }
  [ "$(echo "$rb" | jq 'has("bitmaps")')" = "$(echo "$q" | jq 'has("bitmaps")')" ] &&
    [ "$(echo "$rb" | jq '.bitmaps // 0')" = 0 ] || { echo "$img $*: bitmaps rb $rb qemu $q"; return 1; }
  cs=$(echo " $* " | sed -n 's/.*cluster_size=\([0-9]*\)k.*/\1/p'); cs=$(( ${cs:-64} * 1024 ))
  l2=$(( ($(cd "$M" && qemu-img info --output=json "$img" | jq '."virtual-size"') + cs * cs / 8 - 1) / (cs * cs / 8) ))
  slack=$(( l2 * cs ))
  q=$(echo "$q" | jq .required); rb=$(echo "$rb" | jq .required)
  [ "$rb" -le "$q" ] && [ $((q - rb)) -le "$slack" ] ||
    { echo "$img $*: required rb $rb qemu $q (slack $slack: $l2 L2 tables)"; return 1; }
  out="$T/out.qcow2"
  rm -f "$out"
  (cd "$M" && "$RB_CONVERT" "$@" "$img" "$out")
  qemu_check_clean "$out"
  [ "$(stat -c %s "$out")" -le "$rb" ] || { echo "$img $*: rb-convert wrote $(stat -c %s "$out") > $rb"; return 1; }
  MEASURED=$((MEASURED + 1))
}

@test "rb-measure on every image of the matrix: fully-allocated as qemu-img measure, required within one cluster per L2 table, and rb-convert's output fits" {
  MEASURED=0
  while read -r img; do
    check_measure "$img"
  done < <(make_matrix "$M")
  for img in mix.raw chain/top.qcow2 zstd.qcow2 extl2.qcow2 sparse.raw; do
    check_measure "$img" -o cluster_size=4k
    check_measure "$img" -o cluster_size=2048k,refcount_bits=64
    check_measure "$img" -o compat=0.10,cluster_size=512k
    check_measure "$img" -o refcount_bits=1,cluster_size=1k
  done
  echo "$MEASURED measurements, each converted" >&3
}

@test "rb-measure: rb-convert's exact size when no cluster is all zeros, smaller output with compression" {
  head -c 3M /dev/urandom > "$T/rnd.raw"
  truncate -s 8M "$T/rnd.raw"
  qemu-io -f raw -c 'write -P 7 6M 64k' "$T/rnd.raw" >/dev/null
  for o in cluster_size=64k cluster_size=4k cluster_size=2M compat=0.10; do
    req=$("$RB_MEASURE" --output=json -o "$o" "$T/rnd.raw" | jq .required)
    rm -f "$T/out.qcow2"
    "$RB_CONVERT" -o "$o" "$T/rnd.raw" "$T/out.qcow2"
    [ "$(stat -c %s "$T/out.qcow2")" = "$req" ] || { echo "$o: measured $req, wrote $(stat -c %s "$T/out.qcow2")"; return 1; }
  done
  req=$("$RB_MEASURE" --output=json "$M/mix.raw" | jq .required)
  "$RB_CONVERT" -z zstd "$M/mix.raw" "$T/z.qcow2"
  [ "$(stat -c %s "$T/z.qcow2")" -lt "$req" ]
}

@test "rb-measure --size: the empty image rb-create makes (required) and the preallocated one (fully-allocated)" {
  for args in "--size 4M" "--size 1.5G" "--size 1T" "-o cluster_size=512 --size 100M" "-o compat=0.10 --size 3M" \
              "-o cluster_size=2M,refcount_bits=1 --size 10G"; do
    # shellcheck disable=SC2086
    rb=$("$RB_MEASURE" --output=json $args)
    # shellcheck disable=SC2086
    q=$(qemu-img measure -O qcow2 --output=json $args)
    [ "$(echo "$rb" | jq '."fully-allocated"')" = "$(echo "$q" | jq '."fully-allocated"')" ]
    [ "$(echo "$rb" | jq 'has("bitmaps")')" = false ]
    opts=$(echo "$args" | sed -n 's/-o \([^ ]*\).*/\1/p'); size=${args##* }
    rm -f "$T/e.qcow2" "$T/f.qcow2"
    "$RB_CREATE" -q ${opts:+-o "$opts"} "$T/e.qcow2" "$size"
    [ "$(stat -c %s "$T/e.qcow2")" = "$(echo "$rb" | jq .required)" ]
    case "$size" in 1T|10G|1.5G) continue ;; esac        # too large to write here
    "$RB_CREATE" -q -o "${opts:+$opts,}preallocation=full" "$T/f.qcow2" "$size"
    [ "$(stat -c %s "$T/f.qcow2")" = "$(echo "$rb" | jq '."fully-allocated"')" ]
    qemu_check_clean "$T/f.qcow2"
  done
}

@test "rb-measure -O raw and the human output are qemu-img measure's; bad arguments are usage errors" {
  for args in "-O raw --size 1000" "-O raw $M/chain/top.qcow2" "-O raw $M/sparse.raw"; do
    # shellcheck disable=SC2086
    [ "$("$RB_MEASURE" --output=json $args | jq -S .)" = "$(qemu-img measure --output=json $args | jq -S .)" ]
  done
  for args in "$M/mix.raw" "$M/sparse.raw" "--size 64M" "-O raw --size 1M"; do
    # shellcheck disable=SC2086
    [ "$("$RB_MEASURE" $args | cut -d: -f1)" = "$(qemu-img measure -O qcow2 $args | cut -d: -f1)" ]
  done
  [ "$("$RB_MEASURE" "$M/snap.qcow2")" = "$(printf 'required size: %s\nfully allocated size: %s\nbitmaps size: 0' \
      "$("$RB_MEASURE" --output=json "$M/snap.qcow2" | jq .required)" \
      "$("$RB_MEASURE" --output=json "$M/snap.qcow2" | jq '."fully-allocated"')")" ]
  run --separate-stderr "$RB_MEASURE" --size 1M "$M/mix.raw"
  [ "$status" -eq 1 ] && [[ "$stderr" == *"--size and a SOURCE"* ]]
  run --separate-stderr "$RB_MEASURE" -O vmdk --size 1M
  [ "$status" -eq 1 ]
  run --separate-stderr "$RB_MEASURE" -o extended_l2=on --size 1M
  [ "$status" -eq 1 ] && [[ "$stderr" == *extended_l2* ]]
  run --separate-stderr "$RB_MEASURE" --size 1.5
  [ "$status" -eq 1 ]
  run --separate-stderr "$RB_MEASURE" "$T/missing.raw"
  [ "$status" -eq 2 ] && [[ "$stderr" == *missing.raw* ]]
}
