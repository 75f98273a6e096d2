#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-commit against qemu-img commit on twin chains (qcow2 and raw bases, a smaller base,
# -d, -b deeper); rb-delta increments committed into the full backup equal the final disk;
# killed at every write the top image reads the same and both check clean; bad input.

load helpers
load chain-helpers

RBC="$top_builddir/utils/rb-commit"

# mk_top DIR BASE TOP [OPTS [SIZE]]: DIR/TOP over DIR/BASE (stored relative, so the
# folder can be copied) with data and zero ranges.
mk_top () {
  local fmt
  fmt=$(qemu-img info --output=json "$1/$2" | jq -r .format)
  qemu-img create -q -f qcow2 -b "$2" -F "$fmt" ${4:+-o "$4"} "$1/$3" ${5:-}
  qemu-io -c 'write -P 0x71 64k 200k' -c 'write -z 1M 128k' -c 'write -P 0x72 2M 4k' \
    -c 'write -z 3M 8k' "$1/$3" >/dev/null
}

# twin_commit BASE_KIND TOP_OPTS [TOP_SIZE] [rb-commit options]: the same chain committed
# by rb-commit (a) and qemu-img commit (b): bases equal TOP's old view, tops agree.
twin_commit () {
  local T="$BATS_TEST_TMPDIR" kind=$1 opts=$2 size=${3:-} o
  rm -rf "$T/a" "$T/b"; mkdir -p "$T/a" "$T/b"
  if [ "$kind" = raw ]; then
    head -c 4M /dev/urandom > "$T/a/base"
  else
    mk_image "$T/a/base" 4M "$kind"
  fi
  mk_top "$T/a" base top.qcow2 "$opts" "$size"
  cp "$T/a/base" "$T/a/top.qcow2" "$T/b/"
  qemu-img convert -O raw "$T/a/top.qcow2" "$T/want.raw"
  "$RBC" -q "${@:4}" "$T/a/top.qcow2"
  qemu-img commit -q "${@:4}" "$T/b/top.qcow2"
  for o in a b; do
    [ "$kind" = raw ] || qemu_check_clean "$T/$o/base"
    qemu_check_clean "$T/$o/top.qcow2"
  done
  if [ "$kind" = raw ]; then
    cmp "$T/a/base" "$T/b/base"
  else
    qemu-img compare "$T/a/base" "$T/b/base"
  fi
  qemu-img compare "$T/want.raw" "$T/a/top.qcow2"
  qemu-img compare "$T/a/top.qcow2" "$T/b/top.qcow2"
  # TOP holds as many bytes itself (0 once emptied) as after qemu-img commit.
  [ "$(qemu-img map --output=json "$T/a/top.qcow2" | jq '[.[] | select(.depth == 0) | .length] | add')" = \
    "$(qemu-img map --output=json "$T/b/top.qcow2" | jq '[.[] | select(.depth == 0) | .length] | add')" ]
}

# twin_commit_b: the chain in $T/a copied to $T/b, committed down to base.qcow2 by
# rb-commit -b (a) and qemu-img commit -b (b); $T/want.raw is TOP's old view, and each base
# checks clean and equals it.
twin_commit_b () {
  local T="$BATS_TEST_TMPDIR" o
  cp "$T/a/"* "$T/b/"
  qemu-img convert -O raw "$T/a/top.qcow2" "$T/want.raw"
  "$RBC" -q -b "$T/a/base.qcow2" "$T/a/top.qcow2"
  qemu-img commit -q -b "$T/b/base.qcow2" "$T/b/top.qcow2"
  for o in a b; do
    qemu_check_clean "$T/$o/base.qcow2"
    qemu-img compare "$T/want.raw" "$T/$o/base.qcow2"
  done
}

@test "rb-commit matches qemu-img commit: qcow2 and raw bases, extended L2 and version 2 tops" {
  twin_commit "" ""
  twin_commit raw ""
  twin_commit "" extended_l2=on
  twin_commit compat=0.10 compat=0.10
  twin_commit cluster_size=4096 cluster_size=512
}

@test "rb-commit grows a smaller base (qcow2 and raw), as qemu-img commit" {
  twin_commit "" "" 6M
  twin_commit raw "" 6M
}

@test "rb-commit -d keeps TOP; the committed base equals TOP's view" {
  local T="$BATS_TEST_TMPDIR"
  twin_commit "" "" "" -d
  # TOP still holds its clusters.
  [ "$(qemu-img map --output=json "$T/a/top.qcow2" | jq '[.[] | select(.depth == 0)] | length')" -gt 0 ]
  qemu-img compare "$T/want.raw" "$T/a/base"
}

@test "rb-commit -b BASE commits the chain above BASE into it and keeps TOP (as qemu-img)" {
  local T="$BATS_TEST_TMPDIR" o
  mkdir -p "$T/a" "$T/b"
  mk_image "$T/a/base.qcow2" 4M
  mk_top "$T/a" base.qcow2 mid.qcow2
  qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$T/a/top.qcow2"
  qemu-io -c 'write -P 0x73 100k 300k' -c 'write -z 2M 64k' "$T/a/top.qcow2" >/dev/null
  twin_commit_b
  for o in a b; do
    qemu_check_clean "$T/$o/top.qcow2"
    qemu-img compare "$T/want.raw" "$T/$o/top.qcow2"
  done
  cmp "$T/a/top.qcow2" "$T/b/top.qcow2" || qemu-img compare "$T/a/top.qcow2" "$T/b/top.qcow2"
}

@test "a data cluster cut short by the end of TOP's file (rblock writes only the guest's bytes) commits as TOP's view, as qemu-img" {
  local T="$BATS_TEST_TMPDIR"
  mkdir -p "$T/a" "$T/b"
  qemu-img create -q -f qcow2 "$T/a/base.qcow2" 4M
  qemu-io -c 'write -P 0x61 0 4M' "$T/a/base.qcow2" >/dev/null
  # mid zeroes cluster 1; TOP's write there has nothing below, so the plugin writes 4 KiB
  # into a fresh cluster at the end of the file: the file ends inside that cluster.
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/a/mid.qcow2"
  qemu-io -c 'write -z 64k 64k' "$T/a/mid.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$T/a/top.qcow2"
  start_rblock "$T/a/top.qcow2"
  qemu-io -f raw -c 'write -P 0x62 68k 4k' "$URI" >/dev/null
  stop_rblock
  host=$(qemu-img map --output=json "$T/a/top.qcow2" | jq '.[] | select(.start == 65536 and .depth == 0) | .offset')
  [ $(( $(stat -c %s "$T/a/top.qcow2") - host )) -lt 65536 ]
  twin_commit_b
}

@test "a chain of rb-delta increments committed into the full backup equals the final disk" {
  local T="$BATS_TEST_TMPDIR" d
  truncate -s 8M "$T/day0.raw"
  dd if=/dev/urandom of="$T/day0.raw" bs=64k count=60 conv=notrunc status=none
  cp "$T/day0.raw" "$T/day1.raw"
  dd if=/dev/urandom of="$T/day1.raw" bs=4k count=10 seek=100 conv=notrunc status=none
  dd if=/dev/zero of="$T/day1.raw" bs=64k count=3 seek=20 conv=notrunc status=none
  cp "$T/day1.raw" "$T/day2.raw"
  dd if=/dev/urandom of="$T/day2.raw" bs=64k count=5 seek=110 conv=notrunc status=none
  dd if=/dev/urandom of="$T/day2.raw" bs=512 count=3 seek=7 conv=notrunc status=none
  "$top_builddir/utils/rb-convert" "$T/day0.raw" "$T/full.qcow2"
  "$top_builddir/utils/rb-delta" --relative "$T/full.qcow2" "$T/day1.raw" "$T/inc1.qcow2"
  "$top_builddir/utils/rb-delta" --relative "$T/inc1.qcow2" "$T/day2.raw" "$T/inc2.qcow2"
  qemu-img compare "$T/day2.raw" "$T/inc2.qcow2"
  "$RBC" -q "$T/inc2.qcow2"
  qemu-img compare "$T/day2.raw" "$T/inc1.qcow2"
  "$RBC" -q "$T/inc1.qcow2"
  qemu-img compare "$T/day2.raw" "$T/full.qcow2"
  for d in full inc1 inc2; do qemu_check_clean "$T/$d.qcow2"; done
  # The same in one step from the newest increment.
  "$top_builddir/utils/rb-convert" --force "$T/day0.raw" "$T/full.qcow2"
  "$top_builddir/utils/rb-delta" --force --relative "$T/full.qcow2" "$T/day1.raw" "$T/inc1.qcow2"
  "$top_builddir/utils/rb-delta" --force --relative "$T/inc1.qcow2" "$T/day2.raw" "$T/inc2.qcow2"
  "$RBC" -q -b "$T/full.qcow2" "$T/inc2.qcow2"
  qemu-img compare "$T/day2.raw" "$T/full.qcow2"
  qemu_check_clean "$T/full.qcow2"
}

# After a kill the base is partly committed (as with qemu-img): TOP's view and
# both checks are what must hold, and a rerun finishes.
@test "rb-commit killed at every write: TOP reads the same, both images check clean" {
  local T="$BATS_TEST_TMPDIR" n total torn
  mk_image "$T/cx-base.qcow2" 4M cluster_size=4096
  mk_top "$T" cx-base.qcow2 cx-top.qcow2 cluster_size=4096 5M
  qemu-img convert -O raw "$T/cx-top.qcow2" "$T/want.raw"
  cp "$T/cx-base.qcow2" "$T/base.orig"; cp "$T/cx-top.qcow2" "$T/top.orig"
  RB_CRASH_FILE=cx- RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" "$RBC" -q "$T/cx-top.qcow2"
  total=$(cat "$T/count")
  [ "$total" -gt 5 ]
  for n in $(seq 1 "$total"); do
    for torn in "" 1; do
      cp "$T/base.orig" "$T/cx-base.qcow2"; cp "$T/top.orig" "$T/cx-top.qcow2"
      run env RB_CRASH_FILE=cx- RB_CRASH_AT="$n" ${torn:+RB_CRASH_TORN=1} LD_PRELOAD="$SHIM" \
        "$RBC" -q "$T/cx-top.qcow2"
      [ "$status" -eq 137 ] || { echo "write $n: not killed ($status): $output"; return 1; }
      check_ok "$T/cx-base.qcow2" || { echo "base after write $n${torn:+ torn}"; return 1; }
      check_ok "$T/cx-top.qcow2" || { echo "top after write $n${torn:+ torn}"; return 1; }
      qemu-img compare -q "$T/want.raw" "$T/cx-top.qcow2" ||
        { echo "write $n${torn:+ torn}: TOP's view changed"; return 1; }
      # Running it again finishes the job.
      "$RBC" -q "$T/cx-top.qcow2"
      qemu-img compare -q "$T/want.raw" "$T/cx-base.qcow2" ||
        { echo "write $n${torn:+ torn}: the rerun did not commit"; return 1; }
    done
  done
  echo "# rb-commit: killed at each of $total writes (whole and torn)" >&3
}

@test "bad input: no backing file, BASE not in the chain, base in use: one-line error, exit 1, untouched" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/base.qcow2" 4M
  mk_top "$T" base.qcow2 top.qcow2
  untouched_after "$T/base.qcow2" "$RBC" "$T/base.qcow2"
  [[ "$output" == *"no backing file"* ]]
  run qemu-img commit "$T/base.qcow2"
  [ "$status" -eq 1 ]
  mk_image "$T/other.qcow2" 4M
  untouched_after "$T/top.qcow2" "$RBC" -b "$T/other.qcow2" "$T/top.qcow2"
  [[ "$output" == *"not in the backing chain"* ]]
  untouched_after "$T/top.qcow2" "$RBC" -b "$T/missing.qcow2" "$T/top.qcow2"
  # The base open for writing by qemu-io: refused before anything is written.
  cp "$T/base.qcow2" "$T/base.before"
  qemu_io_hold "$T/base.qcow2"
  run "$RBC" "$T/top.qcow2"
  qemu_io_release
  [ "$status" -eq 1 ]
  [[ "$output" == *"in use"* ]] || [[ "$output" == *lock* ]]
  cmp "$T/base.qcow2" "$T/base.before"
  qemu_check_clean "$T/top.qcow2"
}
