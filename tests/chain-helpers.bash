# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers of the image-wide command suites (snapshot, resize, commit, rebase): test images,
# a state signature, the kill-at-every-write loop, images with bitmaps and their directory.

SHIM="$top_builddir/tests/.libs/crashshim.so"

# mk_image IMG SIZE [qemu-img -o options]: a qcow2 with data, zeros, a hole and
# (when the format allows) compressed clusters, written by qemu-io.
mk_image () {
  local img=$1 size=$2 opts=${3:-}
  qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$img" "$size"
  qemu-io -c 'write -P 0x11 0 192k' -c 'write -P 0x22 300k 5k' -c 'write -z 512k 128k' \
    -c 'write -P 0x33 1M 64k' -c 'write -P 0x44 2M 8k' "$img" >/dev/null
  if [[ "$opts" != *extended_l2=on* ]]; then
    qemu-io -c 'write -c -P 0x55 3M 64k' "$img" >/dev/null
  fi
}

# sparse_sum FILE: a checksum of a sparse file's bytes that skips its holes
# (size, then offset and bytes of each data extent, all-zero blocks left out).
sparse_sum () {
  python3 -c '
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size
h = hashlib.md5(str(size).encode()); pos = 0
while pos < size:
    try: pos = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError: break
    end = os.lseek(fd, pos, os.SEEK_HOLE)
    while pos < end:
        b = os.pread(fd, min(1 << 20, end - pos), pos)
        for i in range(0, len(b), 4096):
            if b[i:i + 4096].strip(b"\0"): h.update(str(pos + i).encode() + b[i:i + 4096])
        pos += len(b)
print(h.hexdigest())' "$1"
}

# state_sig IMG: one line per fact a user sees: virtual size, backing file and
# format, the snapshots (id, name) and a checksum of the guest view and of each
# snapshot's view.
state_sig () {
  local img=$1 raw="$BATS_TEST_TMPDIR/sig.raw" id
  qemu-img info -U --output=json "$img" |
    jq -c '[.["virtual-size"], .["backing-filename"], .["backing-filename-format"],
            [.snapshots[]? | [.id, .name]]]'
  qemu-img convert -U -O raw "$img" "$raw" 2>&1 && sparse_sum "$raw" 2>&1
  for id in $(qemu-img info -U --output=json "$img" | jq -r '.snapshots[]?.id'); do
    qemu-img convert -U -l "snapshot.id=$id" -O raw "$img" "$raw" 2>&1 && echo "$id $(sparse_sum "$raw" 2>&1)"
  done
  rm -f "$raw"
}

# check_ok IMG: qemu-img check finds no corruption (leaks allowed).
check_ok () {
  run qemu-img check "$1"
  if { [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; } || [[ "$output" == *ERROR* ]]; then
    echo "qemu-img check $1 ($status):"; echo "$output"; return 1
  fi
}

# crash_loop IMG CMD...: CMD changes IMG.  For every N, a fresh copy of IMG
# is changed by CMD killed at its N-th write to IMG (whole, then torn at 512
# bytes); each time qemu-img check must find no corruption and the image must
# show the state before or the state after CMD (state_sig).  IMG is left
# changed by a complete run.  With CRASH_CHECK set, `$CRASH_CHECK IMG old|new`
# also runs after each kill (IMG shows the old or the new state), and
# `$CRASH_CHECK - setup` once before, when $T/crash.orig and $T/crash.done
# hold the image before and after a complete run.
crash_loop () {
  local img=$1; shift
  local T="$BATS_TEST_TMPDIR" name n total torn sig state
  name=$(basename "$img")
  cp "$img" "$T/crash.orig"
  state_sig "$img" > "$T/sig.old"
  RB_CRASH_FILE="$name" RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" "$@" >/dev/null
  total=$(cat "$T/count")
  state_sig "$img" > "$T/sig.new"
  ! cmp -s "$T/sig.old" "$T/sig.new" || { echo "the command changed nothing"; return 1; }
  check_ok "$img"
  cp "$img" "$T/crash.done"
  [ "$total" -ge 1 ] || { echo "no writes"; return 1; }
  if [ -n "${CRASH_CHECK:-}" ]; then "$CRASH_CHECK" - setup || return 1; fi
  for n in $(seq 1 "$total"); do
    for torn in "" 1; do
      cp "$T/crash.orig" "$img"
      run env RB_CRASH_FILE="$name" RB_CRASH_AT="$n" ${torn:+RB_CRASH_TORN=1} \
        LD_PRELOAD="$SHIM" "$@"
      [ "$status" -eq 137 ] || { echo "write $n${torn:+ torn}: not killed ($status): $output"; return 1; }
      check_ok "$img" || { echo "after write $n${torn:+ torn}"; return 1; }
      state_sig "$img" > "$T/sig.now"
      if ! cmp -s "$T/sig.now" "$T/sig.old" && ! cmp -s "$T/sig.now" "$T/sig.new"; then
        echo "write $n${torn:+ torn}: neither the old nor the new state"
        diff "$T/sig.old" "$T/sig.now"; diff "$T/sig.new" "$T/sig.now"
        return 1
      fi
      if [ -n "${CRASH_CHECK:-}" ]; then
        cmp -s "$T/sig.now" "$T/sig.old" && state=old || state=new
        "$CRASH_CHECK" "$img" "$state" || { echo "after write $n${torn:+ torn} ($state)"; return 1; }
      fi
    done
  done
  cp "$T/crash.done" "$img"
  echo "# $name: killed at each of $total writes (whole and torn): old or new state" >&3
}

# untouched_after IMG CMD...: CMD must fail with exit status 1 and one line on
# stderr, and leave IMG byte for byte as it was.
untouched_after () {
  local img=$1; shift
  cp "$img" "$BATS_TEST_TMPDIR/before"
  run "$@"
  [ "$status" -eq 1 ] || { echo "status $status: $output"; return 1; }
  [ "${#lines[@]}" -eq 1 ] || { echo "not one line: $output"; return 1; }
  cmp "$img" "$BATS_TEST_TMPDIR/before"
}

# bitmap_tables IMAGE: "name table_size flags" per bitmap directory entry, read from the file
# (the table size qemu-img info does not show).
bitmap_tables () {
  python3 - "$1" <<'PY'
import struct, sys
f = open(sys.argv[1], "rb"); h = f.read(65536)
off = struct.unpack(">I", h[100:104])[0]
while True:
    t, l = struct.unpack(">II", h[off:off + 8])
    if t == 0:
        sys.exit(0)
    if t == 0x23852875:
        nb, _, size, dirof = struct.unpack(">IIQQ", h[off + 8:off + 32]); break
    off += 8 + (l + 7) // 8 * 8
f.seek(dirof); d = f.read(size); pos = 0
while pos < size:
    _, tsize, flags = struct.unpack(">QII", d[pos:pos + 16])
    nsz, esz = struct.unpack(">HI", d[pos + 18:pos + 24])
    print(d[pos + 24 + esz:pos + 24 + esz + nsz].decode(), tsize, flags)
    pos += (24 + nsz + esz + 7) // 8 * 8
PY
}

# bitmap_image IMG SIZE CLUSTER_SIZE NAME:GRANULARITY[:off]...: a qcow2 with those bitmaps
# (":off" disabled after the first writes), dirtied by qemu-io near the start and the end.
bitmap_image () {
  local img=$1 size=$2 cs=$3 b; shift 3
  qemu-img create -q -f qcow2 -o cluster_size="$cs" "$img" "$size"
  for b in "$@"; do
    b=${b%:off}
    qemu-img bitmap --add -g "${b#*:}" "$img" "${b%%:*}"
  done
  qemu-io -c 'write -P 1 4000 9000' -c "write -P 2 $((size - 10000)) 10000" "$img" >/dev/null
  for b in "$@"; do
    [[ "$b" == *:off ]] && qemu-img bitmap --disable "$img" "${b%%:*}"
  done
  qemu-io -c 'write -P 3 300k 70k' "$img" >/dev/null
}

# same_bitmaps A B: the same bitmaps (names, granularity, flags, table sizes) and QEMU
# (qemu-nbd -B) reads the same bits in each, some of them dirty.
same_bitmaps () {
  local a=$1 b=$2 n
  [ "$(bitmap_names "$a")" = "$(bitmap_names "$b")" ] ||
    { echo "bitmaps differ:"; bitmap_names "$a"; echo vs; bitmap_names "$b"; return 1; }
  [ "$(bitmap_tables "$a")" = "$(bitmap_tables "$b")" ] ||
    { echo "directories differ:"; bitmap_tables "$a"; echo vs; bitmap_tables "$b"; return 1; }
  for n in $(bitmap_names "$a" | cut -d' ' -f1); do
    qemu_map "$a" "$n" > "$BATS_TEST_TMPDIR/map.a" && qemu_map "$b" "$n" > "$BATS_TEST_TMPDIR/map.b" ||
      return 1
    diff "$BATS_TEST_TMPDIR/map.a" "$BATS_TEST_TMPDIR/map.b" || { echo "bitmap $n differs"; return 1; }
    grep -q dirty "$BATS_TEST_TMPDIR/map.a" || { echo "bitmap $n: nothing dirty"; return 1; }
  done
}
