#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-diff on inputs of different sizes: by default the longer tail counts as changed; with
# --size-mismatch=zero-tail only its non-zero sectors do, as qemu-img compare judges.

load helpers
load diff-helpers

bats_require_minimum_version 1.5.0

setup () {
  T="$BATS_TEST_TMPDIR"
  # A: 3 MiB of data with holes; B: A grown to 5 MiB + 700 bytes (a partial last sector),
  # its tail a hole and a run of written zeros.
  truncate -s 3M "$T/a"
  dd if=/dev/urandom of="$T/a" bs=64k count=20 seek=5 conv=notrunc status=none
  cp "$T/a" "$T/b"
  truncate -s $((5 * 1048576 + 700)) "$T/b"
  dd if=/dev/zero of="$T/b" bs=64k count=4 seek=60 conv=notrunc status=none
}

# padded_oracle A B: the changed sectors when the shorter input reads as zeros past its end.
padded_oracle () {
  local sa sb
  sa=$(stat -c %s "$1"); sb=$(stat -c %s "$2")
  cp --sparse=always "$1" "$T/pa"; cp --sparse=always "$2" "$T/pb"
  if [ "$sa" -lt "$sb" ]; then truncate -s "$sb" "$T/pa"; else truncate -s "$sa" "$T/pb"; fi
  oracle_ranges "$T/pa" "$T/pb"
}

@test "rb-diff --size-mismatch=zero-tail: a tail of zeros is no change, exit 0 and a warning, as qemu-img compare" {
  for pair in "a b" "b a"; do
    set -- $pair
    run qemu-img compare -f raw -F raw "$T/$1" "$T/$2"
    [ "$status" -eq 0 ] && [[ "$output" == *"size mismatch"*"identical"* ]]
    run --separate-stderr "$RB_DIFF" --size-mismatch=zero-tail --json "$T/$1" "$T/$2"
    [ "$status" -eq 0 ] || { echo "$output $stderr"; false; }
    [ "$(echo "$output" | jq -c '[.changed_sectors, .ranges]')" = '[0,[]]' ]
    [ "$(echo "$output" | jq .size_a)" = "$(stat -c %s "$T/$1")" ]
    [[ "$stderr" == "rb-diff: warning: "*"$1 is "*" bytes, "*"$2 "*"compared with zeros" ]] || { echo "$stderr"; false; }
    run "$RB_DIFF" --size-mismatch=zero-tail "$T/$1" "$T/$2"
    [[ "$output" == *"identical"* ]]
  done
  # -q: nothing at all, the exit status tells.
  run --separate-stderr "$RB_DIFF" -q --size-mismatch=zero-tail "$T/a" "$T/b"
  [ "$status" -eq 0 ] && [ -z "$output" ] && [ -z "$stderr" ]
}

@test "rb-diff --size-mismatch=zero-tail: non-zero bytes in the tail are exactly the changed sectors; the first is qemu-img compare's offset" {
  printf 'x' | dd of="$T/b" bs=1 seek=$((4 * 1048576 + 12345)) conv=notrunc status=none
  printf 'y' | dd of="$T/b" bs=1 seek=$((5 * 1048576 + 699)) conv=notrunc status=none
  printf 'z' | dd of="$T/b" bs=1 seek=$((1048576)) conv=notrunc status=none
  want=$(padded_oracle "$T/a" "$T/b")
  [ "$(echo "$want" | wc -l)" -eq 3 ]
  for pair in "a b" "b a"; do
    set -- $pair
    run --separate-stderr "$RB_DIFF" --size-mismatch=zero-tail --json "$T/$1" "$T/$2"
    [ "$status" -eq 1 ]
    [ "$(echo "$output" | json_ranges)" = "$want" ]
    # The partial last sector counts its 188 bytes.
    [ "$(echo "$output" | jq .changed_bytes)" = $((512 + 512 + 188)) ]
    run qemu-img compare -f raw -F raw "$T/$1" "$T/$2"
    [ "$status" -eq 1 ]
    [[ "$output" == *"Content mismatch at offset $(( $(echo "$want" | head -1 | cut -d' ' -f1) * 512 ))!"* ]] || { echo "$output"; false; }
  done
}

@test "rb-diff --size-mismatch=zero-tail: a qcow2 image shorter or longer than a raw file, judged as qemu-img compare" {
  qemu-img convert -O qcow2 "$T/a" "$T/a.qcow2"
  run qemu-img compare "$T/a.qcow2" "$T/b"
  [ "$status" -eq 0 ]
  run "$RB_DIFF" --size-mismatch=zero-tail -q "$T/a.qcow2" "$T/b"
  [ "$status" -eq 0 ]
  qemu-img resize -q "$T/a.qcow2" 6M
  qemu-io -c 'write -P 3 5M 4k' "$T/a.qcow2" > /dev/null
  run qemu-img compare "$T/a.qcow2" "$T/b"
  [ "$status" -eq 1 ]
  [[ "$output" == *"Content mismatch at offset 5242880!"* ]]
  run --separate-stderr "$RB_DIFF" --size-mismatch=zero-tail --json "$T/b" "$T/a.qcow2"
  [ "$status" -eq 1 ]
  [ "$(echo "$output" | json_ranges)" = "10240 8" ]
}

@test "rb-diff: the default counts the whole tail as changed; --size-mismatch=changed says so explicitly; bad values exit 2" {
  for opt in "" --size-mismatch=changed; do
    run "$RB_DIFF" $opt --json "$T/a" "$T/b"
    [ "$status" -eq 1 ]
    [ "$(echo "$output" | json_ranges)" = "$(oracle_ranges "$T/a" "$T/b")" ]
    [ "$(echo "$output" | jq .changed_bytes)" = $((2 * 1048576 + 700)) ]
  done
  run "$RB_DIFF" --size-mismatch=zero "$T/a" "$T/b"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--size-mismatch"*"zero-tail"* ]]
  run "$RB_DIFF" --help
  [[ "$output" == *"--size-mismatch=changed|zero-tail"* ]]
}
