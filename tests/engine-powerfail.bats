#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Power-fail replay: every crash state that honours the sync barriers checks clean;
# ignoring the barriers (negative control) must produce corruption.

load helpers

RB_TOOL="$top_builddir/tests/rb-tool"

# record OPTIONS SIZE: run a logged workload; leaves $T/base.qcow2 and $T/io.log.
record () {
  T="$BATS_TEST_TMPDIR"
  mkdir -p "$T/d"
  qemu-img create -q -f qcow2 -o "$1" "$T/base.qcow2" "$2"
  cp "$T/base.qcow2" "$T/img.qcow2"
  qemu-img convert -O raw "$T/img.qcow2" "$T/d/mirror"
  RBLOCK_IOLOG="$T/io.log" "$RB_TOOL" random "$T/img.qcow2" "$T/d" 11 400
  [ -s "$T/io.log" ]
}

@test "power-fail states of a 512-byte-cluster workload all check clean" {
  record cluster_size=512 2M
  run python3 "$top_srcdir/tests/replay.py" "$T/base.qcow2" "$T/io.log" "$T" 150 1
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == "150 states, 0 corrupt" ]]
}

@test "power-fail states of a 64K-cluster extended-L2 workload all check clean" {
  record cluster_size=65536,extended_l2=on 8M
  run python3 "$top_srcdir/tests/replay.py" "$T/base.qcow2" "$T/io.log" "$T" 150 2
  echo "$output"
  [[ "$output" == "150 states, 0 corrupt" ]]
}

@test "negative control: ignoring flush barriers produces corrupt states (the harness bites)" {
  record cluster_size=512 2M
  run python3 "$top_srcdir/tests/replay.py" "$T/base.qcow2" "$T/io.log" "$T" 60 3 --ignore-barriers
  echo "$output"
  [[ "$output" =~ ^60\ states,\ ([0-9]+)\ corrupt$ ]]
  [ "${BASH_REMATCH[1]}" -gt 0 ]
}

# sequential OPTIONS SIZE CHUNK N: N sequential writes of CHUNK bytes (each its own open and
# close: a flush) into a new image, logged; leaves $T/base.qcow2 and $T/io.log.
sequential () {
  T="$BATS_TEST_TMPDIR"
  qemu-img create -q -f qcow2 -o "$1" "$T/base.qcow2" "$2"
  cp "$T/base.qcow2" "$T/img.qcow2"
  local i
  for i in $(seq 0 $(($4 - 1))); do
    RBLOCK_IOLOG="$T/io.log" "$RB_TOOL" write "$T/img.qcow2" $((i * $3)) "$3" $((i + 1))
  done
  qemu_check_clean "$T/img.qcow2"
  # The data, against what was written (qemu-io exits 1 on a pattern mismatch).
  local reads=(-c "read -P 0 $(($4 * $3)) $(( $(qemu-img info --output=json "$T/img.qcow2" | jq '."virtual-size"') - $4 * $3 ))")
  for i in $(seq 0 $(($4 - 1))); do
    reads+=(-c "read -P $((i + 1)) $((i * $3)) $3")
  done
  qemu-io -r "${reads[@]}" "$T/img.qcow2" > /dev/null
}

# A new refcount block is written durably by itself (pwritev2 RWF_DSYNC: a 'D' record), not
# followed by a whole-file sync; the replay keeps such a write once the crash is past it.
@test "power-fail states of sequential writes creating refcount blocks (durable by themselves) check clean" {
  sequential cluster_size=512 8M 1048576 4
  run python3 "$top_srcdir/tests/replay.py" --count "$T/io.log"
  echo "$output"
  [[ "$output" =~ ^([0-9]+)\ writes,\ ([0-9]+)\ durable,\ ([0-9]+)\ syncs$ ]]
  # 4 MiB of 512-byte clusters: 32 ranges of 256 clusters, each with a new block.
  [ "${BASH_REMATCH[2]}" -ge 30 ]
  run python3 "$top_srcdir/tests/replay.py" "$T/base.qcow2" "$T/io.log" "$T" 150 4
  echo "$output"
  [[ "$output" == "150 states, 0 corrupt" ]]
}

@test "negative control: durable writes replayed as plain ones produce corrupt states" {
  sequential cluster_size=512 8M 1048576 4
  run python3 "$top_srcdir/tests/replay.py" "$T/base.qcow2" "$T/io.log" "$T" 150 5 --ignore-durable
  echo "$output"
  [[ "$output" =~ ^150\ states,\ ([0-9]+)\ corrupt$ ]]
  [ "${BASH_REMATCH[1]}" -gt 0 ]
}
