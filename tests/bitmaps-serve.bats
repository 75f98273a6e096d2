#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Persistent dirty bitmaps kept valid while the plugin serves: after writes, zeros and trims on
# several connections and a clean stop, QEMU (qemu-nbd -B, nbdinfo --map) reads each enabled
# bitmap as consistent and holding exactly what was dirty before plus every request.

load helpers
load bitmap-helpers

bats_require_minimum_version 1.5.0

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# make_image CLUSTER_SIZE: 64 MiB with bitmaps g512, g64k, g2m (enabled) and off (disabled),
# dirtied by QEMU before rblock sees them; their maps saved as $T/before.NAME.
make_image () {
  qemu-img create -q -f qcow2 -o cluster_size="$1" "$T/d.qcow2" 64M
  qemu-img bitmap --add -g 512 "$T/d.qcow2" g512
  qemu-img bitmap --add -g 64K "$T/d.qcow2" g64k
  qemu-img bitmap --add -g 2M "$T/d.qcow2" g2m
  qemu-img bitmap --add -g 64K --disable "$T/d.qcow2" off
  qemu-io -c 'write -P 1 1000 70000' -c 'write -P 2 40M 1M' -c 'write -z 7M 4097' "$T/d.qcow2" >/dev/null
  qemu-img bitmap --disable "$T/d.qcow2" g2m        # off records one write of its own, then stops
  qemu-img bitmap --enable "$T/d.qcow2" off
  qemu-io -c 'write -P 3 20M 5000' "$T/d.qcow2" >/dev/null
  qemu-img bitmap --disable "$T/d.qcow2" off
  qemu-img bitmap --enable "$T/d.qcow2" g2m
  for b in g512 g64k g2m off; do qemu_map "$T/d.qcow2" "$b" > "$T/before.$b"; done
  grep -q dirty "$T/before.off"
  qemu-img convert -O raw "$T/d.qcow2" "$T/mirror.raw"
}

# served_bitmaps_hold_every_request CLUSTER_SIZE SEED
served_bitmaps_hold_every_request () {
  make_image "$1"
  start_rblock "$T/d.qcow2"
  bitmap_io workload "$URI" "$T/mirror.raw" "$2" 80 4 "$T/ranges"
  stop_rblock
  qemu_check_clean "$T/d.qcow2"
  qemu-img compare -q "$T/mirror.raw" "$T/d.qcow2"
  [ "$(bitmap_flags "$T/d.qcow2" g512)" = auto ]
  [ "$(bitmap_flags "$T/d.qcow2" g2m)" = auto ]
  [ "$(bitmap_flags "$T/d.qcow2" off)" = "" ]
  for b in g512:512 g64k:65536 g2m:2097152; do
    assert_bitmap_holds "$T/d.qcow2" "${b%:*}" "${b#*:}" "$T/before.${b%:*}" "$T/ranges"
  done
  # The disabled bitmap is exactly as it was.
  qemu_map "$T/d.qcow2" off | diff "$T/before.off" -
}

@test "4K clusters: four connections of writes, zeros and trims; each enabled bitmap holds exactly old + new" {
  served_bitmaps_hold_every_request 4096 1
}

@test "64K clusters: four connections of writes, zeros and trims; each enabled bitmap holds exactly old + new" {
  served_bitmaps_hold_every_request 65536 2
}

@test "two sessions in a row: the bitmap holds both, the old clusters are freed (check clean, no leak)" {
  make_image 65536
  start_rblock "$T/d.qcow2"
  bitmap_io workload "$URI" "$T/mirror.raw" 3 20 2 "$T/r1"
  stop_rblock
  start_rblock "$T/d.qcow2"
  bitmap_io workload "$URI" "$T/mirror.raw" 4 20 2 "$T/r2"
  stop_rblock
  qemu_check_clean "$T/d.qcow2"
  qemu-img compare -q "$T/mirror.raw" "$T/d.qcow2"
  assert_bitmap_holds "$T/d.qcow2" g64k 65536 "$T/before.g64k" "$T/r1" "$T/r2"
  [ "$(bitmap_flags "$T/d.qcow2" g64k)" = auto ]
}

@test "while serving, enabled bitmaps are in use on disk (a crash would leave them inconsistent); the disabled one is not" {
  make_image 65536
  start_rblock "$T/d.qcow2"
  [ "$(bitmap_flags "$T/d.qcow2" g64k)" = auto ]      # nothing written yet: untouched
  nbdsh -u "$URI" -c 'h.pwrite(b"\x05" * 512, 3 << 20)'
  [ "$(bitmap_flags "$T/d.qcow2" g512)" = in-use,auto ]
  [ "$(bitmap_flags "$T/d.qcow2" g64k)" = in-use,auto ]
  [ "$(bitmap_flags "$T/d.qcow2" off)" = "" ]
  stop_rblock
  [ "$(bitmap_flags "$T/d.qcow2" g64k)" = auto ]
  qemu_check_clean "$T/d.qcow2"
}

@test "a bitmap of an unknown type or with an unknown flag is marked in use with a warning naming it; the others are kept" {
  make_image 65536
  patch_bitmap "$T/d.qcow2" g2m type 7
  patch_bitmap "$T/d.qcow2" off flags 0x8                      # disabled, with a reserved flag
  start_rblock "$T/d.qcow2" -v --log=stderr   # -v: a daemon keeps its stderr
  nbdsh -u "$URI" -c 'h.pwrite(b"\x05" * 4096, 9 << 20)'
  stop_rblock
  cat "$T/nbdkit.err"
  grep -q "warning: .*bitmap 'g2m' is marked in use: .*unknown bitmap type" "$T/nbdkit.err"
  grep -q "warning: .*bitmap 'off' is marked in use: .*unknown flags" "$T/nbdkit.err"
  [ "$(grep -c 'error: warning' "$T/nbdkit.err")" -eq 2 ]
  # Give them back what QEMU understands: both are now in use (inconsistent), nothing else moved.
  patch_bitmap "$T/d.qcow2" g2m type 1
  patch_bitmap "$T/d.qcow2" off flags 0x1
  qemu_check_clean "$T/d.qcow2"
  [ "$(bitmap_flags "$T/d.qcow2" g2m)" = in-use,auto ]
  [ "$(bitmap_flags "$T/d.qcow2" off)" = in-use ]
  [ "$(bitmap_flags "$T/d.qcow2" g64k)" = auto ]
  echo "$((9 << 20)) 4096" > "$T/r"
  assert_bitmap_holds "$T/d.qcow2" g64k 65536 "$T/before.g64k" "$T/r"
}

@test "a bitmap already in use stays in use and untracked; the others are kept" {
  make_image 65536
  # QEMU killed while writing: its enabled bitmaps stay marked in use.
  qemu-io -c 'write -P 9 30M 4k' -c abort "$T/d.qcow2" >/dev/null 2>&1 || true
  [ "$(bitmap_flags "$T/d.qcow2" g64k)" = in-use,auto ]
  qemu-img check -q -r leaks "$T/d.qcow2" >/dev/null 2>&1 || true
  qemu-img bitmap --remove "$T/d.qcow2" g512
  qemu-img bitmap --add -g 4K "$T/d.qcow2" fresh
  start_rblock "$T/d.qcow2" -v --log=stderr   # -v: a daemon keeps its stderr
  nbdsh -u "$URI" -c 'h.pwrite(b"\x05" * 4096, 9 << 20)'
  stop_rblock
  qemu_check_clean "$T/d.qcow2"
  [ "$(bitmap_flags "$T/d.qcow2" g64k)" = in-use,auto ]
  [ "$(bitmap_flags "$T/d.qcow2" fresh)" = auto ]
  [ "$(qemu_dirty "$T/d.qcow2" fresh)" = "$((9 << 20)) 4096" ]
  ! grep -q 'error: warning' "$T/nbdkit.err"
}

@test "storing the bitmaps fails at close: they stay in use, the image checks clean without leaks" {
  make_image 65536
  # The first bitmap write marks them in use; the second is the first of the store at close.
  RBLOCK_FAULT=bitmap_write:EIO:after=1 start_rblock "$T/d.qcow2" -v --log=stderr   # -v: a daemon keeps its stderr
  nbdsh -u "$URI" -c 'h.pwrite(b"\x05" * 4096, 9 << 20)'
  stop_rblock
  grep -q "injected fault at bitmap_write" "$T/nbdkit.err"
  qemu_check_clean "$T/d.qcow2"
  [ "$(bitmap_flags "$T/d.qcow2" g64k)" = in-use,auto ]
  [ "$(bitmap_flags "$T/d.qcow2" off)" = "" ]
  qemu-io -c 'read -P 5 9M 4k' "$T/d.qcow2" | grep -q 'read 4096/4096'
}

@test "one client's bits, another's writes: 8 connections hammer the same bitmap words at 2M granularity" {
  qemu-img create -q -f qcow2 "$T/d.qcow2" 64M
  qemu-img bitmap --add -g 2M "$T/d.qcow2" g
  qemu-img convert -O raw "$T/d.qcow2" "$T/mirror.raw"
  start_rblock "$T/d.qcow2"
  bitmap_io workload "$URI" "$T/mirror.raw" 5 200 8 "$T/ranges"
  stop_rblock
  qemu_check_clean "$T/d.qcow2"
  qemu-img compare -q "$T/mirror.raw" "$T/d.qcow2"
  assert_bitmap_holds "$T/d.qcow2" g 2097152 - "$T/ranges"
}
