#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Dirty bitmaps and crashes: the engine (rb-tool) and nbdkit killed at every write to the image
# (tests/crashshim.c), including every write of the bitmap store at close.  After each kill
# qemu-img check finds no corruption and each enabled bitmap is either in use (inconsistent to
# QEMU) or consistent and complete; the disabled bitmap never changes.

load helpers
load bitmap-helpers

bats_require_minimum_version 1.5.0

RB_TOOL="$top_builddir/tests/rb-tool"
SHIM="$top_builddir/tests/.libs/crashshim.so"

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# make_base CLUSTER_SIZE SIZE: $T/base.qcow2 with bitmaps g512, g64k (enabled) and off
# (disabled), each with something dirty; maps in $T/before.NAME, data in $T/base.raw.
make_base () {
  qemu-img create -q -f qcow2 -o cluster_size="$1" "$T/base.qcow2" "$2"
  qemu-img bitmap --add -g 512 "$T/base.qcow2" g512
  qemu-img bitmap --add -g 64K "$T/base.qcow2" g64k
  qemu-img bitmap --add -g 4K "$T/base.qcow2" off
  qemu-io -c 'write -P 1 4000 9000' -c 'write -P 2 3M 300k' "$T/base.qcow2" >/dev/null
  qemu-img bitmap --disable "$T/base.qcow2" off
  qemu-io -c 'write -P 3 1M 8k' "$T/base.qcow2" >/dev/null
  for b in g512 g64k off; do qemu_map "$T/base.qcow2" "$b" > "$T/before.$b"; done
  qemu-img convert -O raw "$T/base.qcow2" "$T/base.raw"
  SIZE=$(stat -c %s "$T/base.raw")
}

# after_crash IMAGE WRITES N: the image checks without corruption; each enabled bitmap is in use,
# or consistent and holding exactly before + WRITES (or, with nothing written, exactly before);
# the disabled one is untouched.  Counts consistent ones in $T/consistent.
after_crash () {
  local img=$1 writes=$2 n=$3 b g flags
  run qemu-img check "$img"
  { [ "$status" -eq 0 ] || [ "$status" -eq 3 ]; } && [[ "$output" != *ERROR* ]] ||
    { echo "write $n: $output"; return 1; }
  bitmap_names "$img" > "$T/names"
  grep -qx "off 4096 " "$T/names" || { echo "write $n: off changed:"; cat "$T/names"; return 1; }
  for b in g512:512 g64k:65536; do
    g=${b#*:}; b=${b%:*}
    flags=$(awk -v n="$b" '$1 == n { print $3 }' "$T/names")
    [ "$flags" = in-use,auto ] && continue
    [ "$flags" = auto ] || { echo "write $n: $b has flags '$flags'"; return 1; }
    qemu_dirty "$img" "$b" > "$T/got"
    bitmap_io expect "$SIZE" "$g" "$T/before.$b" > "$T/none"
    if cmp -s "$T/got" "$T/none"; then
      # Consistent with nothing new: then nothing was written.
      qemu-img compare -q "$T/base.raw" "$img" || { echo "write $n: $b misses writes"; return 1; }
    else
      assert_bitmap_holds "$img" "$b" "$g" "$T/before.$b" "$writes" ||
        { echo "write $n: $b is consistent but wrong"; return 1; }
    fi
    echo "$n" >> "$T/consistent"
    # A new directory: the disabled bitmap's entry was copied into it.
    diff <(qemu_map "$img" off) "$T/before.off" || { echo "write $n: off's bits changed"; return 1; }
  done
}

# engine_every_write NOPS [torn]: rb-tool's random workload killed at each of its writes.
engine_every_write () {
  local n total nops=$1
  make_base 4096 8M
  mkdir -p "$T/d"; cp "$T/base.qcow2" "$T/img.qcow2"; cp "$T/base.raw" "$T/d/mirror"
  RB_CRASH_FILE=img.qcow2 RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" \
    "$RB_TOOL" random "$T/img.qcow2" "$T/d" 11 "$nops"
  total=$(cat "$T/count")
  cp "$T/d/touched" "$T/all"
  after_crash "$T/img.qcow2" "$T/all" all
  [ "$total" -gt 20 ]
  rm -f "$T/consistent"
  for n in $(seq 1 "$total"); do
    rm -rf "$T/d"; mkdir -p "$T/d"
    cp "$T/base.qcow2" "$T/img.qcow2"; cp "$T/base.raw" "$T/d/mirror"; cp "$T/base.raw" "$T/d/flushed"
    run env RB_CRASH_FILE=img.qcow2 RB_CRASH_AT="$n" ${1:+RB_CRASH_TORN=1} LD_PRELOAD="$SHIM" \
      "$RB_TOOL" random "$T/img.qcow2" "$T/d" 11 "$nops"
    [ "$status" -eq 137 ] || { echo "write $n: not killed ($status): $output"; return 1; }
    after_crash "$T/img.qcow2" "$T/all" "$n"
    run "$RB_TOOL" verify "$T/img.qcow2" "$T/d"
    [ "$status" -eq 0 ] || { echo "write $n: $output"; return 1; }
  done
  # Both outcomes were reached: the kills before the switch to the new directory left the
  # bitmaps in use, those after it (the frees) left them consistent.
  [ -s "$T/consistent" ] && [ "$(sort -u "$T/consistent" | wc -l)" -lt "$total" ]
  echo "# crashed at each of $total writes; consistent after $(sort -u "$T/consistent" | wc -l)" >&3
}

@test "engine killed at every write (4K clusters, 3 bitmaps): each bitmap in use or complete" {
  engine_every_write 24
}

@test "engine killed at every write, torn at 512 bytes: each bitmap in use or complete" {
  engine_every_write 12 torn
}

@test "nbdkit killed at every write (2 connections, then a clean stop): each bitmap in use or complete" {
  local n total
  make_base 65536 16M
  cp "$T/base.qcow2" "$T/img.qcow2"; cp "$T/base.raw" "$T/mirror.raw"
  RB_CRASH_FILE=img.qcow2 RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" start_rblock "$T/img.qcow2"
  bitmap_io workload "$URI" "$T/mirror.raw" 7 8 2 "$T/all"
  stop_rblock
  total=$(cat "$T/count")
  after_crash "$T/img.qcow2" "$T/all" all
  qemu-img compare -q "$T/mirror.raw" "$T/img.qcow2"
  [ "$total" -gt 10 ]
  rm -f "$T/consistent"
  for n in $(seq 1 "$total"); do
    cp "$T/base.qcow2" "$T/img.qcow2"; cp "$T/base.raw" "$T/mirror.raw"
    RB_CRASH_FILE=img.qcow2 RB_CRASH_AT="$n" LD_PRELOAD="$SHIM" start_rblock "$T/img.qcow2"
    bitmap_io workload "$URI" "$T/mirror.raw" 7 8 2 "$T/ranges" 2>/dev/null || true
    stop_rblock
    after_crash "$T/img.qcow2" "$T/all" "$n"
  done
  [ -s "$T/consistent" ] && [ "$(sort -u "$T/consistent" | wc -l)" -lt "$total" ]
  echo "# nbdkit killed at each of $total writes; consistent after $(sort -u "$T/consistent" | wc -l)" >&3
}
