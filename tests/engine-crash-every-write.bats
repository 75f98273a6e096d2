#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Crash at every write: an LD_PRELOAD shim lets the N-th write to the image land (whole or
# torn at 512 bytes) and kills the process, for every N of a workload.  qemu-img check must
# never find corruption, rblock must reopen the image, flushed data must be there.

RB_TOOL="$top_builddir/tests/rb-tool"
SHIM="$top_builddir/tests/.libs/crashshim.so"

qemu_check_clean_or_leaks () {
  run qemu-img check "$1"
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "$output"; return 1; }
  [[ "$output" != *ERROR* ]] || { echo "$output"; return 1; }
}

# every_write OPTIONS SIZE OPS [torn]
# With STALE=N, N KiB of 0x5a bytes follow the image's clusters in the file: free clusters
# holding old data, which allocations reuse and must zero (fallocate, itself a crash point).
every_write () {
  local T="$BATS_TEST_TMPDIR" n total
  qemu-img create -q -f qcow2 -o "$1" "$T/base.qcow2" "$2"
  qemu-img convert -O raw "$T/base.qcow2" "$T/base.raw"
  if [ -n "${STALE:-}" ]; then
    head -c $((STALE * 1024)) /dev/zero | tr '\0' '\132' >> "$T/base.qcow2"
    qemu_check_clean_or_leaks "$T/base.qcow2"
  fi
  # Count the writes of the whole workload.
  mkdir -p "$T/d"; cp "$T/base.qcow2" "$T/img.qcow2"; cp "$T/base.raw" "$T/d/mirror"
  RB_CRASH_FILE=img.qcow2 RB_CRASH_COUNT="$T/count" RB_CRASH_ZEROS="$T/zeros" LD_PRELOAD="$SHIM" \
    "$RB_TOOL" random "$T/img.qcow2" "$T/d" 5 "$3"
  total=$(cat "$T/count")
  [ "$total" -gt 20 ]
  for n in $(seq 1 "$total"); do
    rm -rf "$T/d"; mkdir -p "$T/d"
    cp "$T/base.qcow2" "$T/img.qcow2"; cp "$T/base.raw" "$T/d/mirror"; cp "$T/base.raw" "$T/d/flushed"
    run env RB_CRASH_FILE=img.qcow2 RB_CRASH_AT="$n" ${4:+RB_CRASH_TORN=1} LD_PRELOAD="$SHIM" \
      "$RB_TOOL" random "$T/img.qcow2" "$T/d" 5 "$3"
    [ "$status" -eq 137 ] || { echo "write $n: not killed ($status): $output"; return 1; }
    run qemu-img check "$T/img.qcow2"
    [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "write $n: $output"; return 1; }
    [[ "$output" != *ERROR* ]] || { echo "write $n: $output"; return 1; }
    run "$RB_TOOL" verify "$T/img.qcow2" "$T/d"
    [ "$status" -eq 0 ] || { echo "write $n: $output"; return 1; }
  done
  echo "# crashed at each of $total writes" >&3
}

@test "crash at every write (4K clusters): never corrupt, reopens, flushed data kept" {
  every_write cluster_size=4096 4M 90
}

@test "crash at every write, torn at 512 bytes (512-byte clusters, refcount growth)" {
  every_write cluster_size=512 1M 70 torn
}

@test "crash at every write (extended L2 over 64K clusters, torn)" {
  every_write cluster_size=65536,extended_l2=on 4M 70 torn
}

@test "crash at every write and zeroing, reusing free clusters that hold old data: never stale data, never corrupt" {
  STALE=512 every_write cluster_size=4096 4M 90
  [ "$(cat "$BATS_TEST_TMPDIR/zeros")" -gt 0 ]
}

@test "rb-convert killed at every write of its output: OUTPUT is absent or valid" {
  local T="$BATS_TEST_TMPDIR" n total
  truncate -s 6M "$T/src.raw"
  dd if=/dev/urandom of="$T/src.raw" bs=64k count=20 seek=3 conv=notrunc status=none
  dd if=/dev/urandom of="$T/src.raw" bs=4k count=9 seek=1000 conv=notrunc status=none
  RB_CRASH_FILE=out.qcow2 RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" \
    "$top_builddir/utils/rb-convert" -c 4K "$T/src.raw" "$T/out.qcow2"
  total=$(cat "$T/count")
  rm -f "$T/out.qcow2"
  [ "$total" -gt 3 ]
  for n in $(seq 1 "$total"); do
    run env RB_CRASH_FILE=out.qcow2 RB_CRASH_AT="$n" LD_PRELOAD="$SHIM" \
      "$top_builddir/utils/rb-convert" -c 4K "$T/src.raw" "$T/out.qcow2"
    [ "$status" -eq 137 ]
    if [ -e "$T/out.qcow2" ]; then
      qemu-img check "$T/out.qcow2"
      qemu-img compare "$T/src.raw" "$T/out.qcow2"
    fi
    rm -f "$T"/.out.qcow2.tmp.*
  done
  echo "# rb-convert: killed at each of $total writes" >&3
}

@test "rb-delta killed at every write of its output: OUTPUT is absent or valid" {
  local T="$BATS_TEST_TMPDIR" n total x
  truncate -s 6M "$T/base.raw"
  dd if=/dev/urandom of="$T/base.raw" bs=64k count=40 seek=3 conv=notrunc status=none
  cp "$T/base.raw" "$T/new.raw"
  dd if=/dev/urandom of="$T/new.raw" bs=4k count=9 seek=100 conv=notrunc status=none
  dd if=/dev/zero of="$T/new.raw" bs=4k count=4 seek=200 conv=notrunc status=none
  dd if=/dev/urandom of="$T/new.raw" bs=4k count=5 seek=1400 conv=notrunc status=none
  for x in "" --extended-l2; do
    RB_CRASH_FILE=out.qcow2 RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" \
      "$top_builddir/utils/rb-delta" -c 16K $x "$T/base.raw" "$T/new.raw" "$T/out.qcow2"
    total=$(cat "$T/count")
    rm -f "$T/out.qcow2"
    [ "$total" -gt 5 ]
    for n in $(seq 1 "$total"); do
      run env RB_CRASH_FILE=out.qcow2 RB_CRASH_AT="$n" LD_PRELOAD="$SHIM" \
        "$top_builddir/utils/rb-delta" -c 16K $x "$T/base.raw" "$T/new.raw" "$T/out.qcow2"
      [ "$status" -eq 137 ] || { echo "write $n: not killed ($status): $output"; return 1; }
      if [ -e "$T/out.qcow2" ]; then
        qemu-img check "$T/out.qcow2"
        qemu-img compare "$T/new.raw" "$T/out.qcow2"
      fi
      rm -f "$T/out.qcow2" "$T"/.out.qcow2.tmp.*
    done
    echo "# rb-delta $x: killed at each of $total writes" >&3
  done
}
