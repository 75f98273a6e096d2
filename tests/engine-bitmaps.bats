#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Persistent dirty bitmaps (made by qemu-img bitmap) at the engine level: their clusters stay
# referenced (rb-check, repair, overlap checks), a malformed directory is refused; the bitmaps
# kept up to date by writes are the subject of bitmaps-*.bats.

load helpers

bats_require_minimum_version 1.5.0

RB_TOOL="$top_builddir/tests/rb-tool"
RB_CHECK="$top_builddir/utils/rb-check"

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# make_bitmapped IMAGE [create options]: two bitmaps with bits set (data clusters), some data.
make_bitmapped () {
  qemu-img create -q -f qcow2 ${2:+-o "$2"} "$1" 16M
  qemu-img bitmap --add "$1" b0
  qemu-img bitmap --add --granularity 4k "$1" b1
  qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 5M 128k' "$1" >/dev/null
  qemu_check_clean "$1"
}

# bitmap_flags IMAGE NAME: the bitmap's flags as qemu-img info lists them, comma-separated.
bitmap_flags () {
  qemu-img info -U --output=json "$1" |
    jq -r --arg n "$2" '."format-specific".data.bitmaps[] | select(.name == $n) | .flags | join(",")'
}

@test "rb-check counts the bitmaps' directory, tables and data: no leaks, as qemu-img check" {
  make_bitmapped "$T/b.qcow2"
  run "$RB_CHECK" "$T/b.qcow2"
  echo "$output"
  [ "$status" -eq 0 ] && [[ "$output" == *"No errors were found"* ]]
  # A leak repair finds nothing to free, so the bitmaps survive it.
  run "$RB_CHECK" --repair leaks "$T/b.qcow2"
  [ "$status" -eq 0 ]
  qemu_check_clean "$T/b.qcow2"
  [ "$(bitmap_flags "$T/b.qcow2" b1)" = auto ]
}

@test "a write through the plugin keeps every bitmap: consistent after the stop, check clean, --remove works" {
  make_bitmapped "$T/b.qcow2"
  start_rblock "$T/b.qcow2"
  nbdsh -u "$URI" -c 'h.pwrite(b"\x07" * 65536, 8 << 20)'
  stop_rblock
  qemu_check_clean "$T/b.qcow2"
  [ "$(bitmap_flags "$T/b.qcow2" b0)" = auto ]
  [ "$(bitmap_flags "$T/b.qcow2" b1)" = auto ]
  "$RB_CHECK" "$T/b.qcow2"
  qemu-io -c 'read -P 1 0 64k' -c 'read -P 2 5M 128k' -c 'read -P 7 8M 64k' "$T/b.qcow2" > "$T/out"
  ! grep -q 'verification failed' "$T/out"
  qemu-img bitmap --remove "$T/b.qcow2" b0
  qemu_check_clean "$T/b.qcow2"
  [ "$(qemu-img info --output=json "$T/b.qcow2" | jq '."format-specific".data.bitmaps | length')" = 1 ]
  # A second session stores the remaining bitmap again; still clean.
  "$RB_TOOL" write "$T/b.qcow2" $((9 << 20)) 4096 8
  qemu_check_clean "$T/b.qcow2"
}

@test "served read-only, an image with bitmaps is left byte for byte as it was" {
  make_bitmapped "$T/b.qcow2"
  sum=$(md5sum < "$T/b.qcow2")
  start_rblock "$T/b.qcow2" -r
  nbdcopy "$URI" "$T/got.raw"
  stop_rblock
  [ "$(md5sum < "$T/b.qcow2")" = "$sum" ]
  [ "$(bitmap_flags "$T/b.qcow2" b0)" = auto ]
}

@test "a dirty image with bitmaps is repaired without freeing the bitmaps' clusters" {
  make_bitmapped "$T/d.qcow2" lazy_refcounts=on,cluster_size=4096
  qemu-io -c 'write -P 5 1M 1M' -c flush -c 'write -P 6 3M 2M' -c flush -c abort "$T/d.qcow2" >/dev/null 2>&1 || true
  qemu-img info -U "$T/d.qcow2" | grep -q 'cleanly shut down: no'
  "$RB_TOOL" write "$T/d.qcow2" $((10 << 20)) 4096 1
  qemu_check_clean "$T/d.qcow2"
  [ "$(qemu-img info --output=json "$T/d.qcow2" | jq '."format-specific".data.bitmaps | length')" = 2 ]
  qemu-io -c 'read -P 5 1M 1M' -c 'read -P 6 3M 2M' -c 'read -P 1 10M 4k' "$T/d.qcow2" > "$T/out"
  ! grep -q 'verification failed' "$T/out"
}

@test "a malformed bitmap directory is refused at open with one line, as QEMU refuses it" {
  make_bitmapped "$T/b.qcow2"
  # The extension's directory offset (bytes 16..23 of its data) moved past the end of the file.
  python3 - "$T/b.qcow2" <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b"); h = f.read(65536)
off = struct.unpack(">I", h[100:104])[0]
while True:
    t, l = struct.unpack(">II", h[off:off + 8])
    assert t != 0, "no bitmaps extension"
    if t == 0x23852875:
        f.seek(off + 8 + 16); f.write(struct.pack(">Q", 1 << 40)); break
    off += 8 + (l + 7) // 8 * 8
PY
  run qemu-img check "$T/b.qcow2"
  [ "$status" -ne 0 ]
  run --separate-stderr "$RB_TOOL" cat "$T/b.qcow2"
  echo "$stderr"
  [ "$status" -ne 0 ] && [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == *"bitmap directory"* ]]
}

@test "a write that would land on the bitmap directory is refused (overlap check) and the directory survives" {
  make_bitmapped "$T/b.qcow2"
  "$RB_TOOL" write "$T/b.qcow2" $((9 << 20)) 4096 8     # stores the bitmaps in new clusters
  # Disabled bitmaps are not marked in use at the next write: the directory stays byte for byte.
  qemu-img bitmap --disable "$T/b.qcow2" b0
  qemu-img bitmap --disable "$T/b.qcow2" b1
  dir=$(python3 - "$T/b.qcow2" <<'PY'
import struct, sys
h = open(sys.argv[1], "rb").read(65536)
off = struct.unpack(">I", h[100:104])[0]
while True:
    t, l = struct.unpack(">II", h[off:off + 8])
    if t == 0x23852875:
        print(struct.unpack(">Q", h[off + 24:off + 32])[0]); break
    off += 8 + (l + 7) // 8 * 8
PY
)
  [ "$dir" -gt 0 ]
  # Guest cluster 0's L2 entry now names the directory's cluster (copied: an in-place write).
  python3 "$top_srcdir/tests/qcow2-patch.py" "$T/b.qcow2" l2 0 "COPIED | $dir"
  before=$(dd if="$T/b.qcow2" bs=65536 skip=$((dir / 65536)) count=1 status=none | md5sum)
  run "$RB_TOOL" write "$T/b.qcow2" 0 4096 9
  [ "$status" -ne 0 ]
  [[ "$output" == *"would overwrite metadata"* ]]
  [ "$(dd if="$T/b.qcow2" bs=65536 skip=$((dir / 65536)) count=1 status=none | md5sum)" = "$before" ]
  qemu-img info "$T/b.qcow2" | grep -q 'corrupt: true'
}

@test "applying an internal snapshot: enabled bitmaps record the whole disk (the guest view switched), disabled ones stay" {
  qemu-img create -q -f qcow2 "$T/s.qcow2" 16M
  qemu-img bitmap --add "$T/s.qcow2" on
  qemu-img bitmap --add --disable "$T/s.qcow2" off
  qemu-io -c 'write -P 1 0 1M' "$T/s.qcow2" >/dev/null
  qemu-img snapshot -c s1 "$T/s.qcow2"
  qemu-io -c 'write -P 2 0 1M' "$T/s.qcow2" >/dev/null
  qemu-img bitmap --clear "$T/s.qcow2" on
  "$top_builddir/utils/rb-snapshot" -a s1 "$T/s.qcow2"
  qemu_check_clean "$T/s.qcow2"
  qemu-io -c 'read -P 1 0 1M' "$T/s.qcow2" | grep -q 'read 1048576/1048576'
  [ "$(bitmap_flags "$T/s.qcow2" on)" = auto ]
  [ "$(nbdinfo --map=qemu:dirty-bitmap:on -- [ qemu-nbd -r -B on -f qcow2 "$T/s.qcow2" ])" = \
    "$(printf '%10d %11d %4d  %s' 0 $((16 << 20)) 1 dirty)" ]
  [ "$(nbdinfo --map=qemu:dirty-bitmap:off -- [ qemu-nbd -r -B off -f qcow2 "$T/s.qcow2" ] | grep -c dirty)" = 0 ]
}
