#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-resize against qemu-img resize on twin images (growth with L1 and refcount table growth,
# zeroing over a larger backing file, shrinking with snapshots, persistent dirty bitmaps resized
# with the disk); killed at every write the image is the old or the new one; bad input leaves it
# as is.

load helpers
load chain-helpers
load bitmap-helpers

RBR="$top_builddir/utils/rb-resize"

# twin_resize OPTS SIZE...: resize twins A (rb-resize) and B (qemu-img resize)
# through each SIZE argument; after each the sizes, views and file checks agree.
twin_resize () {
  local T="$BATS_TEST_TMPDIR" opts=$1 arg shrink; shift
  mk_image "$T/a.qcow2" 8M "$opts"
  cp "$T/a.qcow2" "$T/b.qcow2"
  for arg in "$@"; do
    shrink=; [[ "$arg" == -* ]] || [[ "$arg" == *s ]] && shrink=--shrink
    arg=${arg%s}
    run "$RBR" $shrink "$T/a.qcow2" -- "$arg"
    [ "$status" -eq 0 ] || { echo "rb-resize $arg: $output"; return 1; }
    [ "$output" = "Image resized." ] || [ -n "$shrink" ]
    qemu-img resize -q $shrink "$T/b.qcow2" -- "$arg"
    qemu_check_clean "$T/a.qcow2" || { echo "after $arg"; return 1; }
    [ "$(qemu-img info --output=json "$T/a.qcow2" | jq '.["virtual-size"]')" = \
      "$(qemu-img info --output=json "$T/b.qcow2" | jq '.["virtual-size"]')" ] ||
      { echo "sizes differ after $arg"; return 1; }
    qemu-img compare -q "$T/a.qcow2" "$T/b.qcow2" || { echo "views differ after $arg"; return 1; }
  done
}

@test "rb-resize grows and shrinks as qemu-img resize (64K and 4K clusters, version 2, extended L2)" {
  twin_resize "" +1G 20000256s 2G -1Gs 4Ms
  twin_resize cluster_size=4096 +500M 3Ms +100M
  twin_resize compat=0.10 +1G 1000448s 3000320
  twin_resize extended_l2=on 1G 2500096s 100M
}

@test "rb-resize: an L1 table of many clusters (4K and 512-byte clusters, 64-bit refcounts)" {
  local T="$BATS_TEST_TMPDIR"
  # (qemu-img resize --shrink walks every cluster: the shrinks stay small.)
  twin_resize cluster_size=4096,refcount_bits=64 +150G
  twin_resize cluster_size=512,refcount_bits=64 +3G
  twin_resize cluster_size=512 +30M 1Ms
  mk_image "$T/c.qcow2" 8M cluster_size=4096,refcount_bits=64
  "$RBR" -q "$T/c.qcow2" 150G
  [ "$(qemu-img info --output=json "$T/c.qcow2" | jq '.["virtual-size"]')" = $((150 << 30)) ]
  # L1 size (header bytes 36..39): 75 clusters of entries.
  [ "$(od -An -tu4 --endian=big -j36 -N4 "$T/c.qcow2")" -eq 76800 ]
  qemu_check_clean "$T/c.qcow2"
}

@test "growing over a larger backing file zeroes the new area as qemu-img (partly used last cluster)" {
  local T="$BATS_TEST_TMPDIR" o
  qemu-img create -q -f raw "$T/base.raw" 16M
  qemu-io -f raw -c 'write -P 0x5a 0 16M' "$T/base.raw" >/dev/null
  for o in "" extended_l2=on cluster_size=4096; do
    qemu-img create -q -f qcow2 -o "backing_file=$T/base.raw,backing_fmt=raw${o:+,$o}" "$T/a.qcow2" 1000448
    qemu-io -c 'write -P 0x11 64k 4k' "$T/a.qcow2" >/dev/null
    cp "$T/a.qcow2" "$T/b.qcow2"
    "$RBR" -q "$T/a.qcow2" 9000448
    qemu-img resize -q "$T/b.qcow2" 9000448
    qemu_check_clean "$T/a.qcow2"
    qemu-img compare "$T/a.qcow2" "$T/b.qcow2"
    qemu-img convert -O raw "$T/a.qcow2" "$T/a.raw"
    cmp -n 8000000 <(tail -c +1000449 "$T/a.raw") /dev/zero
    cmp -n 65536 "$T/a.raw" "$T/base.raw"
  done
  # Version 2 cannot say "zero" over a backing file: both tools refuse.
  qemu-img create -q -f qcow2 -o "compat=0.10,backing_file=$T/base.raw,backing_fmt=raw" "$T/v2.qcow2" 1M
  untouched_after "$T/v2.qcow2" "$RBR" "$T/v2.qcow2" 2M
  run qemu-img resize "$T/v2.qcow2" 2M
  [ "$status" -eq 1 ]
}

@test "shrinking keeps what internal snapshots use and cuts the file when nothing does" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/a.qcow2" 8M
  qemu-io -c 'write -P 0x66 7M 1M' "$T/a.qcow2" >/dev/null
  qemu-img convert -O raw "$T/a.qcow2" "$T/full.raw"
  qemu-img snapshot -c keep "$T/a.qcow2"
  cp "$T/a.qcow2" "$T/b.qcow2"
  "$RBR" -q --shrink "$T/a.qcow2" 1M
  qemu-img resize -q --shrink "$T/b.qcow2" 1M
  qemu_check_clean "$T/a.qcow2"
  qemu-img compare "$T/a.qcow2" "$T/b.qcow2"
  # Applying the snapshot brings back all 8 MiB.
  cp "$T/a.qcow2" "$T/c.qcow2"
  qemu-img snapshot -a keep "$T/c.qcow2"
  qemu-img compare "$T/full.raw" "$T/c.qcow2"
  # Without the snapshot the clusters past the end are freed and the file shrinks.
  qemu-img snapshot -d keep "$T/a.qcow2"
  qemu-img resize -q "$T/a.qcow2" 8M
  qemu-io -c 'write -P 0x77 4M 4M' "$T/a.qcow2" >/dev/null
  before=$(stat -c %s "$T/a.qcow2")
  "$RBR" -q --shrink "$T/a.qcow2" 1M
  qemu_check_clean "$T/a.qcow2"
  [ "$(stat -c %s "$T/a.qcow2")" -lt $((before - 4 * 1048576)) ]
  qemu-img convert -O raw "$T/a.qcow2" "$T/a.raw"
  cmp "$T/a.raw" <(head -c 1M "$T/full.raw")
}

@test "rb-resize killed at every write (L1 growth, zeroing over a backing file, shrink): old or new" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/img.qcow2" 4M cluster_size=512
  qemu-img snapshot -c s "$T/img.qcow2"
  crash_loop "$T/img.qcow2" "$RBR" -q "$T/img.qcow2" 12M
  crash_loop "$T/img.qcow2" "$RBR" -q --shrink "$T/img.qcow2" 1000448
  qemu-img create -q -f raw "$T/base.raw" 8M
  qemu-io -f raw -c 'write -P 0x5a 0 8M' "$T/base.raw" >/dev/null
  qemu-img create -q -f qcow2 -o "backing_file=$T/base.raw,backing_fmt=raw,cluster_size=4096" \
    "$T/ov.qcow2" 1000448
  qemu-io -c 'write -P 0x11 0 9k' "$T/ov.qcow2" >/dev/null
  crash_loop "$T/ov.qcow2" "$RBR" -q "$T/ov.qcow2" 6M
}

@test "bad sizes: one-line error, exit 1 as qemu-img, image untouched" {
  local T="$BATS_TEST_TMPDIR"
  mk_image "$T/a.qcow2" 8M
  untouched_after "$T/a.qcow2" "$RBR" "$T/a.qcow2" 4M
  [[ "$output" == *--shrink* ]]
  run qemu-img resize "$T/a.qcow2" 4M
  [ "$status" -eq 1 ]
  untouched_after "$T/a.qcow2" "$RBR" "$T/a.qcow2" 10000001
  [[ "$output" == *"multiple of 512"* ]]
  untouched_after "$T/a.qcow2" "$RBR" --shrink "$T/a.qcow2" -9M
  untouched_after "$T/a.qcow2" "$RBR" "$T/a.qcow2" 12X
  untouched_after "$T/a.qcow2" "$RBR" "$T/a.qcow2" 100E
  qemu-img create -q -f qcow2 -o compat=0.10 "$T/v2.qcow2" 1M
  qemu-img snapshot -c s "$T/v2.qcow2"
  untouched_after "$T/v2.qcow2" "$RBR" "$T/v2.qcow2" 2M
  [[ "$output" == *snapshots* ]]
}

@test "rb-resize on a raw file: as qemu-img resize -f raw" {
  local T="$BATS_TEST_TMPDIR"
  head -c 3M /dev/urandom > "$T/a.raw"
  cp "$T/a.raw" "$T/b.raw"
  "$RBR" -q "$T/a.raw" +1M
  qemu-img resize -q -f raw "$T/b.raw" +1M
  cmp "$T/a.raw" "$T/b.raw"
  untouched_after "$T/a.raw" "$RBR" -f raw "$T/a.raw" 1M
  "$RBR" -q --shrink -f raw "$T/a.raw" 1M
  qemu-img resize -q --shrink -f raw "$T/b.raw" 1M
  cmp "$T/a.raw" "$T/b.raw"
}

# twin_bitmaps STEPS -- BITMAP...: twins of bitmap_image (1000448 bytes, 4K clusters) resized by
# rb-resize and qemu-img resize through each step (a trailing s: --shrink); after each, the
# bitmaps, their bits, the data and the checks agree.
twin_bitmaps () {
  local T="$BATS_TEST_TMPDIR" steps=() arg shrink
  while [ "$1" != -- ]; do steps+=("$1"); shift; done; shift
  bitmap_image "$T/a.qcow2" 1000448 4096 "$@"
  cp "$T/a.qcow2" "$T/b.qcow2"
  for arg in "${steps[@]}"; do
    shrink=; [[ "$arg" == *s ]] && shrink=--shrink
    arg=${arg%s}
    "$RBR" -q $shrink "$T/a.qcow2" "$arg" 2>/dev/null || { "$RBR" $shrink "$T/a.qcow2" "$arg"; return 1; }
    qemu-img resize -q $shrink "$T/b.qcow2" "$arg"
    qemu_check_clean "$T/a.qcow2" || { echo "after $arg"; return 1; }
    [ "$(qemu-img info --output=json "$T/a.qcow2" | jq '.["virtual-size"]')" = "$arg" ]
    qemu-img compare -q "$T/a.qcow2" "$T/b.qcow2" || { echo "views differ after $arg"; return 1; }
    same_bitmaps "$T/a.qcow2" "$T/b.qcow2" || { echo "after $arg"; return 1; }
    "$top_builddir/utils/rb-check" -q "$T/a.qcow2" || { echo "rb-check after $arg"; return 1; }
  done
}

@test "rb-resize resizes persistent bitmaps as qemu-img resize: one enabled bitmap, grow and shrink" {
  # Growth keeps the partly used last bit, the new area is clean; a shrink drops the bits past the end.
  twin_bitmaps 3000320 990208s 40000000 5000192s -- b0:65536
}

@test "rb-resize resizes persistent bitmaps as qemu-img resize: two bitmaps, one disabled, tables of several clusters" {
  # At 512-byte granularity 40 MB take 10 KB of bits: a table of three 4K clusters.
  twin_bitmaps 40000000 1000448s 3000320 -- on:512 off:4096:off
  twin_bitmaps 2000384 500224s -- g64k:65536:off g4k:4096
}

@test "after rb-resize grows an image, writes into the new area are dirty in its enabled bitmap (qemu-io and the plugin)" {
  local T="$BATS_TEST_TMPDIR"
  bitmap_image "$T/a.qcow2" 1000448 65536 b0:65536 off:4096:off
  cp "$T/a.qcow2" "$T/b.qcow2"
  "$RBR" -q "$T/a.qcow2" 8M
  qemu-img resize -q "$T/b.qcow2" 8M
  qemu-io -c 'write -P 7 5M 4k' "$T/a.qcow2" >/dev/null
  qemu-io -c 'write -P 7 5M 4k' "$T/b.qcow2" >/dev/null
  qemu_dirty "$T/a.qcow2" b0 > "$T/got"
  printf '%s\n' "0 65536" "262144 131072" "983040 65536" "5242880 65536" | diff - "$T/got"
  "$RBR" -q "$T/a.qcow2" 16M
  qemu-img resize -q "$T/b.qcow2" 16M
  start_rblock "$T/a.qcow2"
  nbdsh -u "$URI" -c 'h.pwrite(b"\x08" * 4096, 12 << 20)'
  stop_rblock
  qemu-io -c 'write -P 8 12M 4k' "$T/b.qcow2" >/dev/null
  qemu_check_clean "$T/a.qcow2"
  qemu_dirty "$T/a.qcow2" b0 > "$T/got"
  printf '%s\n' "0 65536" "262144 131072" "983040 65536" "5242880 65536" "12582912 65536" |
    diff - "$T/got"
  [ "$(bitmap_flags "$T/a.qcow2" b0)" = auto ]
  # The disabled bitmap kept its bits and recorded nothing: as QEMU's twin.
  same_bitmaps "$T/a.qcow2" "$T/b.qcow2"
  qemu-img compare -q "$T/a.qcow2" "$T/b.qcow2"
}

@test "an inconsistent (in-use) bitmap: rb-resize refuses as qemu-img, one line, image untouched" {
  local T="$BATS_TEST_TMPDIR"
  bitmap_image "$T/a.qcow2" 1000448 65536 b0:65536 off:4096:off
  patch_bitmap "$T/a.qcow2" off flags 1
  untouched_after "$T/a.qcow2" "$RBR" "$T/a.qcow2" 16M
  [[ "$output" == *"'off' is inconsistent"* ]]
  run qemu-img resize "$T/a.qcow2" 16M
  [ "$status" -eq 1 ]
  [[ "$output" == *inconsistent* ]]
  # Too many bits at the new size: refused before anything is written (qemu-img resizes and
  # loses the bitmap).
  bitmap_image "$T/g.qcow2" 1000448 65536 g:512
  untouched_after "$T/g.qcow2" "$RBR" "$T/g.qcow2" 3T
  [[ "$output" == *"'g' would take"* ]]
}
