#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-check against qemu-img check on clean images and images with injected leaks and corruptions.

RB_CHECK="$top_builddir/utils/rb-check"

setup () {
  T="$BATS_TEST_TMPDIR"
  qemu-img create -q -f qcow2 "$T/a.qcow2" 8M
  qemu-io -c 'write -P 1 0 256k' -c 'write -P 2 1M 64k' "$T/a.qcow2" >/dev/null
  l1=$(od -An -tu8 --endian=big -j 40 -N 8 "$T/a.qcow2" | tr -d ' ')
  L2=$(( $(od -An -tu8 --endian=big -j "$l1" -N 8 "$T/a.qcow2" | tr -d ' ') & 0x00fffffffffffe00 ))
}

l2_entry () {   # index -> raw entry
  od -An -tu8 --endian=big -j $((L2 + 8 * $1)) -N 8 "$T/a.qcow2" | tr -d ' '
}
set_l2_entry () {   # index value
  printf '%016x' "$2" | xxd -r -p | dd of="$T/a.qcow2" bs=1 seek=$((L2 + 8 * $1)) conv=notrunc status=none
}
qemu_count () {   # leaks|corruptions
  qemu-img check --output=json "$T/a.qcow2" 2>/dev/null | jq ".$1 // 0"
}

# same_report_as_qemu [OPTIONS] IMAGE: rb-check's JSON report (without its own
# leaks-past-eof key) equals qemu-img check's, key for key.
same_report_as_qemu () {
  local want got
  want=$(qemu-img check --output=json "$@" 2>/dev/null | jq -S .)
  got=$("$RB_CHECK" --output=json "$@" | jq -S 'del(."leaks-past-eof")')
  [ "$got" = "$want" ] || { diff <(echo "$want") <(echo "$got"); return 1; }
}

@test "rb-check: a clean image is clean, as qemu-img check says (exit 0)" {
  run "$RB_CHECK" --json "$T/a.qcow2"
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq '.corruptions // 0')" = 0 ]
  [ "$(echo "$output" | jq '.leaks // 0')" = 0 ]
  same_report_as_qemu "$T/a.qcow2"
}

@test "rb-check: an unreferenced cluster is a leak (exit 3), counted as qemu-img counts it; --repair leaks fixes it" {
  set_l2_entry 1 0
  want=$(qemu_count leaks)
  [ "$want" -eq 1 ]
  run "$RB_CHECK" --json "$T/a.qcow2"
  [ "$status" -eq 3 ]
  [ "$(echo "$output" | jq .leaks)" = "$want" ]
  same_report_as_qemu "$T/a.qcow2"
  run "$RB_CHECK" --repair leaks "$T/a.qcow2"
  [ "$status" -eq 0 ]
  run qemu-img check "$T/a.qcow2"
  [[ "$output" == *"No errors were found"* ]]
}

@test "rb-check: a cluster referenced twice with refcount 1 is a corruption (exit 2), as qemu-img counts it" {
  set_l2_entry 1 "$(l2_entry 0)"
  want=$(qemu_count corruptions)
  [ "$want" -ge 1 ]
  run "$RB_CHECK" --json "$T/a.qcow2"
  [ "$status" -eq 2 ]
  [ "$(echo "$output" | jq .corruptions)" = "$want" ]
  [ "$(echo "$output" | jq '.leaks // 0')" = "$(qemu_count leaks)" ]
  same_report_as_qemu "$T/a.qcow2"
}

@test "rb-check: refcounts past the end of the file are leaks qemu-img misses" {
  # Raise the refcount of a cluster far past EOF inside the first refcount block.
  rt=$(od -An -tu8 --endian=big -j 48 -N 8 "$T/a.qcow2" | tr -d ' ')
  rb=$(od -An -tu8 --endian=big -j "$rt" -N 8 "$T/a.qcow2" | tr -d ' ')
  printf '\x00\x01' | dd of="$T/a.qcow2" bs=1 seek=$((rb + 2 * 1000)) conv=notrunc status=none
  run qemu-img check "$T/a.qcow2"
  [[ "$output" == *"No errors were found"* ]]
  run "$RB_CHECK" --json "$T/a.qcow2"
  [ "$status" -eq 3 ]
  [ "$(echo "$output" | jq '."leaks-past-eof"')" = 1 ]
  run "$RB_CHECK" --repair leaks "$T/a.qcow2"
  [ "$status" -eq 0 ]
  run "$RB_CHECK" "$T/a.qcow2"
  [ "$status" -eq 0 ]
}

@test "rb-check: usage errors exit 1 with a message; --help and --version work" {
  run "$RB_CHECK"
  [ "$status" -eq 1 ]
  run "$RB_CHECK" --repair sometimes "$T/a.qcow2"
  [ "$status" -eq 1 ]
  [[ "$output" == *"--repair takes"* ]]
  run "$RB_CHECK" "$T/missing.qcow2"
  [ "$status" -eq 1 ]
  [[ "$output" == "rb-check: "*"missing.qcow2"* ]]
  run "$RB_CHECK" --help
  [ "$status" -eq 0 ]
  [[ "$output" == *usage* ]]
  run "$RB_CHECK" --version
  [[ "$output" == "rb-check "* ]]
}
