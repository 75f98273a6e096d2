#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-delta --bitmap: incremental backups from a dirty bitmap, offline (a qcow2 holding it) and
# live (qemu-nbd -B); OUTPUT equals NEW through the chain, holds exactly the dirty clusters,
# equals the full-scan delta; chains of increments restore; every error refused before OUTPUT
# exists; --clear-bitmap only after OUTPUT is in place, killed at every write.

load helpers
load bitmap-helpers

bats_require_minimum_version 1.5.0

RB_DELTA="$top_builddir/utils/rb-delta"
RB_CONVERT="$top_builddir/utils/rb-convert"
SHIM="$top_builddir/tests/.libs/crashshim.so"

setup () {
  T="$BATS_TEST_TMPDIR"
  QPID=
}

teardown () {
  stop_qnbd
}

# start_qnbd IMAGE NAME [SHARED]: qemu-nbd -r -B NAME on $T/q.sock; sets QURI.
start_qnbd () {
  rm -f "$T/q.sock" "$T/q.pid"
  qemu-nbd -r -B "$2" -f qcow2 -k "$T/q.sock" --shared="${3:-1}" --persistent --fork \
    --pid-file="$T/q.pid" "$1"
  QPID=$(cat "$T/q.pid")
  QURI="nbd+unix:///?socket=$T/q.sock"
}

stop_qnbd () {
  [ -n "${QPID:-}" ] || return 0
  kill "$QPID" 2>/dev/null || true
  wait_until 30 "qemu-nbd $QPID to exit" bash -c "! kill -0 $QPID 2>/dev/null"
  QPID=
}

# make_disk SIZE [CLUSTER_SIZE]: $T/base.qcow2 with data everywhere it matters, $T/new.qcow2 on
# top of it (a chain) with bitmap b0 (4K), then QEMU's random writes, zeros and discards.
make_disk () {
  qemu-img create -q -f qcow2 "$T/base.qcow2" "$1"
  qemu-io -c "write -P 1 0 $1" "$T/base.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 ${2:+-o cluster_size=$2} "$T/new.qcow2"
  qemu-img bitmap --add -g 4K "$T/new.qcow2" b0
  scribble "$T/new.qcow2" 1
}

# scribble IMAGE SEED: QEMU writes, zeros and discards at pseudo-random places (bitmaps record them).
scribble () {
  local size args=() i off len
  size=$(qemu-img info --output=json "$1" | jq '."virtual-size"')
  RANDOM=$2
  for i in $(seq 30); do
    off=$(( (RANDOM * 32768 + RANDOM) % size / 512 * 512 ))
    len=$(( (RANDOM % 200 + 1) * 512 ))
    [ $((off + len)) -le "$size" ] || len=$((size - off))
    case $((i % 5)) in
      0) args+=(-c "write -z $off $len") ;;
      1) args+=(-c "discard $off $len") ;;
      *) args+=(-c "write -P $((i + 2)) $off $len") ;;
    esac
  done
  qemu-io "${args[@]}" "$1" >/dev/null
}

# assert_exact_delta OUTPUT NEW CLUSTER: OUTPUT equals NEW through its chain, checks clean, and
# what it holds itself (depth 0, data or zero) is exactly b0's dirty set rounded to CLUSTER.
assert_exact_delta () {
  local out=$1 new=$2 cs=$3 size
  qemu-img compare -q "$new" "$out"
  qemu_check_clean "$out"
  size=$(qemu-img info --output=json "$new" | jq '."virtual-size"')
  qemu_dirty "$new" b0 > "$T/dirty"
  [ -s "$T/dirty" ]
  bitmap_io expect "$size" "$cs" - "$T/dirty" > "$T/want"
  qemu-img map --output=json "$out" | jq -r '.[] | select(.depth == 0) | "\(.start) \(.length) 1"' |
    bitmap_io dirty > "$T/got"
  diff "$T/want" "$T/got"
}

@test "offline: OUTPUT equals NEW through the chain and holds exactly the dirty clusters (64K, 4K, extended L2)" {
  make_disk 48M
  for opts in "" "-c 4K" "-c 512" "--extended-l2 -c 128K"; do
    rm -f "$T/out.qcow2"
    "$RB_DELTA" --bitmap b0 $opts "$T/base.qcow2" "$T/new.qcow2" "$T/out.qcow2"
    case "$opts" in
      "") cs=65536 ;; "-c 4K") cs=4096 ;; "-c 512") cs=512 ;; *) cs=4096 ;;   # subclusters
    esac
    assert_exact_delta "$T/out.qcow2" "$T/new.qcow2" "$cs"
    [ "$(qemu-img info --output=json "$T/out.qcow2" | jq -r '."backing-filename"')" = "$T/base.qcow2" ]
  done
  # The zeros QEMU wrote are zero clusters, never data.
  [ "$(qemu-img map --output=json "$T/out.qcow2" | jq '[.[] | select(.depth == 0 and .zero)] | length')" -gt 0 ]
}

@test "offline, compat 0.10: dirty zeros are allocated zeros (no zero flag), the rest as above" {
  make_disk 16M
  "$RB_DELTA" --bitmap b0 --compat 0.10 "$T/base.qcow2" "$T/new.qcow2" "$T/out.qcow2"
  assert_exact_delta "$T/out.qcow2" "$T/new.qcow2" 65536
  [ "$(qemu-img info --output=json "$T/out.qcow2" | jq -r '."format-specific".data.compat')" = 0.10 ]
}

@test "offline: another bitmap whose data cluster is outside the file does not stop the delta from b0" {
  make_disk 16M
  qemu-img bitmap --add "$T/new.qcow2" other
  scribble "$T/new.qcow2" 2
  patch_bitmap "$T/new.qcow2" other data 0x7fff0000
  "$RB_DELTA" --bitmap b0 "$T/base.qcow2" "$T/new.qcow2" "$T/out.qcow2"
  assert_exact_delta "$T/out.qcow2" "$T/new.qcow2" 65536
}

@test "the bitmap delta and the full-scan delta give the same guest view" {
  make_disk 32M 4096
  "$RB_DELTA" --bitmap b0 "$T/base.qcow2" "$T/new.qcow2" "$T/bm.qcow2"
  "$RB_DELTA" "$T/base.qcow2" "$T/new.qcow2" "$T/full.qcow2"
  qemu-img compare -q "$T/bm.qcow2" "$T/full.qcow2"
  qemu_check_clean "$T/full.qcow2"
  # The full scan finds no more changed clusters than the bitmap marks.
  qemu-img map --output=json "$T/full.qcow2" | jq -r '.[] | select(.depth == 0) | "\(.start) \(.length)"' > "$T/full.map"
  qemu-img map --output=json "$T/bm.qcow2" | jq -r '.[] | select(.depth == 0) | "\(.start) \(.length) 1"' |
    bitmap_io dirty > "$T/bm.map"
  diff <(bitmap_io expect $((32 << 20)) 1 - "$T/full.map" "$T/bm.map") "$T/bm.map"
}

@test "live: from qemu-nbd -B, on 1 and 4 connections, OUTPUT equals NEW and holds exactly the dirty clusters" {
  make_disk 48M
  start_qnbd "$T/new.qcow2" b0 4
  "$RB_DELTA" --bitmap b0 "$T/base.qcow2" "$QURI" "$T/one.qcow2"
  "$RB_DELTA" --bitmap b0 --connections 4 -c 16K "$T/base.qcow2" "$QURI" "$T/four.qcow2"
  stop_qnbd
  assert_exact_delta "$T/one.qcow2" "$T/new.qcow2" 65536
  assert_exact_delta "$T/four.qcow2" "$T/new.qcow2" 16384
  # The live zeros came from base:allocation, without reading.
  [ "$(qemu-img map --output=json "$T/four.qcow2" | jq '[.[] | select(.depth == 0 and .zero)] | length')" -gt 0 ]
}

@test "a chain of three live increments (qemu-img bitmap --clear between) restores the final disk" {
  qemu-img create -q -f qcow2 "$T/disk.qcow2" 32M
  qemu-io -c 'write -P 7 0 32M' "$T/disk.qcow2" >/dev/null
  qemu-img bitmap --add "$T/disk.qcow2" b0
  "$RB_CONVERT" "$T/disk.qcow2" "$T/full.qcow2"           # the full backup; b0 counts from here
  prev="$T/full.qcow2"
  for k in 1 2 3; do
    scribble "$T/disk.qcow2" "$k"
    start_qnbd "$T/disk.qcow2" b0
    "$RB_DELTA" --bitmap b0 --relative "$prev" "$QURI" "$T/inc$k.qcow2"
    stop_qnbd
    qemu-img bitmap --clear "$T/disk.qcow2" b0
    qemu_check_clean "$T/inc$k.qcow2"
    prev="$T/inc$k.qcow2"
  done
  [ "$(qemu-img info --output=json --backing-chain "$T/inc3.qcow2" | jq length)" = 4 ]
  "$RB_CONVERT" -O raw "$T/inc3.qcow2" "$T/restored.raw"
  qemu-img convert -O raw "$T/disk.qcow2" "$T/disk.raw"
  cmp "$T/restored.raw" "$T/disk.raw"
}

@test "offline chain with --clear-bitmap: each increment starts where the last one ended" {
  qemu-img create -q -f qcow2 "$T/disk.qcow2" 16M
  qemu-img bitmap --add "$T/disk.qcow2" b0
  cp "$T/disk.qcow2" "$T/full.qcow2"
  qemu-img bitmap --remove "$T/full.qcow2" b0
  prev=full.qcow2
  for k in 1 2 3; do
    scribble "$T/disk.qcow2" "$((k + 10))"
    (cd "$T" && "$RB_DELTA" --bitmap b0 --clear-bitmap "$prev" disk.qcow2 "inc$k.qcow2")
    [ "$(qemu_dirty "$T/disk.qcow2" b0)" = "" ]
    [ "$(bitmap_flags "$T/disk.qcow2" b0)" = auto ]
    qemu_check_clean "$T/disk.qcow2"
    qemu-img compare -q "$T/disk.qcow2" "$T/inc$k.qcow2"
    prev=inc$k.qcow2
  done
  "$RB_CONVERT" -O raw "$T/inc3.qcow2" "$T/restored.raw"
  qemu-img compare -q -f raw -F qcow2 "$T/restored.raw" "$T/disk.qcow2"
}

@test "progress counts the dirty bytes, not the disk" {
  make_disk 64M
  "$RB_DELTA" --bitmap b0 -p "$T/base.qcow2" "$T/new.qcow2" "$T/out.qcow2" 2> "$T/progress"
  qemu_dirty "$T/new.qcow2" b0 > "$T/dirty"
  want=$(bitmap_io expect $((64 << 20)) 65536 - "$T/dirty" | awk '{ n += $2 } END { print n }')
  [ "$(tail -1 "$T/progress")" = "$want/$want" ]
  [ "$want" -lt $((32 << 20)) ]
}

# refused WHAT ARGS...: rb-delta exits 2 with one line matching WHAT and leaves no OUTPUT.
refused () {
  local what=$1; shift
  run --separate-stderr "$RB_DELTA" "$@"
  echo "$status: $stderr"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ] && [[ "$stderr" =~ $what ]]
  [ ! -e "$T/out.qcow2" ] && [ -z "$(ls -A "$T" | grep '^\.out\.qcow2')" ]
}

@test "errors: missing, in use, disabled, unreadable granularity, not offered over NBD; exit 2, no OUTPUT" {
  make_disk 16M
  refused "no bitmap named 'nosuch'" --bitmap nosuch "$T/base.qcow2" "$T/new.qcow2" "$T/out.qcow2"
  qemu-img convert -O raw "$T/new.qcow2" "$T/new.raw"
  refused "NEW must be a qcow2 image" --bitmap b0 "$T/base.qcow2" "$T/new.raw" "$T/out.qcow2"
  cp "$T/new.qcow2" "$T/off.qcow2"
  qemu-img bitmap --disable "$T/off.qcow2" b0
  refused "bitmap 'b0' is disabled" --bitmap b0 "$T/base.qcow2" "$T/off.qcow2" "$T/out.qcow2"
  cp "$T/new.qcow2" "$T/fine.qcow2"
  patch_bitmap "$T/fine.qcow2" b0 granularity 8              # 256 bytes: QEMU reads 512 and up
  refused "bitmap 'b0' cannot be used: its granularity \(256 bytes\)" --bitmap b0 "$T/base.qcow2" "$T/fine.qcow2" "$T/out.qcow2"
  cp "$T/new.qcow2" "$T/used.qcow2"
  qemu-io -c 'write 0 4k' -c abort "$T/used.qcow2" >/dev/null 2>&1 || true
  refused "bitmap 'b0' is in use" --bitmap b0 "$T/base.qcow2" "$T/used.qcow2" "$T/out.qcow2"
  start_qnbd "$T/new.qcow2" b0
  refused "offers no bitmap 'other'" --bitmap other "$T/base.qcow2" "$QURI" "$T/out.qcow2"
  stop_qnbd
  # BASE named so that it would not resolve from OUTPUT's folder.
  mkdir "$T/sub"
  (cd "$T" && run --separate-stderr "$RB_DELTA" --bitmap b0 base.qcow2 new.qcow2 sub/out.qcow2 &&
     echo "$stderr" && [ "$status" -eq 2 ] && [[ "$stderr" == *"would be read as"* ]])
  [ ! -e "$T/sub/out.qcow2" ]
  # Usage errors.
  for args in "--bitmap b0 --changes x" "--clear-bitmap" "--connections 2"; do
    run "$RB_DELTA" $args "$T/base.qcow2" "$T/new.qcow2" "$T/out.qcow2"
    [ "$status" -eq 1 ]
  done
  start_qnbd "$T/new.qcow2" b0
  run "$RB_DELTA" --bitmap b0 --clear-bitmap "$T/base.qcow2" "$QURI" "$T/out.qcow2"
  [ "$status" -eq 1 ] && [[ "$output" == *"local NEW only"* ]]
  [ ! -e "$T/out.qcow2" ]
}

@test "--clear-bitmap killed at every write: the bitmap is cleared only once OUTPUT is in place" {
  local n total cleared=0
  mkdir "$T/k"
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/k/base.qcow2" 8M
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o cluster_size=4096 "$T/k/new.qcow2"
  qemu-img bitmap --add -g 4K "$T/k/new.qcow2" b0
  scribble "$T/k/new.qcow2" 5
  qemu_dirty "$T/k/new.qcow2" b0 > "$T/before"
  cp "$T/k/new.qcow2" "$T/new.orig"
  RB_CRASH_FILE=/k/ RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" \
    "$RB_DELTA" --bitmap b0 --clear-bitmap -c 4K "$T/k/base.qcow2" "$T/k/new.qcow2" "$T/k/out.qcow2"
  total=$(cat "$T/count")
  [ "$total" -gt 5 ]
  for n in $(seq 1 "$total"); do
    rm -f "$T/k/out.qcow2" "$T"/k/.out.qcow2.tmp.*
    cp "$T/new.orig" "$T/k/new.qcow2"
    run env RB_CRASH_FILE=/k/ RB_CRASH_AT="$n" LD_PRELOAD="$SHIM" \
      "$RB_DELTA" --bitmap b0 --clear-bitmap -c 4K "$T/k/base.qcow2" "$T/k/new.qcow2" "$T/k/out.qcow2"
    [ "$status" -eq 137 ] || { echo "write $n: not killed ($status): $output"; return 1; }
    run qemu-img check "$T/k/new.qcow2"
    { [ "$status" -eq 0 ] || [ "$status" -eq 3 ]; } && [[ "$output" != *ERROR* ]] ||
      { echo "write $n: $output"; return 1; }
    qemu_dirty "$T/k/new.qcow2" b0 > "$T/now"
    if [ -e "$T/k/out.qcow2" ]; then
      qemu-img compare -q "$T/k/new.qcow2" "$T/k/out.qcow2"
      qemu_check_clean "$T/k/out.qcow2"
    fi
    if ! cmp -s "$T/now" "$T/before"; then
      [ ! -s "$T/now" ] || { echo "write $n: bitmap neither old nor cleared"; return 1; }
      [ -e "$T/k/out.qcow2" ] || { echo "write $n: bitmap cleared, OUTPUT missing"; return 1; }
      cleared=$((cleared + 1))
    fi
  done
  [ "$cleared" -gt 0 ] && [ "$cleared" -lt "$total" ]
  echo "# rb-delta --clear-bitmap killed at each of $total writes; cleared after $cleared" >&3
}
