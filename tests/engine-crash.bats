#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# kill -9 in the middle of a write workload, at many points: no corruption (leaks allowed),
# and every write acknowledged before the last completed flush is present.

RB_TOOL="$top_builddir/tests/rb-tool"

crash_loop () {   # qemu-img create options, size, rounds
  local T="$BATS_TEST_TMPDIR" i delay
  for i in $(seq 1 "$3"); do
    rm -rf "$T/d" "$T/img.qcow2"; mkdir -p "$T/d"
    qemu-img create -q -f qcow2 -o "$1" "$T/img.qcow2" "$2"
    qemu-img convert -O raw "$T/img.qcow2" "$T/d/mirror"
    cp "$T/d/mirror" "$T/d/flushed"     # the state before the first flush: the empty disk
    "$RB_TOOL" random "$T/img.qcow2" "$T/d" "$i" 1000000 2>"$T/err" &
    pid=$!
    delay=$(( (i * 37) % 400 + 20 ))
    sleep "$(printf '0.%03d' "$delay")"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    run qemu-img check "$T/img.qcow2"
    # 0 = clean, 3 = leaks only: both allowed after a crash.
    [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "round $i: $output"; return 1; }
    [[ "$output" != *"ERROR"* ]] || { echo "round $i: $output"; return 1; }
    run "$RB_TOOL" verify "$T/img.qcow2" "$T/d"
    [ "$status" -eq 0 ] || { echo "round $i: $output"; return 1; }
  done
}

@test "kill -9 during writes never corrupts a 64K-cluster image and keeps flushed data" {
  crash_loop cluster_size=65536 16M 12
}

@test "kill -9 during writes never corrupts a 512-byte-cluster image (refcount growth)" {
  crash_loop cluster_size=512 4M 12
}

@test "kill -9 during writes never corrupts an extended-L2 image" {
  crash_loop cluster_size=65536,extended_l2=on 16M 8
}
