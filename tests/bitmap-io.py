#!/usr/bin/env python3
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Dirty-bitmap test helper: a random write/zero/trim workload over several NBD connections at once
# (mirrored on a raw file, every range logged), and the expected dirty set from what was dirty before.
"""
bitmap-io.py workload URI MIRROR SEED NOPS NCONN RANGES
    Random writes, zeros and trims, a batch of non-overlapping requests in
    flight at once spread over NCONN connections; MIRROR (raw) gets the same
    changes (trimmed ranges: what the server reads back); RANGES gets one
    "offset length" line per request.
bitmap-io.py expect SIZE GRANULARITY BEFORE RANGES...
    The dirty set a bitmap must hold: BEFORE (an nbdinfo --map listing of
    the bitmap before, or - for none) plus every range in the RANGES files,
    rounded out to GRANULARITY; printed as merged "offset length" lines.
bitmap-io.py dirty
    Reads an nbdinfo --map listing on stdin, prints its dirty runs merged.
"""
import random
import sys


def merge(runs):
    out = []
    for s, e in sorted(runs):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def print_runs(runs):
    for s, e in merge(runs):
        print(s, e - s)


def dirty_runs(lines):
    runs = []
    for line in lines:
        f = line.split()
        if len(f) >= 3 and int(f[2]) & 1:
            runs.append((int(f[0]), int(f[0]) + int(f[1])))
    return runs


def workload(uri, mirror, seed, nops, nconn, ranges):
    import nbd
    hs = []
    for _ in range(nconn):
        h = nbd.NBD()
        h.connect_uri(uri)
        hs.append(h)
    size = hs[0].get_size()
    rnd = random.Random(seed)
    m = open(mirror, "r+b")
    log = open(ranges, "w")
    done = 0
    while done < nops:
        batch = []
        for _ in range(rnd.randint(1, 3 * nconn)):
            kind = rnd.choice("wwwwzzt")
            length = rnd.choice([rnd.randint(1, 5000), rnd.randint(1, 300000),
                                 rnd.randint(1, 3 << 20)])
            off = rnd.randrange(size)
            align = rnd.choice([1, 1, 512, 4096, 65536])
            off -= off % align
            length = min(length, size - off)
            if any(off < o + n and o < off + length for _, o, n, _ in batch):
                continue
            data = bytes([rnd.randrange(256)]) * length if kind == "w" else None
            batch.append((kind, off, length, data))
        bufs, cookies = [], []
        for i, (kind, off, length, data) in enumerate(batch):
            h = hs[i % nconn]
            if kind == "w":
                b = nbd.Buffer.from_bytearray(bytearray(data))
                bufs.append(b)
                cookies.append((h, h.aio_pwrite(b, off)))
            elif kind == "z":
                cookies.append((h, h.aio_zero(length, off)))
            else:
                cookies.append((h, h.aio_trim(length, off)))
        for h, c in cookies:
            while not h.aio_command_completed(c):
                h.poll(-1)
        for kind, off, length, data in batch:
            if kind == "t":
                data = hs[0].pread(length, off)
            elif kind == "z":
                data = bytes(length)
            m.seek(off)
            m.write(data)
            log.write("%d %d\n" % (off, length))
        done += len(batch)
    for h in hs:
        h.flush()
        h.shutdown()
    log.close()
    m.close()


def expect(size, gran, before, range_files):
    runs = []
    if before != "-":
        with open(before) as f:
            runs += dirty_runs(f)
    for name in range_files:
        with open(name) as f:
            for line in f:
                off, length = map(int, line.split())
                if length:
                    s = off - off % gran
                    e = min(size, -(-(off + length) // gran) * gran)
                    runs.append((s, e))
    print_runs(runs)


def main():
    cmd = sys.argv[1]
    if cmd == "workload":
        workload(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                 int(sys.argv[6]), sys.argv[7])
    elif cmd == "expect":
        expect(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    elif cmd == "dirty":
        print_runs(dirty_runs(sys.stdin))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
