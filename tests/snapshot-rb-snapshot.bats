#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-snapshot against qemu-img snapshot on twin images; QEMU and rblock apply each other's
# snapshots; killed at every write the image is the old or the new one; bad input leaves it as is.

load helpers
load chain-helpers

RBS="$top_builddir/utils/rb-snapshot"

# snap_list IMG: id, name, VM state size and disk size of each snapshot (no dates).
snap_list () {
  qemu-img info -U --output=json "$1" | jq -c '[.snapshots[]? | [.id, .name, .["vm-state-size"]]]'
}

# twin_run OPTS: the same create/write/apply/delete sequence through rb-snapshot
# on A and qemu-img snapshot on B; after each step the views, the snapshot
# views and the snapshot lists agree and both images check clean.
twin_run () {
  local T="$BATS_TEST_TMPDIR" step
  mk_image "$T/a.qcow2" 8M "$1"
  cp "$T/a.qcow2" "$T/b.qcow2"
  for step in "-c one" "W 0x66 0 100k" "-c two" "W 0x77 2M 70k" "-a one" "W 0x88 1M 4k" \
              "-c three" "-d two" "-a three" "-d one" "-d three"; do
    set -- $step
    if [ "$1" = W ]; then
      qemu-io -c "write -P $2 $3 $4" "$T/a.qcow2" >/dev/null
      qemu-io -c "write -P $2 $3 $4" "$T/b.qcow2" >/dev/null
    else
      "$RBS" "$1" "$2" "$T/a.qcow2"
      qemu-img snapshot "$1" "$2" "$T/b.qcow2"
    fi
    qemu_check_clean "$T/a.qcow2" || { echo "after $step"; return 1; }
    qemu-img compare -q "$T/a.qcow2" "$T/b.qcow2" || { echo "views differ after $step"; return 1; }
    [ "$(snap_list "$T/a.qcow2")" = "$(snap_list "$T/b.qcow2")" ] ||
      { echo "lists differ after $step"; snap_list "$T/a.qcow2"; snap_list "$T/b.qcow2"; return 1; }
    for s in $(qemu-img info --output=json "$T/b.qcow2" | jq -r '.snapshots[]?.name'); do
      qemu-img convert -l "snapshot.name=$s" -O raw "$T/a.qcow2" "$T/sa.raw"
      qemu-img convert -l "snapshot.name=$s" -O raw "$T/b.qcow2" "$T/sb.raw"
      cmp "$T/sa.raw" "$T/sb.raw" || { echo "snapshot $s differs after $step"; return 1; }
    done
  done
  [ "$(qemu-img info --output=json "$T/a.qcow2" | jq '.snapshots | length')" = null ] ||
    [ "$(qemu-img info --output=json "$T/a.qcow2" | jq '.snapshots | length')" = 0 ]
}

@test "rb-snapshot -c/-a/-d match qemu-img snapshot on a twin (64K clusters, compressed data)" {
  twin_run ""
}

@test "rb-snapshot matches qemu-img snapshot: 4K clusters, version 2, 64-bit refcounts" {
  twin_run cluster_size=4096
  twin_run compat=0.10
  twin_run refcount_bits=64,cluster_size=16384
}

@test "rb-snapshot matches qemu-img snapshot: extended L2 entries, 512-byte clusters" {
  twin_run extended_l2=on
  twin_run cluster_size=512
}

@test "QEMU applies a snapshot rblock took, rblock applies one QEMU took" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/a.qcow2" 8M
  qemu-img convert -O raw "$T/a.qcow2" "$T/then.raw"
  "$RBS" -c rb "$T/a.qcow2"
  qemu-io -c 'write -P 0x99 0 1M' -c 'write -z 2M 64k' "$T/a.qcow2" >/dev/null
  qemu-img convert -O raw "$T/a.qcow2" "$T/now.raw"
  qemu-img snapshot -c qemu "$T/a.qcow2"
  qemu-io -c 'write -P 0xaa 512k 1M' "$T/a.qcow2" >/dev/null
  qemu-img snapshot -a rb "$T/a.qcow2"
  qemu_check_clean "$T/a.qcow2"
  qemu-img compare "$T/then.raw" "$T/a.qcow2"
  "$RBS" -a qemu "$T/a.qcow2"
  qemu_check_clean "$T/a.qcow2"
  qemu-img compare "$T/now.raw" "$T/a.qcow2"
  # Either tool deletes the other's snapshot.
  qemu-img snapshot -d rb "$T/a.qcow2"
  "$RBS" -d qemu "$T/a.qcow2"
  qemu_check_clean "$T/a.qcow2"
  qemu-img compare "$T/now.raw" "$T/a.qcow2"
}

@test "rb-snapshot -l prints qemu-img's list; --output=json has qemu-img info's keys and values" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/a.qcow2" 4M
  qemu-img snapshot -c first "$T/a.qcow2"
  "$RBS" -c "second one" "$T/a.qcow2"
  run "$RBS" -l "$T/a.qcow2"
  [ "$status" -eq 0 ]
  [ "$output" = "$(qemu-img snapshot -l "$T/a.qcow2")" ]
  run "$RBS" -l --output=json "$T/a.qcow2"
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq -S .)" = "$(qemu-img info --output=json "$T/a.qcow2" | jq -S .snapshots)" ]
  # While qemu-io has the image open for writing: -l fails on the lock, -l -U lists.
  qemu_io_hold "$T/a.qcow2"
  run "$RBS" -l "$T/a.qcow2"
  [ "$status" -eq 1 ]
  run "$RBS" -l -U "$T/a.qcow2"
  qemu_io_release
  [ "$status" -eq 0 ]
  [[ "$output" == *"second one"* ]]
}

@test "rb-snapshot create, apply and delete killed at every write: old or new state, never corrupt" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/img.qcow2" 4M cluster_size=4096
  qemu-img snapshot -c base "$T/img.qcow2"
  qemu-io -c 'write -P 0x99 0 20k' -c 'write -P 0x98 1M 4k' "$T/img.qcow2" >/dev/null
  crash_loop "$T/img.qcow2" "$RBS" -c taken "$T/img.qcow2"
  qemu-io -c 'write -P 0x97 8k 12k' "$T/img.qcow2" >/dev/null
  crash_loop "$T/img.qcow2" "$RBS" -a base "$T/img.qcow2"
  crash_loop "$T/img.qcow2" "$RBS" -d taken "$T/img.qcow2"
  crash_loop "$T/img.qcow2" "$RBS" -d base "$T/img.qcow2"
}

@test "rb-snapshot killed at every write on 512-byte clusters with extended-L2-free refcount growth" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/img.qcow2" 4M cluster_size=512,refcount_bits=8
  crash_loop "$T/img.qcow2" "$RBS" -c s "$T/img.qcow2"
  qemu-io -c 'write -P 0x99 0 20k' "$T/img.qcow2" >/dev/null
  crash_loop "$T/img.qcow2" "$RBS" -d s "$T/img.qcow2"
}

@test "bad snapshot names: one-line error, exit 1 as qemu-img, image untouched" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/a.qcow2" 4M
  "$RBS" -c s1 "$T/a.qcow2"
  untouched_after "$T/a.qcow2" "$RBS" -a nope "$T/a.qcow2"
  [[ "$output" == *"no snapshot"*nope* ]]
  run qemu-img snapshot -a nope "$T/a.qcow2"
  [ "$status" -eq 1 ]
  untouched_after "$T/a.qcow2" "$RBS" -d nope "$T/a.qcow2"
  untouched_after "$T/a.qcow2" "$RBS" -c s1 "$T/a.qcow2"
  [[ "$output" == *"already exists"* ]]
  untouched_after "$T/a.qcow2" "$RBS" -c "$(printf 'x%.0s' $(seq 256))" "$T/a.qcow2"
  [[ "$output" == *"too long"* ]]
  untouched_after "$T/a.qcow2" "$RBS" -c s2 "$T/missing.qcow2"
  run "$RBS" "$T/a.qcow2"
  [ "$status" -eq 1 ]
  qemu_check_clean "$T/a.qcow2"
}

@test "a snapshot needs refcounts wider than 1 bit: refused, image untouched" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/a.qcow2" 4M refcount_bits=1
  untouched_after "$T/a.qcow2" "$RBS" -c s "$T/a.qcow2"
  [[ "$output" == *refcount* ]]
}
