#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-resize of an image with persistent dirty bitmaps killed at every write (tests/crashshim.c):
# the image checks clean with its old or new size, each bitmap in use or holding exactly the bits
# of the old or the resized image.

load helpers
load chain-helpers
load bitmap-helpers

RBR="$top_builddir/utils/rb-resize"

# bitmaps_after_crash IMG old|new (or - setup): every bitmap of IMG is in use, or consistent
# with exactly the bits of the image before (old) or after (new) the complete resize.
bitmaps_after_crash () {
  local img=$1 state=$2 T="$BATS_TEST_TMPDIR" n line
  if [ "$state" = setup ]; then
    for n in $(bitmap_names "$T/crash.orig" | cut -d' ' -f1); do
      qemu_map "$T/crash.orig" "$n" > "$T/ref.old.$n"
      qemu_map "$T/crash.done" "$n" > "$T/ref.new.$n"
    done
    bitmap_names "$T/crash.orig" | cut -d' ' -f1,2 > "$T/ref.names"
    [[ "$(bitmap_names "$T/crash.done")" != *in-use* ]]
    return
  fi
  bitmap_names "$img" > "$T/names.now"
  cut -d' ' -f1,2 "$T/names.now" | diff "$T/ref.names" - || return 1
  while read -r n _ line; do
    [[ ",$line," == *,in-use,* ]] && continue
    qemu_map "$img" "$n" | diff "$T/ref.$state.$n" - ||
      { echo "bitmap $n is consistent but not the $state one"; return 1; }
  done < "$T/names.now"
}

@test "rb-resize with bitmaps killed at every write: old or new size, bitmaps correct or in use" {
  local T="$BATS_TEST_TMPDIR"
  # Both tables grow from one 4K cluster to three, and shrink back.
  bitmap_image "$T/img.qcow2" 1000448 4096 on:512 off:512:off
  CRASH_CHECK=bitmaps_after_crash crash_loop "$T/img.qcow2" "$RBR" -q "$T/img.qcow2" 40000000
  CRASH_CHECK=bitmaps_after_crash crash_loop "$T/img.qcow2" "$RBR" -q --shrink "$T/img.qcow2" 999424
}


@test "rb-resize with bitmaps and I/O errors: before the switch the image is as it was, after it the bitmap is left in use" {
  local T="$BATS_TEST_TMPDIR"
  bitmap_image "$T/a.qcow2" 1000448 4096 off:512:off
  qemu_map "$T/a.qcow2" off > "$T/before"
  cp "$T/a.qcow2" "$T/orig"
  # The first bitmap write (marking 'off' in use) fails: refused, the mark taken back.
  run env RBLOCK_FAULT=bitmap_write:EIO "$RBR" "$T/a.qcow2" 40000000
  [ "$status" -eq 1 ] && [ "${#lines[@]}" -eq 1 ] || { echo "$status: $output"; false; }
  cmp "$T/a.qcow2" "$T/orig"
  # The store after the switch fails: the new size, the bitmap in use (inconsistent), no corruption.
  run env RBLOCK_FAULT=bitmap_write:EIO:after=1 "$RBR" "$T/a.qcow2" 40000000
  [ "$status" -eq 1 ] && [[ "$output" == *"resized, but"* ]] || { echo "$status: $output"; false; }
  [ "$(qemu-img info --output=json "$T/a.qcow2" | jq '.["virtual-size"]')" = 40000000 ]
  [ "$(bitmap_flags "$T/a.qcow2" off)" = in-use ]
  check_ok "$T/a.qcow2"
  qemu-img compare -q "$T/orig" "$T/a.qcow2"
  "$top_builddir/utils/rb-bitmap" --remove "$T/a.qcow2" off
  qemu_check_clean "$T/a.qcow2"
}
