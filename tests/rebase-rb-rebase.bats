#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-rebase against qemu-img rebase on twin images (safe and -u, raw and qcow2 backing files,
# another folder, no backing file, extended L2, version 2); the name and format switch
# atomically under kills at every write, in each header layout; bad input leaves the image.

load helpers
load chain-helpers

RBB="$top_builddir/utils/rb-rebase"

# backing_of IMG: "name format" as qemu-img info shows them.
backing_of () {
  qemu-img info -U --output=json "$1" | jq -r '"\(.["backing-filename"]) \(.["backing-filename-format"])"'
}

# mk_chain DIR [TOP_OPTS]: DIR/old.qcow2 <- DIR/top.qcow2, and DIR/new/base.qcow2
# (same as old but for changed, zeroed and shorter parts) and DIR/new.raw.
mk_chain () {
  local d=$1
  mkdir -p "$d/new"
  mk_image "$d/old.qcow2" 6M
  qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 ${2:+-o "$2"} "$d/top.qcow2"
  qemu-io -c 'write -P 0x61 100k 50k' -c 'write -z 2M 64k' -c 'write -P 0x62 5M 4k' \
    "$d/top.qcow2" >/dev/null
  qemu-img convert -O qcow2 "$d/old.qcow2" "$d/new/base.qcow2"
  qemu-io -c 'write -P 0x63 0 32k' -c 'write -z 1M 64k' -c 'write -P 0x64 2M 4k' \
    -c 'write -P 0x65 3M 300k' "$d/new/base.qcow2" >/dev/null
  qemu-img resize -q --shrink "$d/new/base.qcow2" 5M
  qemu-img convert -O raw "$d/new/base.qcow2" "$d/new.raw"
}

# twin_rebase TOP_OPTS ARGS...: rb-rebase ARGS on a/top.qcow2 and qemu-img rebase
# ARGS on b/top.qcow2 (names relative to the images): same view (the old one in
# safe mode), same backing name and format, both clean.
twin_rebase () {
  local T="$BATS_TEST_TMPDIR" opts=$1; shift
  rm -rf "$T/a" "$T/b"
  mk_chain "$T/a" "$opts"
  cp -r "$T/a" "$T/b"
  qemu-img convert -O raw "$T/a/top.qcow2" "$T/old.raw"
  run "$RBB" "$@" "$T/a/top.qcow2"
  [ "$status" -eq 0 ] || { echo "rb-rebase $*: $output"; return 1; }
  qemu-img rebase -q "$@" "$T/b/top.qcow2"
  qemu_check_clean "$T/a/top.qcow2"
  [ "$(backing_of "$T/a/top.qcow2")" = "$(backing_of "$T/b/top.qcow2")" ] ||
    { echo "backing: $(backing_of "$T/a/top.qcow2") vs $(backing_of "$T/b/top.qcow2")"; return 1; }
  qemu-img compare "$T/a/top.qcow2" "$T/b/top.qcow2"
  [[ " $* " == *" -u "* ]] || qemu-img compare "$T/old.raw" "$T/a/top.qcow2"
}

@test "safe rb-rebase keeps the disk, as qemu-img rebase (qcow2 and raw, another folder, none)" {
  twin_rebase "" -b new/base.qcow2 -F qcow2
  twin_rebase "" -b new.raw -F raw
  twin_rebase "" -b ""
  twin_rebase cluster_size=4096 -b new/base.qcow2 -F qcow2
}

@test "safe rb-rebase with extended L2 (zero subclusters) and version 2 (zeros as data)" {
  twin_rebase extended_l2=on -b new/base.qcow2 -F qcow2
  twin_rebase compat=0.10 -b new/base.qcow2 -F qcow2
  twin_rebase compat=0.10 -b ""
}

@test "rb-rebase -u only changes the name and format, as qemu-img rebase -u" {
  local T="$BATS_TEST_TMPDIR"
  twin_rebase "" -u -b new/base.qcow2 -F qcow2
  twin_rebase "" -u -b new.raw -F raw
  twin_rebase "" -u -b ""
  # A name that does not exist yet: the header says so, as qemu-img's does.
  "$RBB" -u -b not-there.qcow2 -F qcow2 "$T/a/top.qcow2"
  qemu-img rebase -u -b not-there.qcow2 -F qcow2 "$T/b/top.qcow2"
  [ "$(backing_of "$T/a/top.qcow2")" = "not-there.qcow2 qcow2" ]
  [ "$(backing_of "$T/b/top.qcow2")" = "not-there.qcow2 qcow2" ]
  "$RBB" -u -b new/base.qcow2 -F qcow2 "$T/a/top.qcow2"
  qemu_check_clean "$T/a/top.qcow2"
}

@test "a zero inside one subcluster over a backing file leaves the cluster inside the file" {
  # (rebase writes such zeros; the zero went to a new cluster past the end of
  # the file and wrote nothing: qemu-img check and a reopen called it corrupt)
  local T="$BATS_TEST_TMPDIR"
  qemu-img create -q -f qcow2 "$T/b.qcow2" 4M
  qemu-io -c 'write -P 1 0 4M' "$T/b.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 -o extended_l2=on "$T/t.qcow2"
  "$top_builddir/tests/rb-tool" zero "$T/t.qcow2" 1048576 2048
  qemu_check_clean "$T/t.qcow2"
  qemu-io -c 'read -P 0 1M 2k' -c 'read -P 1 1050624 62k' -c 'read -P 1 0 1M' "$T/t.qcow2" |
    grep -c '^read' | grep -qx 3
}

@test "without -F the new backing file's format is probed and recorded" {
  local T="$BATS_TEST_TMPDIR"
  mk_chain "$T/a"
  "$RBB" -b new.raw "$T/a/top.qcow2"
  [ "$(backing_of "$T/a/top.qcow2")" = "new.raw raw" ]
  "$RBB" -b new/base.qcow2 "$T/a/top.qcow2"
  [ "$(backing_of "$T/a/top.qcow2")" = "new/base.qcow2 qcow2" ]
  qemu_check_clean "$T/a/top.qcow2"
}

# header_variant DIR KIND: make DIR/top.qcow2's header one of the layouts the
# switch handles: fmt (QEMU's: a format extension, changed in place), nofmt (no
# format extension, the end marker at 504 and the name right after it: the name
# moves, then one write appends the extension), bitmaps (no format extension, the
# end marker past the first sector: two writes, ordered).
header_variant () {
  local d=$1 kind=$2 end
  [ "$kind" = fmt ] && return 0
  qemu-img create -q -f qcow2 "$d/top.qcow2" 6M
  [ "$kind" = bitmaps ] && qemu-img bitmap --add "$d/top.qcow2" b0
  end=$(python3 -c '
import struct, sys
h = open(sys.argv[1], "rb").read(65536); off = 112
while struct.unpack(">I", h[off:off + 4])[0]:
    off += 8 + (struct.unpack(">I", h[off + 4:off + 8])[0] + 7) // 8 * 8
print(off)' "$d/top.qcow2")
  if [ "$kind" = nofmt ]; then [ "$end" -eq 504 ]; else [ "$end" -gt 504 ]; fi
  python3 "$top_srcdir/tests/qcow2-patch.py" "$d/top.qcow2" \
    poke $((end + 8)) "$(printf old.qcow2 | od -An -tx1 | tr -d ' \n')" -- \
    set backing_file_offset $((end + 8)) -- set backing_file_size 9
  qemu-io -c 'write -P 0x61 100k 50k' -c 'write -z 2M 64k' "$d/top.qcow2" >/dev/null 2>&1
  [ "$(backing_of "$d/top.qcow2")" = "old.qcow2 null" ]
}

@test "the name and format switch atomically: killed at every write, old or new backing (3 layouts)" {
  local T="$BATS_TEST_TMPDIR" kind
  for kind in fmt nofmt bitmaps; do
    rm -rf "$T/c"
    mk_chain "$T/c"
    header_variant "$T/c" "$kind"
    check_ok "$T/c/top.qcow2"
    crash_loop "$T/c/top.qcow2" "$RBB" -u -b new/base.qcow2 -F qcow2 "$T/c/top.qcow2"
    [ "$(backing_of "$T/c/top.qcow2")" = "new/base.qcow2 qcow2" ]
    crash_loop "$T/c/top.qcow2" "$RBB" -u -b new.raw -F raw "$T/c/top.qcow2"
    [ "$(backing_of "$T/c/top.qcow2")" = "new.raw raw" ]
  done
}

@test "safe rb-rebase killed at every write: the disk reads the same, old or new backing file" {
  local T="$BATS_TEST_TMPDIR"
  mk_chain "$T/c" cluster_size=4096
  qemu-img convert -O raw "$T/c/top.qcow2" "$T/old.raw"
  crash_loop "$T/c/top.qcow2" "$RBB" -b new/base.qcow2 -F qcow2 "$T/c/top.qcow2"
  qemu-img compare "$T/old.raw" "$T/c/top.qcow2"
  crash_loop "$T/c/top.qcow2" "$RBB" -b "" "$T/c/top.qcow2"
  qemu-img compare "$T/old.raw" "$T/c/top.qcow2"
}

@test "bad input: a new backing file that does not open, a loop, a bad format: one line, exit 1, untouched" {
  local T="$BATS_TEST_TMPDIR"
  mk_chain "$T/a"
  untouched_after "$T/a/top.qcow2" "$RBB" -b missing.qcow2 -F qcow2 "$T/a/top.qcow2"
  [[ "$output" == *missing.qcow2* ]]
  run qemu-img rebase -b missing.qcow2 -F qcow2 "$T/a/top.qcow2"
  [ "$status" -eq 1 ]
  untouched_after "$T/a/top.qcow2" "$RBB" -b missing.qcow2 "$T/a/top.qcow2"
  untouched_after "$T/a/top.qcow2" "$RBB" -b top.qcow2 -F qcow2 "$T/a/top.qcow2"
  [[ "$output" == *loop* ]]
  qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 "$T/a/over.qcow2"
  untouched_after "$T/a/top.qcow2" "$RBB" -b over.qcow2 -F qcow2 "$T/a/top.qcow2"
  untouched_after "$T/a/top.qcow2" "$RBB" -b new.raw -F vmdk "$T/a/top.qcow2"
  untouched_after "$T/a/top.qcow2" "$RBB" "$T/a/top.qcow2"
  qemu_check_clean "$T/a/top.qcow2"
}
