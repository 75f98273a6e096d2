#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-diff on files and qcow2 images, judged by an independent oracle (cmp -l reduced to sectors).

load helpers
load diff-helpers

bats_require_minimum_version 1.5.0

setup () {
  T="$BATS_TEST_TMPDIR"
  # A 2 MiB + 300 bytes input (a partial last sector) with random data.
  head -c $((2 * 1048576 + 300)) /dev/urandom > "$T/a"
  cp "$T/a" "$T/b"
}

@test "rb-diff: identical inputs exit 0 with no ranges and say so" {
  assert_diff_matches_oracle "$T/a" "$T/b"
  run "$RB_DIFF" "$T/a" "$T/b"
  [ "$status" -eq 0 ]
  [[ "$output" == *"identical"* ]]
  [ "$(echo "$output" | wc -l)" -eq 1 ]
}

@test "rb-diff: one byte changed in sector 0 is exactly sector 0" {
  poke "$T/b" 17
  assert_diff_matches_oracle "$T/a" "$T/b"
  run "$RB_DIFF" --json "$T/a" "$T/b"
  [ "$(echo "$output" | jq -c .ranges)" = '[{"start":0,"count":1}]' ]
}

@test "rb-diff: a byte changed in the last full sector and in the partial last sector" {
  poke "$T/b" $((2 * 1048576 - 1))
  assert_diff_matches_oracle "$T/a" "$T/b"
  poke "$T/b" $((2 * 1048576 + 299))
  assert_diff_matches_oracle "$T/a" "$T/b"
  run "$RB_DIFF" --json "$T/a" "$T/b"
  [ "$(echo "$output" | jq -c .ranges)" = '[{"start":4095,"count":2}]' ]
  # The partial sector counts its 300 bytes only.
  [ "$(echo "$output" | jq .changed_bytes)" = $((512 + 300)) ]
}

@test "rb-diff: runs that cross chunk boundaries merge into one range, at any chunk size" {
  scribble "$T/b" $((65536 - 700)) 1900          # across the 64K boundary
  scribble "$T/b" $((1048576 - 1)) 2             # across the 1M boundary
  poke "$T/b" 4096; poke "$T/b" 4607; poke "$T/b" 4608   # adjacent sectors
  for chunk in 512 1000 4096 65536 1048576; do
    RBLOCK_CHUNK_SIZE=$chunk assert_diff_matches_oracle "$T/a" "$T/b"
    assert_diff_matches_oracle "$T/a" "$T/b" 512 --chunk-size "$chunk"
  done
  run "$RB_DIFF" --json --chunk-size 4096 "$T/a" "$T/b"
  [ "$(echo "$output" | jq '[.ranges[] | select(.start <= 127 and .start + .count >= 129)] | length')" = 1 ]
}

@test "rb-diff: 1, 2, 3 and 7 worker threads over many small stripes give the same ranges" {
  local i n want
  for i in $(seq 80); do
    poke "$T/b" $(( (RANDOM * 32768 + RANDOM) % (2 * 1048576 + 300) ))
  done
  scribble "$T/b" $((1048576 - 3000)) 9000         # a run across many 512-byte blocks
  want=$(oracle_ranges "$T/a" "$T/b")
  [ "$(echo "$want" | wc -l)" -gt 50 ]
  for n in 1 2 3 7; do
    for chunk in 512 4096 65536; do
      [ "$(RBLOCK_THREADS=$n "$RB_DIFF" --json --chunk-size $chunk "$T/a" "$T/b" | json_ranges)" = "$want" ]
    done
  done
}

@test "rb-diff: scattered random changes match the oracle at sector sizes 512, 4096 and 64K" {
  local i
  for i in $(seq 60); do
    poke "$T/b" $(( (RANDOM * 32768 + RANDOM) % (2 * 1048576 + 300) ))
  done
  for ss in 512 4096 65536; do
    assert_diff_matches_oracle "$T/a" "$T/b" "$ss"
    assert_diff_matches_oracle "$T/a" "$T/b" "$ss" --chunk-size 12288
  done
}

@test "rb-diff: a longer B or a longer A has its tail counted as changed, and the summary says so" {
  head -c 5000 /dev/urandom >> "$T/b"
  assert_diff_matches_oracle "$T/a" "$T/b"
  assert_diff_matches_oracle "$T/b" "$T/a"
  assert_diff_matches_oracle "$T/b" "$T/a" 4096
  run "$RB_DIFF" "$T/a" "$T/b"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$T/b is 5000 bytes longer"* ]]
  # An empty input against a non-empty one: everything changed.
  : > "$T/empty"
  assert_diff_matches_oracle "$T/empty" "$T/a"
  run "$RB_DIFF" --count "$T/empty" "$T/empty"
  [ "$status" -eq 0 ] && [ "$output" = 0 ]
}

@test "rb-diff: holes on one or both sides compare as zeros" {
  truncate -s 8M "$T/h1" "$T/h2"
  # Both holes: identical.
  assert_diff_matches_oracle "$T/h1" "$T/h2"
  # Data on one side where the other has a hole; zeros written where the other has a hole.
  dd if=/dev/urandom of="$T/h1" bs=4096 count=3 seek=300 conv=notrunc status=none
  dd if=/dev/zero of="$T/h2" bs=1M count=2 seek=4 conv=notrunc status=none
  poke "$T/h2" $((5 * 1048576 + 12345))
  for chunk in 4096 65536 4194304; do
    assert_diff_matches_oracle "$T/h1" "$T/h2" 512 --chunk-size "$chunk"
    assert_diff_matches_oracle "$T/h2" "$T/h1" 4096 --chunk-size "$chunk"
  done
  # A fully sparse file against zeros written out: identical.
  dd if=/dev/zero of="$T/z" bs=1M count=8 status=none
  truncate -s 8M "$T/h3"
  run "$RB_DIFF" --count "$T/z" "$T/h3"
  [ "$status" -eq 0 ] && [ "$output" = 0 ]
}

@test "rb-diff: --json is one valid object with exactly the documented keys" {
  poke "$T/b" 1000
  run "$RB_DIFF" --json "$T/a" "$T/b"
  [ "$status" -eq 1 ]
  [ "$(echo "$output" | wc -l)" -eq 1 ]
  [ "$(echo "$output" | jq -c 'keys_unsorted')" = '["sector_size","size_a","size_b","changed_sectors","changed_bytes","ranges"]' ]
  [ "$(echo "$output" | jq -c '.ranges[0] | keys_unsorted')" = '["start","count"]' ]
  run "$RB_DIFF" --json "$T/a" "$T/a"
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq -c '[.changed_sectors, .changed_bytes, .ranges]')" = '[0,0,[]]' ]
}

@test "rb-diff: the human output lists each range and a summary with sectors, bytes and percentage" {
  poke "$T/b" 0; poke "$T/b" 513; poke "$T/b" 5000
  run "$RB_DIFF" "$T/a" "$T/b"
  [ "$status" -eq 1 ]
  [ "${lines[0]}" = "sectors 0-1 (2)" ]
  [ "${lines[1]}" = "sectors 9-9 (1)" ]
  [[ "${lines[2]}" == *"differ: 3 of 4097 sectors of 512 bytes changed (1536 bytes, 0.07%) in 2 ranges" ]]
  run "$RB_DIFF" --quiet "$T/a" "$T/b"
  [ "$status" -eq 1 ] && [ -z "$output" ]
}

@test "rb-diff: missing, unreadable and unusable inputs and bad options give one line and exit 2" {
  run --separate-stderr "$RB_DIFF" "$T/a" "$T/missing"
  [ "$status" -eq 2 ] && [ -z "$output" ]
  [ "$stderr" = "rb-diff: $T/missing: No such file or directory" ]
  mkdir "$T/dir"
  run --separate-stderr "$RB_DIFF" "$T/dir" "$T/a"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ] && [[ "$stderr" == "rb-diff: $T/dir: "* ]]
  run --separate-stderr "$RB_DIFF" --bogus "$T/a" "$T/b"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ] && [[ "$stderr" == "rb-diff: "*bogus* ]]
  run --separate-stderr "$RB_DIFF" --sector-size 1000 "$T/a" "$T/b"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ] && [[ "$stderr" == "rb-diff: --sector-size"* ]]
  run --separate-stderr "$RB_DIFF" "$T/a"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ]
  # A qcow2 header the engine refuses: the message names the file.
  printf 'QFI\373\000\000\000\011garbage' > "$T/bad.qcow2"
  truncate -s 1M "$T/bad.qcow2"
  run --separate-stderr "$RB_DIFF" "$T/bad.qcow2" "$T/a"
  [ "$status" -eq 2 ] && [ "${#stderr_lines[@]}" -eq 1 ] && [[ "$stderr" == "rb-diff: "*bad.qcow2* ]]
}

@test "rb-diff: --help and --version" {
  run "$RB_DIFF" --help
  [ "$status" -eq 0 ] && [[ "$output" == usage:* ]] && [[ "$output" == *examples:* ]]
  run "$RB_DIFF" --version
  [ "$status" -eq 0 ] && [[ "$output" == "rb-diff "[0-9]* ]]
}

@test "rb-diff: a qcow2 image equals its qemu-img convert -O raw; an overlay's changes match the oracle" {
  truncate -s 2M "$T/a"                         # qcow2 sizes are whole sectors
  qemu-img convert -f raw -O qcow2 "$T/a" "$T/a.qcow2"
  run "$RB_DIFF" --json "$T/a.qcow2" "$T/a"
  [ "$status" -eq 0 ] && [ "$(echo "$output" | jq -c '[.size_a, .size_b, .ranges]')" = '[2097152,2097152,[]]' ]
  qemu-img create -q -f qcow2 -b "$T/a.qcow2" -F qcow2 "$T/over.qcow2"
  qemu-io -f qcow2 -c "write -P 0x55 65536 4096" -c "write -z 1048576 65536" -c "write -P 7 2096640 512" \
    "$T/over.qcow2" >/dev/null
  qemu-img convert -f qcow2 -O raw "$T/over.qcow2" "$T/over.raw"
  run "$RB_DIFF" --json "$T/over.qcow2" "$T/a"
  [ "$status" -eq 1 ]
  [ "$(echo "$output" | json_ranges)" = "$(oracle_ranges "$T/over.raw" "$T/a")" ]
  # Against its own backing file, only the overlay's clusters differ; at 4K sectors too.
  run "$RB_DIFF" --json "$T/a.qcow2" "$T/over.qcow2"
  [ "$(echo "$output" | json_ranges)" = "$(oracle_ranges "$T/a" "$T/over.raw")" ]
  run "$RB_DIFF" --json -S 4096 "$T/over.qcow2" "$T/a.qcow2"
  [ "$(echo "$output" | json_ranges)" = "$(oracle_ranges "$T/over.raw" "$T/a" 4096)" ]
  qemu_check_clean "$T/over.qcow2"
}

@test "rb-diff: a block device (loop) is sized by ioctl and compares like its backing file" {
  head -c 3M /dev/urandom > "$T/dev.img"
  cp "$T/dev.img" "$T/other"
  poke "$T/other" 1234567
  dev=$(losetup --find --show "$T/dev.img" 2>/dev/null) || skip "no loop device can be made here (needs root and /dev/loop*)"
  run "$RB_DIFF" --json "$dev" "$T/other"
  losetup -d "$dev"
  [ "$status" -eq 1 ]
  [ "$(echo "$output" | jq .size_a)" = 3145728 ]
  [ "$(echo "$output" | json_ranges)" = "$(oracle_ranges "$T/dev.img" "$T/other")" ]
}
