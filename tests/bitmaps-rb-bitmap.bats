#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-bitmap against qemu-img bitmap on twin images: after every operation both images hold
# the same directory (qemu-img info --output=json) and the same bits (qemu-nbd -B); errors
# are refused by both, with one line naming the bitmap; a kill at every write of every
# operation leaves the old or the new state.

load helpers
load bitmap-helpers

bats_require_minimum_version 1.5.0

RB_BITMAP="$top_builddir/utils/rb-bitmap"
SHIM="$top_builddir/tests/.libs/crashshim.so"

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# state IMAGE: the bitmaps as QEMU reads them: qemu-img info's list, then each consistent
# bitmap's dirty runs.
state () {
  local name flags
  qemu-img info -U --output=json "$1" | jq -S '."format-specific".data.bitmaps // []'
  bitmap_names "$1" | while read -r name _ flags; do
    [[ "$flags" == *in-use* ]] && continue
    echo "bitmap $name:"
    qemu_dirty "$1" "$name"
  done
}

# twin ARGS... NAME: rb-bitmap ARGS a.qcow2 NAME and qemu-img bitmap ARGS b.qcow2 NAME (an
# argument @SRC becomes sa.qcow2 or sb.qcow2); both succeed, a checks clean, same state.
twin () {
  local name=${!#} args=("${@:1:$#-1}")
  "$RB_BITMAP" "${args[@]/@SRC/$T/sa.qcow2}" "$T/a.qcow2" "$name"
  qemu-img bitmap "${args[@]/@SRC/$T/sb.qcow2}" "$T/b.qcow2" "$name"
  qemu_check_clean "$T/a.qcow2"
  diff <(state "$T/b.qcow2") <(state "$T/a.qcow2") || { echo "after ${args[*]} $name"; return 1; }
}

# both CMD...: run a qemu-io command on both twins (QEMU records the writes in their bitmaps).
both () {
  qemu-io "$@" "$T/a.qcow2" >/dev/null
  qemu-io "$@" "$T/b.qcow2" >/dev/null
}

make_twins () {
  qemu-img create -q -f qcow2 ${1:+-o "$1"} "$T/a.qcow2" 48M
  cp "$T/a.qcow2" "$T/b.qcow2"
  qemu-img create -q -f qcow2 "$T/sa.qcow2" 48M
  qemu-img bitmap --add -g 8K "$T/sa.qcow2" s
  qemu-io -c 'write 30M 100k' -c 'write 47M 1M' "$T/sa.qcow2" >/dev/null
  cp "$T/sa.qcow2" "$T/sb.qcow2"
}

@test "every operation gives the same directory and bits as qemu-img bitmap (64K clusters)" {
  make_twins
  twin --add b0
  twin --add -g 4K b1
  twin --add -g 512 --disable b2
  both -c 'write -P 1 1M 100k' -c 'write -z 9M 3M' -c 'discard 20M 64k'
  twin --disable b0
  both -c 'write -P 2 40M 5000'
  twin --merge b1 b2
  twin --clear b1
  twin --enable b0
  both -c 'write -P 3 2M 7'
  twin --merge s -b @SRC -F qcow2 b0
  twin --add --merge b0 --disable frozen
  twin --remove b1
  twin --remove b0
  twin --remove b2
  twin --remove frozen
  # The last removal takes the extension away: QEMU sees no bitmaps and nothing to complain of.
  run --separate-stderr qemu-img info "$T/a.qcow2"
  [ -z "$stderr" ] && [[ "$output" != *bitmaps* ]]
  twin --add again
}

@test "4K clusters, and an image with a backing file whose name sits where the extension goes" {
  qemu-img create -q -f qcow2 "$T/base.qcow2" 48M
  make_twins cluster_size=4096,backing_file="$T/base.qcow2",backing_fmt=qcow2
  # QEMU put the backing file name right after the extensions: it has to move out of the way.
  [ "$(od -An -t u8 --endian=big -j 8 -N 8 "$T/a.qcow2" | tr -d ' ')" -lt 200 ]
  twin --add -g 2M b0
  [ "$(od -An -t u8 --endian=big -j 8 -N 8 "$T/a.qcow2" | tr -d ' ')" -gt 4000 ]
  both -c 'write -P 1 3M 5M'
  twin --add b1
  twin --merge b0 b1
  twin --remove b0
  twin --remove b1
  [ "$(qemu-img info --output=json "$T/a.qcow2" | jq -r '."backing-filename"')" = "$T/base.qcow2" ]
  twin --add b2
  [ "$(qemu-img info --output=json "$T/a.qcow2" | jq -r '."backing-filename"')" = "$T/base.qcow2" ]
  qemu-img compare -q "$T/a.qcow2" "$T/b.qcow2"
}

@test "the listing: qemu-img info's keys, the dirty byte count equals what qemu-nbd -B reports" {
  make_twins
  "$RB_BITMAP" --add -g 512 "$T/a.qcow2" fine
  "$RB_BITMAP" --add -g 2M "$T/a.qcow2" coarse
  "$RB_BITMAP" --add --disable "$T/a.qcow2" off
  qemu-io -c 'write 1000 3000' -c 'write 47M 1000' -c 'write -z 8M 300k' "$T/a.qcow2" >/dev/null
  diff <("$RB_BITMAP" --output=json "$T/a.qcow2" | jq -S 'map(del(.count))') \
       <(qemu-img info --output=json "$T/a.qcow2" | jq -S '."format-specific".data.bitmaps')
  for b in fine coarse off; do
    want=$(qemu_dirty "$T/a.qcow2" "$b" | awk '{ n += $2 } END { print n + 0 }')
    [ "$("$RB_BITMAP" --json "$T/a.qcow2" | jq --arg b "$b" '.[] | select(.name == $b) | .count')" = "$want" ]
  done
  [ "$want" = 0 ]
  run "$RB_BITMAP" "$T/a.qcow2"
  echo "$output"
  [ "${lines[0]}" = "NAME                  GRANULARITY  FLAGS        DIRTY BYTES" ]
  [[ "${lines[1]}" =~ ^fine\ +512\ +auto\ +311808$ ]]      # 3584 + 1024 + 307200
  [[ "${lines[3]}" =~ ^off\ +65536\ +-\ +0$ ]]
  # While the plugin writes, the bitmaps are in use: -U still lists them, counts unknown.
  start_rblock "$T/a.qcow2"
  nbdsh -u "$URI" -c 'h.pwrite(b"x" * 512, 0)'
  run "$RB_BITMAP" -U --json "$T/a.qcow2"
  [ "$(echo "$output" | jq -c '.[0].flags')" = '["in-use","auto"]' ]
  [ "$(echo "$output" | jq '.[0] | has("count")')" = false ]
  run "$RB_BITMAP" "$T/a.qcow2"
  [ "$status" -eq 2 ] && [[ "$output" == *"in use by another process"* ]]
  stop_rblock
  [ "$("$RB_BITMAP" --json "$T/a.qcow2" | jq '.[0].count')" = $((311808 + 512)) ]
}

# refused ARGS... NAME: both tools refuse; rb-bitmap with exit 2 and one line naming what is
# wrong (WHAT, a regex), and leaves the image byte for byte as it was.
refused () {
  local what=$1; shift
  local name=${!#} args=("${@:1:$#-1}") sum
  sum=$(md5sum < "$T/a.qcow2")
  run --separate-stderr "$RB_BITMAP" "${args[@]/@SRC/$T/sa.qcow2}" "$T/a.qcow2" "$name"
  echo "rb-bitmap ${args[*]} $name: $status: $stderr"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ] && [[ "$stderr" =~ $what ]]
  [ "$(md5sum < "$T/a.qcow2")" = "$sum" ]
  run qemu-img bitmap "${args[@]/@SRC/$T/sb.qcow2}" "$T/b.qcow2" "$name"
  [ "$status" -ne 0 ]
}

@test "errors: both tools refuse, rb-bitmap says why in one line, exit 2, image unchanged" {
  make_twins
  twin --add b0
  refused "'b0' already exists" --add b0
  refused "cannot be empty" --add ""
  refused "longer than 1023" --add "$(printf 'n%.0s' $(seq 1024))"
  refused "granularity 256 " --add -g 256 g
  refused "granularity 3000 " --add -g 3000 g
  refused "granularity 4294967296 " --add -g 4G g
  for op in --remove --clear --enable --disable "--merge b0"; do
    refused "no bitmap named 'nosuch'" $op nosuch
  done
  refused "no bitmap named 'nosuch'" --merge nosuch b0
  refused "no bitmap named 's'" --merge s b0
  qemu-img create -q -f qcow2 "$T/sa.qcow2" 32M
  qemu-img bitmap --add "$T/sa.qcow2" s
  cp "$T/sa.qcow2" "$T/sb.qcow2"
  refused "33554432-byte disk into one of a 50331648-byte" --merge s -b @SRC b0
  # A bitmap in use (QEMU killed while writing): only --remove works on it.
  both -c 'write 0 4k' -c abort 2>/dev/null || true
  [ "$(bitmap_flags "$T/a.qcow2" b0)" = in-use,auto ]
  qemu-img check -q -r leaks "$T/a.qcow2" >/dev/null 2>&1 || true
  qemu-img check -q -r leaks "$T/b.qcow2" >/dev/null 2>&1 || true
  twin --add b1
  refused "'b0' is in use" --clear b0
  refused "'b0' is in use" --disable b0
  refused "'b0' is in use" --merge b0 b1
  refused "'b0' is in use" --merge b1 b0
  twin --remove b0
  # Version 2 images cannot hold bitmaps.
  qemu-img create -q -f qcow2 -o compat=0.10 "$T/a.qcow2" 16M
  cp "$T/a.qcow2" "$T/b.qcow2"
  refused "version 2" --add v2
}

@test "usage errors: exit 1 with one line" {
  qemu-img create -q -f qcow2 "$T/a.qcow2" 16M
  for args in "" "--add $T/a.qcow2" "-g 64K $T/a.qcow2 x" "--remove -b $T/a.qcow2 $T/a.qcow2 x" \
              "--add -U $T/a.qcow2 x" "--add -g nonsense $T/a.qcow2 x" "-F raw --merge a $T/a.qcow2 x" \
              "--bogus $T/a.qcow2"; do
    run --separate-stderr "$RB_BITMAP" $args
    echo "$args: $status: $stderr"
    [ "$status" -eq 1 ] && [ "${#stderr_lines[@]}" -eq 1 ]
  done
  run --separate-stderr "$RB_BITMAP" -f raw "$T/a.qcow2"
  [ "$status" -eq 2 ] && [[ "$stderr" == *"no bitmaps"* ]]
  "$RB_BITMAP" --help | grep -q '^usage: rb-bitmap'
  "$RB_BITMAP" --version | grep -q '^rb-bitmap '
}

# killed_at_every_write [torn] STEP...: for each STEP ("ARGS... NAME" run on a copy of the
# state the steps before it made), rb-bitmap killed at each of its writes leaves the image
# without corruption and in the old or the new state.
killed_at_every_write () {
  local torn=$1 step n total kills=0; shift
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/cur.qcow2" 24M
  qemu-img create -q -f qcow2 "$T/sa.qcow2" 24M
  qemu-img bitmap --add -g 1K "$T/sa.qcow2" s
  qemu-io -c 'write 3M 100k' "$T/sa.qcow2" >/dev/null
  for step in "$@"; do
    read -r -a a <<< "${step//@SRC/$T/sa.qcow2}"
    state "$T/cur.qcow2" > "$T/old"
    cp "$T/cur.qcow2" "$T/next.qcow2"
    RB_CRASH_FILE=next.qcow2 RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" \
      "$RB_BITMAP" "${a[@]:0:${#a[@]}-1}" "$T/next.qcow2" "${a[-1]}"
    state "$T/next.qcow2" > "$T/new"
    ! cmp -s "$T/old" "$T/new"
    total=$(cat "$T/count")
    for n in $(seq 1 "$total"); do
      cp "$T/cur.qcow2" "$T/img.qcow2"
      run env RB_CRASH_FILE=img.qcow2 RB_CRASH_AT="$n" ${torn:+RB_CRASH_TORN=1} LD_PRELOAD="$SHIM" \
        "$RB_BITMAP" "${a[@]:0:${#a[@]}-1}" "$T/img.qcow2" "${a[-1]}"
      [ "$status" -eq 137 ] || { echo "$step, write $n: not killed ($status): $output"; return 1; }
      run qemu-img check "$T/img.qcow2"
      { [ "$status" -eq 0 ] || [ "$status" -eq 3 ]; } && [[ "$output" != *ERROR* ]] ||
        { echo "$step, write $n: $output"; return 1; }
      state "$T/img.qcow2" > "$T/got"
      cmp -s "$T/got" "$T/old" || cmp -s "$T/got" "$T/new" ||
        { echo "$step, write $n: neither old nor new"; diff "$T/new" "$T/got"; return 1; }
      kills=$((kills + 1))
    done
    mv "$T/next.qcow2" "$T/cur.qcow2"
    qemu-io -c "write -P 7 $((kills * 4096)) 9000" "$T/cur.qcow2" >/dev/null
  done
  echo "# rb-bitmap killed at $kills writes of $# operations" >&3
}

@test "rb-bitmap killed at every write of every operation: old state or new, never corrupt" {
  killed_at_every_write "" "--add -g 512 b0" "--add b1" "--merge s -b @SRC b1" \
    "--clear b0" "--disable b1" "--add b2" "--merge b1 b2" "--remove b0" "--remove b1" "--remove b2"
}

@test "rb-bitmap killed at every write, torn at 512 bytes: old state or new, never corrupt" {
  killed_at_every_write torn "--add -g 512 b0" "--merge s -b @SRC b0" "--remove b0"
}
