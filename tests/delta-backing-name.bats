#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-delta stores only a backing name that resolves from OUTPUT's folder (qemu-img create -b
# is the oracle for refusing; qemu-img info/compare for what is stored).

load helpers

RB_DELTA="$top_builddir/utils/rb-delta"

setup () {
  T="$BATS_TEST_TMPDIR"
  mkdir -p "$T/sub" "$T/elsewhere"
  truncate -s 4M "$T/base.raw"
  dd if=/dev/urandom of="$T/base.raw" bs=1M count=2 seek=1 conv=notrunc status=none
  cp "$T/base.raw" "$T/new.raw"
  dd if=/dev/urandom of="$T/new.raw" bs=4k count=1 seek=300 conv=notrunc status=none
  cd "$T"
}

@test "rb-delta: BASE relative to the current folder, OUTPUT elsewhere: refused in one line, as qemu-img create -b" {
  run "$RB_DELTA" base.raw new.raw sub/d.qcow2
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "rb-delta: base.raw: "*"sub/base.raw"*"--relative"* ]] || { echo "$output"; false; }
  [ ! -e sub/d.qcow2 ]
  [ -z "$(ls -A sub)" ]
  # From a subfolder, a name relative to it but OUTPUT one folder up: also unresolvable.
  run bash -c "cd sub && '$RB_DELTA' ../base.raw ../new.raw ../d.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"../../base.raw"* ]] || { echo "$output"; false; }
  [ ! -e d.qcow2 ]
  # The oracle refuses the same name for the same place.
  run qemu-img create -q -f qcow2 -b base.raw -F raw sub/q.qcow2
  [ "$status" -ne 0 ]
  [[ "$output" == *"sub/base.raw"* ]]
}

@test "rb-delta: a relative name that would find another file of that name is refused too" {
  head -c 4M /dev/urandom > sub/base.raw
  run "$RB_DELTA" base.raw new.raw sub/d.qcow2
  [ "$status" -eq 2 ]
  [[ "$output" == *"another file"* ]] || { echo "$output"; false; }
  [ ! -e sub/d.qcow2 ]
}

@test "rb-delta: the names that resolve are stored as given and qemu-img follows them from anywhere" {
  # Relative, OUTPUT in the same folder.
  "$RB_DELTA" base.raw new.raw d1.qcow2
  # Relative, OUTPUT in the current folder, which is not BASE's.
  (cd sub && "$RB_DELTA" ../base.raw ../new.raw d2.qcow2)
  # Absolute.
  "$RB_DELTA" "$T/base.raw" new.raw sub/d3.qcow2
  "$RB_DELTA" --relative base.raw new.raw sub/d4.qcow2
  cd "$T/elsewhere"
  [ "$(qemu-img info --output=json "$T/d1.qcow2" | jq -r '."backing-filename"')" = base.raw ]
  [ "$(qemu-img info --output=json "$T/sub/d2.qcow2" | jq -r '."backing-filename"')" = ../base.raw ]
  [ "$(qemu-img info --output=json "$T/sub/d3.qcow2" | jq -r '."backing-filename"')" = "$T/base.raw" ]
  [ "$(qemu-img info --output=json "$T/sub/d4.qcow2" | jq -r '."backing-filename"')" = ../base.raw ]
  for d in "$T/d1.qcow2" "$T/sub/d2.qcow2" "$T/sub/d3.qcow2" "$T/sub/d4.qcow2"; do
    qemu-img info --backing-chain "$d" > /dev/null
    qemu_check_clean "$d"
    qemu-img compare "$d" "$T/new.raw"
  done
}
