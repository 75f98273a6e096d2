#!/usr/bin/env python3
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Model test through nbdkit: connections with many requests in flight write bytes they own; a byte model judges.
"""
plugin-model.py run URI INITIAL EXPECT [OPTIONS]
    Several connections to one export (multi-conn) issue random writes,
    zeros (with and without may-trim, fast zero), trims, flushes, FUA and
    reads, many in flight on each connection.  The disk is cut into slots
    of 1 byte to a few clusters; neighbouring slots belong to different
    connections, and every phase of the run all connections work in the
    same hot window (a subcluster, a cluster, or up to 1 MiB), so requests
    of different connections keep colliding inside clusters and subclusters.
    A connection writes only the bytes it owns, and never has two requests
    in flight over the same byte (unless both read), so the content of every
    byte is known: the model.  Reads of owned bytes during the run, whole-
    disk reads at checkpoints (nothing in flight) and at the end (through
    every connection) must equal it.  EXPECT receives the model.
plugin-model.py pairs URI INITIAL EXPECT [OPTIONS]
    Issue 13's pattern: each round, 64 pairs of aio_zero(512, k*64K) and
    aio_pwrite(512 bytes, k*64K+1024), all in flight at once (one connection
    in even rounds, two in odd ones), then every pair's 2 KiB is read back.

Options: --seed N, --conns N (4), --depth N requests in flight per connection
(32), --ops N requests per connection (run, 1500), --rounds N (pairs, 200),
--checkpoints N (2), --cluster-size BYTES and --subcluster-size BYTES (the
image's), --trim clusters|none (what a trim does: zeros the whole clusters
it covers, as lib/zero.c rb_trim, or nothing: discard=ignore, or compat
0.10 over a backing file), --fast-zero yes|refused (refused: compat 0.10
over a backing file), --big-max BYTES (largest slot), --wait SECONDS (the
longest a reply may take).
Exit 0: every byte read equals the model; 1: a byte differs (reported with
the seed, its owner, the owner's last request there and the other requests
over the same subcluster meanwhile); 2: a request or the connection failed.
"""
import argparse
import bisect
import errno
import random
import select
import sys
import time

import nbd

PHASE = 64                      # requests per connection in one hot window
SHOWN = 12                      # suspect requests printed per wrong byte
READ, WRITE, ZERO, TRIM, FLUSH = "pread", "pwrite", "zero", "trim", "flush"


class Failed(Exception):
    """The run stops: exit status and what to say."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Req:
    """One request as issued; the log entry the failure report reads."""

    __slots__ = ("conn", "seq", "kind", "offset", "length", "flags", "data",
                 "start", "end", "tick_issue", "tick_done", "buf", "zero_data")

    def __init__(self, conn, seq, kind, offset, length, flags=0, data=None):
        self.conn, self.seq, self.kind = conn, seq, kind
        self.offset, self.length, self.flags, self.data = offset, length, flags, data
        self.start = self.end = offset      # the bytes it sets (set by Model.span)
        self.tick_issue = self.tick_done = 0
        self.buf = None
        self.zero_data = False          # a write of zeros (detect-zeroes makes it a zero)

    def conflicts(self, other):
        """True if the two may not be in flight at once on one connection."""
        if self.kind == FLUSH or other.kind == FLUSH or (self.kind == READ and other.kind == READ):
            return False
        return self.offset < other.offset + other.length and other.offset < self.offset + self.length

    def describe(self):
        """One line for the failure report."""
        names = [n for f, n in ((nbd.CMD_FLAG_FUA, "FUA"), (nbd.CMD_FLAG_FAST_ZERO, "FAST_ZERO"))
                 if self.flags & f]
        if self.kind == ZERO and not self.flags & nbd.CMD_FLAG_NO_HOLE:
            names.append("MAY_TRIM")
        if self.zero_data:
            names.append("all-zero data")
        what = "flush" if self.kind == FLUSH else "%s [%d, +%d)" % (self.kind, self.offset, self.length)
        done = "%d" % self.tick_done if self.tick_done else "(in flight)"
        seq = "verifying" if self.seq < 0 else "#%d" % self.seq
        return "conn %d %s %s%s (ticks %d-%s)" % (self.conn, seq, what, "".join(" " + n for n in names),
                                                  self.tick_issue, done)


def log_uniform(rnd, lo, hi):
    """A number in [lo, hi], every power of two equally likely."""
    b = rnd.randint(lo.bit_length() - 1, hi.bit_length() - 1)
    return min(max((1 << b) + rnd.randrange(1 << b), lo), hi)


class Model:
    """The guest bytes as they must read, the owners of the bytes, the log."""

    def __init__(self, args, size):
        self.args = args
        self.size = size
        self.cs = args.cluster_size
        self.sc = args.subcluster_size
        with open(args.initial, "rb") as f:
            self.bytes = bytearray(f.read())
        if len(self.bytes) != size:
            raise Failed(2, "%s holds %d bytes, the export %d" % (args.initial, len(self.bytes), size))
        self.log = []                   # every request, in issue order
        self.ticks = 0
        self.slots = None               # run mode: (starts, ends, owners)

    def span(self, r):
        """Set r.start, r.end: the bytes the request sets (a trim: the whole
        clusters it covers, the last may end at the disk's end; or none)."""
        r.start, r.end = r.offset, r.offset + r.length
        if r.kind in (READ, FLUSH) or (r.kind == TRIM and self.args.trim == "none"):
            r.end = r.start
        elif r.kind == TRIM:
            r.start = -(-r.offset // self.cs) * self.cs
            if r.end != self.size:
                r.end -= r.end % self.cs
        elif r.kind == ZERO and r.flags & nbd.CMD_FLAG_FAST_ZERO and self.args.fast_zero == "refused":
            r.end = r.start

    def apply(self, r):
        """A finished request changes the model."""
        if r.start < r.end:
            self.bytes[r.start:r.end] = r.data if r.kind == WRITE else bytes(r.end - r.start)

    def check(self, when, r, got):
        """got was read at r.offset with no write to those bytes in flight:
        it must equal the model."""
        want = self.bytes[r.offset:r.offset + len(got)]
        if got == want:
            return
        bad = [i for i in range(len(got)) if got[i] != want[i]]
        runs, first = [], bad[0]
        for a, b in zip(bad, bad[1:] + [None]):
            if b != a + 1:
                runs.append("[%d, %d)" % (r.offset + first, r.offset + a + 1))
                first = b
        out = ["plugin-model: seed %d: %s: %s: %d bytes differ from the model: %s%s"
               % (self.args.seed, when, r.describe(), len(bad), ", ".join(runs[:6]),
                  " ..." if len(runs) > 6 else "")]
        self.explain(r.offset + bad[0], want[bad[0]], got[bad[0]], r, out)
        if len(runs) > 1:
            out.append("  and the last one:")
            self.explain(r.offset + bad[-1], want[bad[-1]], got[bad[-1]], r, out)
        raise Failed(1, "\n".join(out))

    def explain(self, off, want, got, found_by, out):
        """Say where byte off is, its owner, the owner's last request that set
        it and the other requests over its subcluster from then on."""
        cs, sc = self.cs, self.sc
        out.append("  byte %d (cluster %d +%d, subcluster %d +%d): model 0x%02x, read 0x%02x"
                   % (off, off // cs, off % cs, off % cs // sc, off % sc, want, got))
        if self.slots:
            starts, ends, owners = self.slots
            i = bisect.bisect_right(starts, off) - 1
            out.append("  owner: conn %d, slot [%d, +%d)" % (owners[i], starts[i], ends[i] - starts[i]))
        last = next((r for r in reversed(self.log) if r.start <= off < r.end and r.tick_done), None)
        if last:
            out.append("  the owner's last request there: " + last.describe())
        else:
            out.append("  no request set it: the starting content")
        since = last.tick_issue if last else 0
        unit = off - off % sc
        suspects = [r for r in self.log
                    if r is not last and r is not found_by and r.kind not in (READ, FLUSH) and
                    r.offset < unit + sc and unit < r.offset + r.length and
                    (r.tick_done == 0 or r.tick_done >= since) and r.tick_issue <= found_by.tick_issue]
        what = "subcluster" if sc < cs else "cluster"
        if not suspects:
            out.append("  no other request touched that %s since" % what)
        for r in suspects[:SHOWN]:
            out.append("  %s in that %s [%d, +%d): %s"
                       % ("at the same time" if last and r.tick_issue <= last.tick_done else "after it",
                          what, unit, sc, r.describe()))
        if len(suspects) > SHOWN:
            out.append("  and %d more" % (len(suspects) - SHOWN))


class Conn:
    """One NBD connection and what it has in flight."""

    def __init__(self, index, uri):
        self.index = index
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.fd = self.h.aio_get_fd()
        self.inflight = []
        self.queue = []                 # generated, not yet issued (run mode)
        self.gen = None
        self.next_seq = 0               # lowest sequence number not yet issued
        self.generated = 0              # requests taken from gen
        self.changed = False            # a reply or a new request: look at the queue again


class Client:
    """The connections, issuing requests and collecting their replies."""

    def __init__(self, args):
        self.args = args
        self.conns = [Conn(i, args.uri) for i in range(args.conns)]
        h = self.conns[0].h
        if not (h.can_multi_conn() and h.can_fua() and h.can_trim() and h.can_zero() and
                h.can_fast_zero() and h.can_flush()):
            raise Failed(2, "the export lacks multi-conn, FUA, trim, zero, fast zero or flush")
        self.model = Model(args, h.get_size())
        self.done = []
        self.stat_issued = self.stat_requests = self.stat_inflight = self.stat_collided = 0
        self.poll = select.poll()
        self.by_fd = {}
        for c in self.conns:
            self.poll.register(c.fd, 0)
            self.by_fd[c.fd] = c

    def inflight(self):
        """How many requests are in flight on all connections."""
        return sum(len(c.inflight) for c in self.conns)

    def issue(self, c, r):
        """Send r on connection c."""
        m = self.model
        m.span(r)
        m.ticks += 1
        r.tick_issue = m.ticks
        m.log.append(r)
        self.note_collisions(c, r)
        c.inflight.append(r)

        def completed(err, r=r):
            self.done.append((r, err.value))
            return 1

        h = c.h
        if r.kind == WRITE:
            h.aio_pwrite(r.data, r.offset, completion=completed, flags=r.flags)
        elif r.kind == ZERO:
            h.aio_zero(r.length, r.offset, completion=completed, flags=r.flags)
        elif r.kind == TRIM:
            h.aio_trim(r.length, r.offset, completion=completed, flags=r.flags)
        elif r.kind == FLUSH:
            h.aio_flush(completion=completed)
        else:
            r.buf = nbd.Buffer(r.length)
            h.aio_pread(r.buf, r.offset, completion=completed)

    def note_collisions(self, c, r):
        """Statistics: how many requests are in flight as r goes out, and
        whether another connection has one over r's first or last subcluster."""
        sc = self.model.sc
        self.stat_issued += 1
        if r.seq < 0 or r.kind == FLUSH:
            return
        self.stat_requests += 1
        self.stat_inflight += self.inflight()
        a, b = r.offset - r.offset % sc, r.offset + r.length - 1
        b += sc - b % sc
        first_end, last_start = a + sc, b - sc
        for o in (o for d in self.conns if d is not c for o in d.inflight):
            if o.kind != FLUSH and o.offset < b and a < o.offset + o.length and \
               (o.offset < first_end or o.offset + o.length > last_start):
                self.stat_collided += 1
                return

    def finish(self, r, err):
        """A reply: check it, apply it to the model."""
        m = self.model
        m.ticks += 1
        r.tick_done = m.ticks
        c = self.conns[r.conn]
        c.inflight.remove(r)
        c.changed = True
        refused = r.kind == ZERO and r.flags & nbd.CMD_FLAG_FAST_ZERO and self.args.fast_zero == "refused"
        if refused and err != errno.ENOTSUP:
            raise Failed(2, "plugin-model: seed %d: %s: expected ENOTSUP (fast zero on compat 0.10 "
                         "over a backing file), got %s" % (self.args.seed, r.describe(),
                                                           errno.errorcode.get(err, "success")))
        if err and not refused:
            raise Failed(2, "plugin-model: seed %d: %s failed: %s"
                         % (self.args.seed, r.describe(), errno.errorcode.get(err, err)))
        if r.kind == READ:
            m.check(self.when, r, r.buf.to_buffer())
            r.buf = None
        else:
            m.apply(r)
            r.data = None

    def pump(self):
        """Wait up to a second for the sockets, let libnbd work, handle the
        replies.  Returns True if there was one."""
        for c in self.conns:
            d = c.h.aio_get_direction()
            self.poll.modify(c.fd, (select.POLLIN if d & nbd.AIO_DIRECTION_READ else 0) |
                             (select.POLLOUT if d & nbd.AIO_DIRECTION_WRITE else 0))
        ready = self.poll.poll(1000)
        for fd, ev in ready:
            c = self.by_fd[fd]
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                c.h.aio_notify_read()
            if ev & select.POLLOUT:
                c.h.aio_notify_write()
        done, self.done = self.done, []
        for r, err in done:
            self.finish(r, err)
        return bool(done)

    def wait_reply(self):
        """Wait for at least one reply, at most --wait seconds."""
        start = time.monotonic()
        while not self.pump():
            if time.monotonic() - start > self.args.wait:
                stuck = [r.describe() for c in self.conns for r in c.inflight]
                raise Failed(2, "plugin-model: seed %d: no reply for %d s; in flight: %s"
                             % (self.args.seed, self.args.wait, "; ".join(stuck[:8]) or "nothing"))

    def wait_all(self):
        """Wait until nothing is in flight."""
        while self.inflight():
            self.wait_reply()

    def verify_all(self, when, conns):
        """Read the whole disk (nothing else in flight) through each of conns,
        1 MiB requests, 8 in flight, and compare with the model."""
        self.when = when
        chunk = 1 << 20
        for c in conns:
            for off in range(0, self.model.size, chunk):
                while len(c.inflight) >= 8:
                    self.wait_reply()
                self.issue(c, Req(c.index, -1, READ, off, min(chunk, self.model.size - off)))
            self.wait_all()

    def close(self):
        """Flush and disconnect every connection."""
        for c in self.conns:
            c.h.flush()
            c.h.shutdown()


class Workload:
    """Run mode: the slots, the hot windows, each connection's requests."""

    def __init__(self, client):
        self.client = client
        self.args = client.args
        self.m = client.model
        self.windows = {}
        self.make_slots()

    def make_slots(self):
        """Cut the disk into regions of 1 to 8 clusters (some up to --big-max):
        fine regions hold slots of 1 byte to a subcluster (and a few longer
        ones), medium ones slots of 1 byte to 3 clusters, big ones 1 byte to
        --big-max.  Slot ends are often aligned (512, subcluster, cluster);
        neighbours never share an owner."""
        size, cs, sc, n = self.m.size, self.m.cs, self.m.sc, self.args.conns
        rnd = random.Random(self.args.seed * 31 + 7)
        small_max = min(3 * cs, max(size // 8, 1))
        starts, ends, owners, self.fine = [], [], [], []
        pos = owner = 0
        while pos < size:
            kind = rnd.randrange(20)
            fine = False
            if kind < 3 and self.args.big_max >= cs:
                region_end, top = pos + log_uniform(rnd, cs, self.args.big_max), self.args.big_max
            else:
                fine = kind < 13
                region_end, top = pos + log_uniform(rnd, cs, 8 * cs), sc if fine else small_max
            region_end = min(region_end, size)
            if fine:
                self.fine.append((pos, region_end))
            while pos < region_end:
                end = min(pos + log_uniform(rnd, 1, small_max if fine and rnd.randrange(6) == 0 else top),
                          region_end)
                if rnd.randrange(3) == 0:
                    e = end - end % rnd.choice((512, sc, cs))
                    end = e if e > pos else end
                if n > 1:
                    owner = (owner + 1 + rnd.randrange(n - 1)) % n
                starts.append(pos)
                ends.append(end)
                owners.append(owner)
                pos = end
        self.m.slots = (starts, ends, owners)
        self.own = [[i for i in range(len(starts)) if owners[i] == c] for c in range(n)]
        self.own_starts = [[starts[i] for i in own] for own in self.own]
        self.own_ends = [[ends[i] for i in own] for own in self.own]
        for c in range(n):
            if not self.own[c]:
                raise Failed(2, "conn %d owns no slot: the disk is too small" % c)

    def windows_of(self, phase):
        """The hot windows of a phase, the same for every connection: 1 to 8
        of them, each half the time one subcluster of a fine region, a
        quarter one cluster, else 512 bytes to 1 MiB anywhere."""
        ws = self.windows.get(phase)
        if ws is None:
            rnd = random.Random(self.args.seed * 1000003 + phase)
            cs, sc = self.m.cs, self.m.sc
            ws = []
            for _ in range(rnd.choice((1, 2, 4, 8))):
                kind, start = rnd.randrange(4), rnd.randrange(self.m.size)
                if kind < 2:
                    a, b = rnd.choice(self.fine) if self.fine else (0, self.m.size)
                    start = rnd.randrange(a, b)
                    ws.append((start - start % sc, sc))
                elif kind == 2:
                    ws.append((start - start % cs, cs))
                else:
                    ws.append((start, log_uniform(rnd, 512, min(max(2 * cs, 4096), 1 << 20))))
            self.windows[phase] = ws
        return ws

    def pick_slot(self, rnd, c, seq):
        """One of c's slots: mostly one in a hot window of the phase (each
        equally likely), sometimes any."""
        own = self.own[c]
        if rnd.randrange(5) == 0:
            return own[rnd.randrange(len(own))]
        ws, wl = rnd.choice(self.windows_of(seq // PHASE))
        first = bisect.bisect_right(self.own_ends[c], ws)
        last = bisect.bisect_left(self.own_starts[c], ws + wl)
        if first >= len(own):
            return own[-1]
        return own[first + rnd.randrange(last - first)] if last > first else own[first]

    def requests(self, c):
        """Connection c's requests, the same for a seed whatever the timing:
        40% writes (1 in 25 all zeros), 22% zeros (half may trim, a third
        fast), 10% trims, 1% flushes, 27% reads; 2% FUA."""
        rnd = random.Random(self.args.seed * 7919 + c)
        starts, ends, _ = self.m.slots
        cs, sc = self.m.cs, self.m.sc
        for seq in range(self.args.ops):
            i = self.pick_slot(rnd, c, seq)
            start, end = starts[i], ends[i]
            if rnd.randrange(7) == 0:
                off, n = start, end - start
            else:
                a = rnd.choice((1, 1, 512, sc, cs))
                off = -(-(start + rnd.randrange(end - start)) // a) * a
                if off >= end:
                    a, off = 1, start + rnd.randrange(end - start)
                n = log_uniform(rnd, 1, end - off)
                if a > 1 and n >= a:
                    n -= n % a
            k = rnd.randrange(400)
            fua = nbd.CMD_FLAG_FUA if rnd.randrange(50) == 0 else 0
            if k < 160:
                zero_data = rnd.randrange(25) == 0
                r = Req(c, seq, WRITE, off, n, fua, bytes(n) if zero_data else rnd.randbytes(n))
                r.zero_data = zero_data
                yield r
            elif k < 248:
                flags = rnd.choice((0, nbd.CMD_FLAG_NO_HOLE, 0, nbd.CMD_FLAG_NO_HOLE,
                                    nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE))
                yield Req(c, seq, ZERO, off, n, flags | fua)
            elif k < 288:
                yield Req(c, seq, TRIM, off, n, fua)
            elif k < 292:
                yield Req(c, seq, FLUSH, 0, 0)
            else:
                yield Req(c, seq, READ, off, n)

    def run(self):
        """Issue every connection's requests, up to --depth in flight each.  A
        request waits while an earlier one of its connection over the same
        bytes is queued or in flight (so the final bytes are fixed by the
        seed); a connection enters the next phase's window only when every
        connection has issued the last one; at each checkpoint nothing is in
        flight and the whole disk is read."""
        cl, args = self.client, self.args
        conns = cl.conns
        for c in conns:
            c.gen = self.requests(c.index)
        every = args.ops // (args.checkpoints + 1) if args.checkpoints else args.ops
        limit, checkpoint = every, 0
        cl.when = "during the run"
        while True:
            issued = -1
            while issued != cl.stat_issued:
                issued = cl.stat_issued
                phase_end = (min(c.next_seq for c in conns) // PHASE + 1) * PHASE
                for c in conns:
                    self.fill(c, min(phase_end, limit))
                    self.issue_ready(c)
            if cl.inflight():
                cl.wait_reply()
            elif all(c.next_seq >= args.ops for c in conns):
                break
            else:
                checkpoint += 1
                cl.verify_all("checkpoint %d" % checkpoint, [conns[checkpoint % len(conns)]])
                cl.when = "during the run"
                limit = args.ops if checkpoint >= args.checkpoints else limit + every

    def fill(self, c, below):
        """Queue c's requests numbered below `below`, two depths ahead."""
        while len(c.queue) < 2 * self.args.depth:
            if (c.queue[-1].seq + 1 if c.queue else c.next_seq) >= below:
                return
            r = next(c.gen, None)
            if r is None:
                return
            c.queue.append(r)
            c.generated = r.seq + 1
            c.changed = True

    def issue_ready(self, c):
        """Issue the queued requests that conflict with nothing earlier of c
        (in flight or queued), while c has fewer than --depth in flight."""
        if not c.changed:
            return
        c.changed = False
        kept = []
        for i, r in enumerate(c.queue):
            if len(c.inflight) >= self.args.depth:
                kept.extend(c.queue[i:])
                break
            if any(r.conflicts(o) for o in c.inflight) or any(r.conflicts(o) for o in kept):
                kept.append(r)
            else:
                self.client.issue(c, r)
        c.queue = kept
        c.next_seq = kept[0].seq if kept else c.generated


def pairs(client, rounds):
    """Issue 13's pattern, round after round (see the usage)."""
    args, m = client.args, client.model
    conns = client.conns
    stride = 64 << 10
    if m.size < 64 * stride:
        raise Failed(2, "pairs needs a disk of 4 MiB at least")
    rnd = random.Random(args.seed)
    seq = 0
    for rd in range(rounds):
        a = conns[0]
        b = conns[0] if rd % 2 == 0 or len(conns) < 2 else conns[1]
        client.when = "round %d" % rd
        for k in range(64):
            z = Req(a.index, seq, ZERO, k * stride, 512)
            w = Req(b.index, seq + 1, WRITE, k * stride + 1024, 512, 0, rnd.randbytes(512))
            seq += 2
            for c, r in ((a, z), (b, w)) if rnd.randrange(2) else ((b, w), (a, z)):
                client.issue(c, r)
        client.wait_all()
        for k in range(64):
            c = conns[k % len(conns)]
            client.issue(c, Req(c.index, seq, READ, k * stride, 2048))
            seq += 1
        client.wait_all()


def parse(argv):
    """The command line (see the usage)."""
    p = argparse.ArgumentParser(prog="plugin-model.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("run", "pairs"))
    p.add_argument("uri")
    p.add_argument("initial")
    p.add_argument("expect")
    p.add_argument("--seed", type=int)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--ops", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--checkpoints", type=int, default=2)
    p.add_argument("--cluster-size", type=int, default=65536)
    p.add_argument("--subcluster-size", type=int)
    p.add_argument("--trim", choices=("clusters", "none"), default="clusters")
    p.add_argument("--fast-zero", choices=("yes", "refused"), default="yes")
    p.add_argument("--big-max", type=int)
    p.add_argument("--wait", type=int, default=120)
    a = p.parse_args(argv)
    a.argv = argv
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 40)
        a.argv = argv + ["--seed", str(a.seed)]
    a.subcluster_size = a.subcluster_size or a.cluster_size
    return a


def main():
    """Run, then write the model to EXPECT and a summary line."""
    args = parse(sys.argv[1:])
    started = time.monotonic()
    try:
        client = Client(args)
        m = client.model
        args.big_max = args.big_max or max(min(m.size // 8, 4 << 20), m.cs)
        print("plugin-model: %s, seed %d: %d connections x %d in flight, %d bytes, %d-byte clusters, "
              "%d-byte subclusters, trim %s, fast zero %s"
              % (args.mode, args.seed, args.conns, args.depth, m.size, m.cs, m.sc, args.trim,
                 args.fast_zero), flush=True)
        client.verify_all("before the run", client.conns[:1])
        if args.mode == "run":
            Workload(client).run()
        else:
            pairs(client, args.rounds)
        client.verify_all("at the end", client.conns)
        client.close()
    except Failed as e:
        print(e, file=sys.stderr)
        print("reproduce: %s %s" % (sys.argv[0], " ".join(args.argv)), file=sys.stderr)
        sys.exit(e.status)
    except nbd.Error as e:
        print("plugin-model: seed %d: NBD: %s" % (args.seed, e), file=sys.stderr)
        sys.exit(2)
    with open(args.expect, "wb") as f:
        f.write(m.bytes)
    counts = {}
    for r in m.log:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    print("plugin-model: %s in %.1f s; %.1f requests in flight on average as one went out, %d%% "
          "of them with another connection's request over the same (first or last) %s: every byte "
          "equals the model"
          % (", ".join("%d %s" % (counts[k], k) for k in (WRITE, ZERO, TRIM, FLUSH, READ) if k in counts),
             time.monotonic() - started, client.stat_inflight / max(client.stat_requests, 1),
             100 * client.stat_collided // max(client.stat_requests, 1),
             "subcluster" if m.sc < m.cs else "cluster"))


if __name__ == "__main__":
    main()
