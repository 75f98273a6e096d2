# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers of the dirty-bitmap suites: QEMU's view of a bitmap (qemu-img info, qemu-nbd -B), patches.

# bitmap_io ARGS...: tests/bitmap-io.py with the system python (it has python3-libnbd).
bitmap_io () { /usr/bin/python3 "$top_srcdir/tests/bitmap-io.py" "$@"; }

# bitmap_flags IMAGE NAME: the bitmap's flags as qemu-img info lists them, comma-separated.
bitmap_flags () {
  qemu-img info -U --output=json "$1" |
    jq -r --arg n "$2" '."format-specific".data.bitmaps[] | select(.name == $n) | .flags | join(",")'
}

# bitmap_names IMAGE: "name granularity flags" per bitmap, as qemu-img info reads them.
bitmap_names () {
  qemu-img info -U --output=json "$1" |
    jq -r '."format-specific".data.bitmaps // [] | .[] | "\(.name) \(.granularity) \(.flags | join(","))"'
}

# qemu_map IMAGE NAME: bitmap NAME as QEMU exports it (qemu-nbd -r -B): nbdinfo --map lines.
qemu_map () {
  nbdinfo --map=qemu:dirty-bitmap:"$2" -- [ qemu-nbd -r -B "$2" -f qcow2 "$1" ]
}

# qemu_dirty IMAGE NAME: merged "offset length" dirty runs of bitmap NAME, read by QEMU.
qemu_dirty () {
  local f r=0
  f=$(mktemp "$BATS_TEST_TMPDIR/map.XXXXXX")      # callers may run side by side
  qemu_map "$1" "$2" > "$f" && bitmap_io dirty < "$f" || r=1
  rm -f "$f"
  return $r
}

# patch_bitmap IMAGE NAME FIELD VALUE: set a directory entry field (type, flags, granularity
# bits) on disk, or (data) the bitmap table's first entry that points at a data cluster.
patch_bitmap () {
  python3 - "$@" <<'PY'
import struct, sys
path, name, field, value = sys.argv[1], sys.argv[2].encode(), sys.argv[3], int(sys.argv[4], 0)
f = open(path, "r+b"); h = f.read(65536)
off = struct.unpack(">I", h[100:104])[0]
while True:
    t, l = struct.unpack(">II", h[off:off + 8])
    assert t != 0, "no bitmaps extension"
    if t == 0x23852875:
        nb, _, size, dirof = struct.unpack(">IIQQ", h[off + 8:off + 32]); break
    off += 8 + (l + 7) // 8 * 8
f.seek(dirof); d = f.read(size); pos = 0
while pos < size:
    nsz, esz = struct.unpack(">HI", d[pos + 18:pos + 24])
    if d[pos + 24 + esz:pos + 24 + esz + nsz] == name:
        if field == "data":
            toff, tsz = struct.unpack(">QI", d[pos:pos + 12])
            f.seek(toff); ents = struct.unpack(">%dQ" % tsz, f.read(8 * tsz))
            i = [k for k, e in enumerate(ents) if e > 1][0]
            f.seek(toff + 8 * i); f.write(struct.pack(">Q", value))
        elif field in ("type", "granularity"):
            f.seek(dirof + pos + (16 if field == "type" else 17)); f.write(bytes([value]))
        else:
            f.seek(dirof + pos + 12); f.write(struct.pack(">I", value))
        sys.exit(0)
    pos += (24 + nsz + esz + 7) // 8 * 8
sys.exit("no bitmap " + sys.argv[2])
PY
}

# assert_bitmap_holds IMAGE NAME GRANULARITY BEFORE RANGES...: QEMU reads bitmap NAME as exactly
# BEFORE (a qemu_map listing, or -) plus the ranges (bitmap-io.py expect); the image checks clean.
assert_bitmap_holds () {
  local img=$1 name=$2 gran=$3 before=$4 size
  shift 4
  size=$(qemu-img info -U --output=json "$img" | jq '."virtual-size"')
  qemu_dirty "$img" "$name" > "$BATS_TEST_TMPDIR/got.$name"
  bitmap_io expect "$size" "$gran" "$before" "$@" > "$BATS_TEST_TMPDIR/want.$name"
  diff "$BATS_TEST_TMPDIR/want.$name" "$BATS_TEST_TMPDIR/got.$name" ||
    { echo "bitmap $name of $img differs (< expected, > QEMU's)"; return 1; }
}

# rpc_dirty SOCKET NAME [OFFSET LENGTH]: merged dirty runs of bitmap NAME from the JSON-RPC
# method bitmap_map on a Unix socket (the same format as qemu_dirty).
rpc_dirty () {
  local params="{\"name\":\"$2\"${3:+,\"offset\":$3,\"length\":$4}}"
  printf '{"jsonrpc":"2.0","method":"bitmap_map","params":%s,"id":1}' "$params" |
    timeout 20 nc -N -U "$1" > "$BATS_TEST_TMPDIR/rpc.out" || return 1
  jq -e .result "$BATS_TEST_TMPDIR/rpc.out" >/dev/null || { cat "$BATS_TEST_TMPDIR/rpc.out"; return 1; }
  jq -r '.result[] | "\(.start) \(.length) \(if .dirty then 1 else 0 end)"' "$BATS_TEST_TMPDIR/rpc.out" |
    bitmap_io dirty
}

# rpc_call SOCKET METHOD [PARAMS]: the whole reply of one request.
rpc_call () {
  printf '{"jsonrpc":"2.0","method":"%s"%s,"id":1}' "$2" "${3:+,\"params\":$3}" |
    timeout 20 nc -N -U "$1"
}
