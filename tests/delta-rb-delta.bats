#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-delta: a qcow2 backed by BASE with only what NEW changed, judged by qemu-img compare,
# check, info, map and commit, and read through the plugin.

load helpers

RB_DELTA="$top_builddir/utils/rb-delta"

setup () {
  T="$BATS_TEST_TMPDIR"
  truncate -s 24M "$T/base.raw"
  dd if=/dev/urandom of="$T/base.raw" bs=1M count=8 seek=2 conv=notrunc status=none
  cp "$T/base.raw" "$T/new.raw"
  # Changes: 3 scattered 4K writes, a 64K run turned to zeros, a byte at the last sector.
  for s in 700 1900 2300; do
    dd if=/dev/urandom of="$T/new.raw" bs=4k count=1 seek=$s conv=notrunc status=none
  done
  dd if=/dev/zero of="$T/new.raw" bs=64k count=1 seek=80 conv=notrunc status=none
  printf 'Z' | dd of="$T/new.raw" bs=1 seek=$(( (24 << 20) - 1 )) conv=notrunc status=none
}

teardown () {
  stop_rblock
}

# data_ranges IMAGE: "start length" of the clusters the delta itself holds (depth 0, data or zero).
own_ranges () {
  qemu-img map --output=json "$1" | jq -r '.[] | select(.depth == 0 and (.data or .zero)) | "\(.start) \(.length)"'
}

@test "rb-delta: the delta reads as NEW, checks clean, records BASE and its format" {
  "$RB_DELTA" "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
  qemu_check_clean "$T/d.qcow2"
  qemu-img compare "$T/d.qcow2" "$T/new.raw"
  info=$(qemu-img info --output=json "$T/d.qcow2")
  [ "$(echo "$info" | jq -r '."backing-filename"')" = "$T/base.raw" ]
  [ "$(echo "$info" | jq -r '."backing-filename-format"')" = raw ]
}

@test "rb-delta: the delta holds exactly the changed clusters; the zeroed one is a zero cluster" {
  "$RB_DELTA" "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
  run own_ranges "$T/d.qcow2"
  # 4K pages 700, 1900, 2300 -> 64K clusters 43, 118, 143; zeros at cluster 80; last cluster 383.
  [ "$output" = "$(printf '%s\n' "$((43 * 65536)) 65536" "$((80 * 65536)) 65536" "$((118 * 65536)) 65536" "$((143 * 65536)) 65536" "$((383 * 65536)) 65536")" ]
  [ "$(qemu-img map --output=json "$T/d.qcow2" | jq -c '.[] | select(.start == 5242880) | [.zero, .data]')" = "[true,false]" ]
}

@test "rb-delta: 1, 2, 3 and 7 worker threads over many small stripes write the same file" {
  local n chunk x
  for x in "" --extended-l2; do
    "$RB_DELTA" $x "$T/base.raw" "$T/new.raw" "$T/ref.qcow2"
    qemu-img compare "$T/ref.qcow2" "$T/new.raw"
    qemu_check_clean "$T/ref.qcow2"
    for n in 1 2 3 7; do
      for chunk in 65536 262144; do
        RBLOCK_THREADS=$n RBLOCK_CHUNK_SIZE=$chunk "$RB_DELTA" $x "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
        cmp "$T/d.qcow2" "$T/ref.qcow2"
        rm "$T/d.qcow2"
      done
    done
    rm "$T/ref.qcow2"
  done
}

@test "rb-delta: qemu-img commit of the delta into a copy of BASE gives NEW byte for byte" {
  "$RB_DELTA" "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
  cp "$T/base.raw" "$T/copy.raw"
  qemu-img rebase -u -b "$T/copy.raw" -F raw "$T/d.qcow2"
  qemu-img commit -q "$T/d.qcow2"
  cmp "$T/copy.raw" "$T/new.raw"
}

@test "rb-delta: served by nbdkit ./rblock.so the delta reads as NEW" {
  "$RB_DELTA" "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
  start_rblock "$T/d.qcow2" -r
  nbdcopy "$URI" "$T/served.raw"
  stop_rblock
  cmp "$T/served.raw" "$T/new.raw"
}

@test "rb-delta: --extended-l2 stores less for scattered 4 KiB changes, and still reads as NEW" {
  "$RB_DELTA" "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
  "$RB_DELTA" --extended-l2 "$T/base.raw" "$T/new.raw" "$T/e.qcow2"
  qemu_check_clean "$T/e.qcow2"
  qemu-img compare "$T/e.qcow2" "$T/new.raw"
  [ "$(du -k "$T/e.qcow2" | cut -f1)" -lt "$(du -k "$T/d.qcow2" | cut -f1)" ]
}

@test "rb-delta: --relative stores BASE relative to the output's folder; works from anywhere" {
  mkdir -p "$T/out/inc" "$T/elsewhere"
  "$RB_DELTA" --relative "$T/base.raw" "$T/new.raw" "$T/out/inc/d.qcow2"
  [ "$(qemu-img info --output=json "$T/out/inc/d.qcow2" | jq -r '."backing-filename"')" = "../../base.raw" ]
  cd "$T/elsewhere"
  qemu-img compare "$T/out/inc/d.qcow2" "$T/new.raw"
}

@test "rb-delta: --compat 0.10 writes zeros instead of the zero flag" {
  "$RB_DELTA" --compat 0.10 "$T/base.raw" "$T/new.raw" "$T/v2.qcow2"
  qemu_check_clean "$T/v2.qcow2"
  qemu-img compare "$T/v2.qcow2" "$T/new.raw"
  [ "$(qemu-img map --output=json "$T/v2.qcow2" | jq -c '.[] | select(.start == 5242880) | .data')" = true ]
}

@test "rb-delta: NEW larger than BASE: the delta has NEW's size and stores the tail's data" {
  truncate -s 30M "$T/new.raw"
  printf 'tail' | dd of="$T/new.raw" bs=1 seek=$((29 << 20)) conv=notrunc status=none
  "$RB_DELTA" "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
  [ "$(qemu-img info --output=json "$T/d.qcow2" | jq '."virtual-size"')" = $((30 << 20)) ]
  qemu-img compare "$T/d.qcow2" "$T/new.raw"
  qemu_check_clean "$T/d.qcow2"
}

@test "rb-delta: a qcow2 BASE is recorded as qcow2" {
  qemu-img convert -O qcow2 "$T/base.raw" "$T/base.qcow2"
  "$RB_DELTA" "$T/base.qcow2" "$T/new.raw" "$T/d.qcow2"
  [ "$(qemu-img info --output=json "$T/d.qcow2" | jq -r '."backing-filename-format"')" = qcow2 ]
  qemu-img compare "$T/d.qcow2" "$T/new.raw"
  qemu_check_clean "$T/d.qcow2"
}

@test "rb-delta: --changes (rb-diff --json format, from a file or stdin) gives the same delta" {
  # The changed 512-byte sectors, computed independently with cmp -l.
  cmp -l "$T/base.raw" "$T/new.raw" | awk '{ print int(($1 - 1) / 512) }' | uniq |
    awk 'NR == 1 { s = $1; p = $1; next } $1 == p + 1 { p = $1; next } { printf "%d %d\n", s, p - s + 1; s = $1; p = $1 } END { if (NR) printf "%d %d\n", s, p - s + 1 }' |
    jq -R -s --argjson size "$(stat -c %s "$T/new.raw")" '
      [split("\n")[] | select(length > 0) | split(" ") | {start: (.[0] | tonumber), count: (.[1] | tonumber)}] as $r |
      {sector_size: 512, size_a: $size, size_b: $size, changed_sectors: ([$r[].count] | add),
       changed_bytes: (([$r[].count] | add) * 512), ranges: $r}' > "$T/changes.json"
  "$RB_DELTA" "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
  "$RB_DELTA" --changes "$T/changes.json" "$T/base.raw" "$T/new.raw" "$T/c.qcow2"
  qemu-img compare "$T/c.qcow2" "$T/new.raw"
  qemu_check_clean "$T/c.qcow2"
  [ "$(own_ranges "$T/c.qcow2")" = "$(own_ranges "$T/d.qcow2")" ]
  "$RB_DELTA" --changes - "$T/base.raw" "$T/new.raw" "$T/s.qcow2" < "$T/changes.json"
  qemu-img compare "$T/s.qcow2" "$T/new.raw"
  echo '{"ranges": 3}' > "$T/bad.json"
  run "$RB_DELTA" --changes "$T/bad.json" "$T/base.raw" "$T/new.raw" "$T/b.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"rb-diff --json"* ]]
  [ ! -e "$T/b.qcow2" ]
}

@test "rb-delta: bad inputs: missing, BASE larger than NEW, existing OUTPUT: exit 2, nothing made" {
  run "$RB_DELTA" "$T/nosuch" "$T/new.raw" "$T/d.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == "rb-delta: "*"nosuch"* ]]
  truncate -s 8M "$T/small.raw"
  run "$RB_DELTA" "$T/base.raw" "$T/small.raw" "$T/d.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"is larger than"* ]]
  [ ! -e "$T/d.qcow2" ]
  echo keep > "$T/d.qcow2"
  run "$RB_DELTA" "$T/base.raw" "$T/new.raw" "$T/d.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"already exists"* ]]
  [ "$(cat "$T/d.qcow2")" = keep ]
  run "$RB_DELTA" --extended-l2 -c 4K "$T/base.raw" "$T/new.raw" "$T/x.qcow2"
  [ "$status" -eq 1 ]
  [ -z "$(ls -A "$T" | grep '\.tmp\.' || true)" ]
}

@test "rb-delta: a full disk gives exit 2 and leaves nothing" {
  mkdir -p "$T/full"
  mount -t tmpfs -o size=1M tmpfs "$T/full" || { echo "mounting a tmpfs needs root (CI runs as root)"; false; }
  head -c 8M /dev/urandom > "$T/new2.raw"
  truncate -s 8M "$T/b2.raw"
  run "$RB_DELTA" "$T/b2.raw" "$T/new2.raw" "$T/full/d.qcow2"
  ls -A "$T/full" > "$T/left"
  umount "$T/full"
  [ "$status" -eq 2 ]
  [[ "$output" == *"No space left on device"* ]]
  [ ! -s "$T/left" ]
}
