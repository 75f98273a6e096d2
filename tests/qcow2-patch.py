#!/usr/bin/env python3
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Patches fields of a qemu-img-made qcow2 image in place, so tests can make malformed images.
"""qcow2-patch.py IMAGE OP [ARGS...] [-- OP [ARGS...] ...]

Operations (several may be chained with "--"):
  get FIELD                    print a header field (decimal)
  set FIELD VALUE              set a header field
  l1 INDEX VALUE               set L1 entry INDEX
  l2 GUEST_OFFSET VALUE        set the L2 entry that maps GUEST_OFFSET
  bitmap GUEST_OFFSET VALUE    set its subcluster bitmap (extended L2: zero bits << 32 | alloc)
  host GUEST_OFFSET            print the host offset of GUEST_OFFSET's data (compressed too)
  backing NAME                 rewrite the backing file name in place (header cluster)
  feature TYPE BIT NEWBIT NAME rename the feature-name-table entry (TYPE, BIT)
  extlen TYPE VALUE            set the length of header extension TYPE (e.g. 0x6803f857)
  poke OFFSET HEXBYTES          overwrite bytes at OFFSET
  truncate SIZE                truncate the file to SIZE bytes

VALUE is a Python expression over: old (the current value), cs (cluster size),
eof (the file size rounded up to cs), COPIED (1 << 63), COMPRESSED (1 << 62).
Example: qcow2-patch.py d.qcow2 l1 0 'COPIED | (eof + 16 * cs)'
Header fields: magic version backing_file_offset backing_file_size cluster_bits size
crypt_method l1_size l1_table_offset refcount_table_offset refcount_table_clusters
nb_snapshots snapshots_offset incompatible_features compatible_features
autoclear_features refcount_order header_length compression_type.
"""
import os
import struct
import sys

# name: (offset, struct format); v3 fields start at 72.
FIELDS = {
    "magic": (0, ">I"), "version": (4, ">I"),
    "backing_file_offset": (8, ">Q"), "backing_file_size": (16, ">I"),
    "cluster_bits": (20, ">I"), "size": (24, ">Q"), "crypt_method": (32, ">I"),
    "l1_size": (36, ">I"), "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"), "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"), "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"), "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"), "refcount_order": (96, ">I"),
    "header_length": (100, ">I"), "compression_type": (104, ">B"),
}
OFFSET_MASK = 0x00FFFFFFFFFFFE00
FEATURE_TABLE = 0x6803F857


def read_at(f, off, fmt):
    """Return the value of struct format FMT at file offset OFF."""
    f.seek(off)
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def write_at(f, off, fmt, value):
    """Write VALUE with struct format FMT at file offset OFF."""
    f.seek(off)
    f.write(struct.pack(fmt, value))


def names(f):
    """The names a VALUE expression may use."""
    cs = 1 << read_at(f, 20, ">I")
    size = os.fstat(f.fileno()).st_size
    return {"cs": cs, "eof": (size + cs - 1) // cs * cs,
            "COPIED": 1 << 63, "COMPRESSED": 1 << 62}


def evaluate(f, expr, old):
    """Evaluate a VALUE expression with OLD as the current value."""
    env = names(f)
    env["old"] = old
    return int(eval(expr, {"__builtins__": {}}, env))


def extended_l2(f):
    """True if the image has extended (16-byte) L2 entries."""
    return read_at(f, 4, ">I") >= 3 and read_at(f, 72, ">Q") & (1 << 4) != 0


def l2_entry_offset(f, guest_offset):
    """Host offset of the L2 entry mapping GUEST_OFFSET (its L2 table must exist)."""
    bits = read_at(f, 20, ">I")
    entry_size = 16 if extended_l2(f) else 8
    l2_entries = (1 << bits) // entry_size
    cluster = guest_offset >> bits
    l1_index, l2_index = divmod(cluster, l2_entries)
    l1_entry = read_at(f, read_at(f, 40, ">Q") + 8 * l1_index, ">Q")
    table = l1_entry & OFFSET_MASK
    if not table:
        sys.exit("qcow2-patch: guest offset %d has no L2 table" % guest_offset)
    return table + entry_size * l2_index


def find_extension(f, wanted):
    """(offset of its type field, length) of header extension WANTED, or exit."""
    version = read_at(f, 4, ">I")
    off = read_at(f, 100, ">I") if version >= 3 else 72
    while True:
        ext_type, ext_len = read_at(f, off, ">I"), read_at(f, off + 4, ">I")
        if ext_type == 0:
            sys.exit("qcow2-patch: no header extension of type %#x" % wanted)
        if ext_type == wanted:
            return off, ext_len
        off += 8 + (ext_len + 7) // 8 * 8


def run(f, op, args):
    """Apply one operation."""
    if op == "get":
        off, fmt = FIELDS[args[0]]
        print(read_at(f, off, fmt))
    elif op == "set":
        off, fmt = FIELDS[args[0]]
        write_at(f, off, fmt, evaluate(f, args[1], read_at(f, off, fmt)))
    elif op == "l1":
        off = read_at(f, 40, ">Q") + 8 * int(args[0], 0)
        write_at(f, off, ">Q", evaluate(f, args[1], read_at(f, off, ">Q")))
    elif op == "l2":
        off = l2_entry_offset(f, int(args[0], 0))
        write_at(f, off, ">Q", evaluate(f, args[1], read_at(f, off, ">Q")))
    elif op == "bitmap":
        if not extended_l2(f):
            sys.exit("qcow2-patch: the image has no extended L2 entries")
        off = l2_entry_offset(f, int(args[0], 0)) + 8
        write_at(f, off, ">Q", evaluate(f, args[1], read_at(f, off, ">Q")))
    elif op == "host":
        entry = read_at(f, l2_entry_offset(f, int(args[0], 0)), ">Q")
        if entry & (1 << 62):           # compressed: byte offset in the low bits
            print(entry & ((1 << (70 - read_at(f, 20, ">I"))) - 1))
        else:
            print(entry & OFFSET_MASK)
    elif op == "backing":
        name = args[0].encode()
        off = read_at(f, 8, ">Q")
        if not off:
            sys.exit("qcow2-patch: the image has no backing file name to rewrite")
        if off + len(name) > names(f)["cs"]:
            sys.exit("qcow2-patch: the new backing name does not fit in the header cluster")
        f.seek(off)
        f.write(name)
        write_at(f, 16, ">I", len(name))
    elif op == "feature":
        ftype, bit, newbit, name = int(args[0]), int(args[1]), int(args[2]), args[3]
        start, length = find_extension(f, FEATURE_TABLE)
        for e in range(start + 8, start + 8 + length, 48):
            if read_at(f, e, ">B") == ftype and read_at(f, e + 1, ">B") == bit:
                write_at(f, e + 1, ">B", newbit)
                f.seek(e + 2)
                f.write(name.encode()[:46].ljust(46, b"\0"))
                return
        sys.exit("qcow2-patch: no feature table entry of type %d bit %d" % (ftype, bit))
    elif op == "extlen":
        off, length = find_extension(f, int(args[0], 0))
        write_at(f, off + 4, ">I", evaluate(f, args[1], length))
    elif op == "poke":
        f.seek(int(args[0], 0))
        f.write(bytes.fromhex(args[1]))
    elif op == "truncate":
        f.truncate(int(args[0], 0))
    else:
        sys.exit("qcow2-patch: unknown operation '%s'\n%s" % (op, __doc__))


def main(argv):
    """Split the operations at "--" and apply them in order."""
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) > 1 else 1
    ops, cur = [], []
    for a in argv[2:]:
        if a == "--":
            ops.append(cur)
            cur = []
        else:
            cur.append(a)
    ops.append(cur)
    with open(argv[1], "r+b") as f:
        for o in ops:
            if o:
                run(f, o[0], o[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
